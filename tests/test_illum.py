"""Illumination functions: recover the planted gradient of synthetic plates; Gallery option; bad fields named."""

from __future__ import annotations

import io
import os
import subprocess

import numpy as np
import pytest

from paintbench import CHANNELS
from paintbench.cli import main as paintbench
from paintbench.illum import (
    compute_plate_illum,
    correct,
    filter_size,
    load_functions,
    mean_image,
    median_disk,
    smooth_median,
)
from paintbench.images import BadFieldError
from paintbench.paths import illum_filename
from paintbench.s3 import fetch_gallery_illum
from paintbench.loaddata import load_data_table
from paintbench.metadata import plate_layout, select_wells
from paintbench.synthetic import generate_plate, ground_truth, plate_nuisance
from tests.helpers import CPJUMP1_CHANNELS, REPO

PLATE = "BR00116991"
CELLPROFILER_BIN = REPO / ".venvs" / "cellprofiler" / "bin"


@pytest.fixture(scope="module")
def synthetic_plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plate")
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=3, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(PLATE), "all", None, None)[:40]
    generate_plate(PLATE, wells, [1], CPJUMP1_CHANNELS, truth, folder, field_size=192, cells_per_field=20, seed=3)
    return load_data_table(PLATE, folder, wells, [1], CPJUMP1_CHANNELS)


def test_recovers_the_planted_illumination_gradient(synthetic_plate, tmp_path):
    written, skipped = compute_plate_illum(synthetic_plate, tmp_path, list(CHANNELS))
    assert skipped == []
    assert sorted(p.name for p in written.values()) == sorted(illum_filename(PLATE, c) for c in CHANNELS)
    planted = plate_nuisance(PLATE, 3, 192, list(CHANNELS))["gain"]
    functions = load_functions(tmp_path, PLATE, list(CHANNELS))
    assert functions.dtype == np.float32 and functions.shape == (5, 192, 192)
    for channel, function in zip(CHANNELS, functions):
        assert function.min() >= 1.0 and function.max() > 1.05  # rescaled by the robust minimum, not flat
        r = np.corrcoef(function.ravel(), planted[channel].ravel())[0, 1]
        # 40 small fields: sparse bright nuclei still speckle the DNA mean (a real plate has ~3,000 fields).
        assert r > (0.45 if channel == "DNA" else 0.7), f"{channel}: correlation with the planted gradient {r:.2f}"


def test_correction_divides_like_correct_illumination_apply():
    field = np.full((2, 4, 4), 100, dtype=np.uint16)
    functions = np.stack([np.full((4, 4), 2.0), np.full((4, 4), 4.0)]).astype(np.float32)
    np.testing.assert_allclose(correct(field, functions)[:, 0, 0], [50.0, 25.0])
    with pytest.raises(BadFieldError, match="does not match"):
        correct(field[:, :3], functions)


def test_truncated_tiff_is_named(synthetic_plate, tmp_path):
    broken = synthetic_plate.copy()
    row = broken.iloc[5]
    victim = tmp_path / row["FileName_OrigER"]
    source = (row["PathName_OrigER"] + "/" + row["FileName_OrigER"])
    victim.write_bytes(open(source, "rb").read()[:300])
    broken.loc[5, "PathName_OrigER"] = str(tmp_path)
    with pytest.raises(BadFieldError) as error:
        compute_plate_illum(broken, tmp_path / "out", ["ER"])
    message = str(error.value)
    assert f"plate {PLATE}, well {row['Metadata_Well']}, site 1" in message and str(victim) in message
    assert not (tmp_path / "out" / illum_filename(PLATE, "ER")).exists()
    # qc.skip_bad_fields: the field is left out of the mean and recorded, the function is written.
    written, skipped = compute_plate_illum(broken, tmp_path / "out", ["ER"], skip_bad_fields=True)
    assert written["ER"].exists() and len(skipped) == 1
    assert (skipped[0]["Metadata_Well"], skipped[0]["Metadata_Site"], skipped[0]["stage"]) == (row["Metadata_Well"], 1, "illum")
    assert str(victim) in skipped[0]["reason"]


def test_gallery_functions_are_fetched(s3_gallery, tmp_path):
    import boto3

    admin = boto3.client("s3", endpoint_url=s3_gallery.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    prefix = f"{s3_gallery.prefix}/images/{s3_gallery.batch}/illum/{PLATE}/"
    stored = {}
    for i, channel in enumerate(CHANNELS):
        buffer = io.BytesIO()
        stored[channel] = np.full((8, 8), 1.0 + i, dtype=np.float64)
        np.save(buffer, stored[channel])
        admin.put_object(Bucket=s3_gallery.bucket, Key=prefix + illum_filename(PLATE, channel), Body=buffer.getvalue(),
                         ACL="public-read")
    written = fetch_gallery_illum(PLATE, s3_gallery.batch, list(CHANNELS), tmp_path, s3_gallery.bucket,
                                  s3_gallery.prefix, s3_gallery.endpoint_url)
    for channel in CHANNELS:
        np.testing.assert_array_equal(np.load(written[channel]), stored[channel])
    with pytest.raises(Exception, match=r"no precomputed illumination function .*BR00116992_IllumDNA.npy"):
        fetch_gallery_illum("BR00116992", s3_gallery.batch, ["DNA"], tmp_path, s3_gallery.bucket,
                            s3_gallery.prefix, s3_gallery.endpoint_url)


def test_cli_writes_every_fluorescent_channel(synthetic_plate, tmp_path):
    load_data = tmp_path / "load_data.csv"
    synthetic_plate.to_csv(load_data, index=False)
    assert paintbench(["illum", "--load-data", str(load_data), "--output-dir", str(tmp_path / "illum")]) == 0
    assert sorted(p.name for p in (tmp_path / "illum").iterdir()) == sorted(illum_filename(PLATE, c) for c in CHANNELS)


@pytest.mark.slow
def test_matches_cellprofiler_correct_illumination_calculate(tmp_path):
    """Our functions against real CellProfiler 5 running the illum.cppipe recipe at our filter size, on one plate.

    CellProfiler averages 0-1 float32 images and truncates mean x 65535 to uint16; we average the raw counts in
    float64 and truncate. float32 rounding can put a mean that sits on an integer one count lower, so the
    median at a pixel, and the robust minimum r (in counts), can each differ by one level: at most about
    1/r + 1/r relative. Everything else (disk, rank median, robust minimum, clipping) is the same algorithm.
    """
    size = 256
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=5, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(PLATE), "all", None, None)[:12]
    generate_plate(PLATE, wells, [1], CPJUMP1_CHANNELS, truth, tmp_path / "images", field_size=size,
                   cells_per_field=20, seed=5)
    table = load_data_table(PLATE, tmp_path / "images", wells, [1], CPJUMP1_CHANNELS)
    table.to_csv(tmp_path / "load_data.csv", index=False)
    n = filter_size(size)  # 119 px at 256 px, as 500 px at 1080 px
    assert median_disk(n).shape == (103, 103) and median_disk(filter_size(1080)).shape == (427, 427)

    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    make_cppipe = [str(CELLPROFILER_BIN / "python"), str(REPO / "scripts" / "make_cppipe.py"),
                   "--out-dir", str(tmp_path / "pipelines"), "--illum-filter-size", str(n)]
    subprocess.run(make_cppipe, check=True, capture_output=True, env=env)  # all three pipelines, in tmp_path
    command = [str(CELLPROFILER_BIN / "cellprofiler"), "-c", "-r", "-p", str(tmp_path / "pipelines" / "illum.cppipe"),
               "--data-file", str(tmp_path / "load_data.csv"), "-o", str(tmp_path / "cellprofiler"),
               "-t", str(tmp_path / "scratch"), "-e", "imageio_reader"]
    (tmp_path / "scratch").mkdir()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    written, _ = compute_plate_illum(table, tmp_path / "ours", list(CHANNELS))
    means, _ = mean_image(table, list(CHANNELS))
    for channel, mean in zip(CHANNELS, means):
        theirs = np.load(tmp_path / "cellprofiler" / illum_filename(PLATE, channel))
        ours = np.load(written[channel])
        assert theirs.shape == ours.shape == (size, size) and theirs.min() == ours.min() == 1.0
        smoothed = np.sort(smooth_median(mean, n).ravel())
        robust_min = smoothed[smoothed > 0][int(np.count_nonzero(smoothed) * 0.02)]  # in counts, ~200-400 here
        difference = np.abs(ours / theirs - 1).max()
        r = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        assert difference <= 2 / robust_min + 1e-6, f"{channel}: max relative difference {difference:.4f}"
        assert r > 0.999, f"{channel}: correlation {r:.5f}"
        assert ours.max() > 1.1  # a real gradient was compared, not two flat functions


def test_many_levels_are_binned_for_speed_within_a_fraction_of_a_percent():
    """Above max_levels distinct levels the rank median runs on groups of levels: close to the exact median."""
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:160, 0:160] / 160
    image = 2000 + 30000 * (0.6 + 0.3 * x - 0.2 * y) * rng.gamma(4, 0.25, x.shape)  # ~18,000 distinct levels
    exact = smooth_median(image, 74, max_levels=2**16)
    binned = smooth_median(image, 74, max_levels=256)
    # A group holds 1/256 of the pixels; the median sits where levels are dense, so a group spans little.
    assert 0 < np.abs(binned / exact - 1).max() < 0.01
