"""Illumination functions: recover the planted gradient of synthetic plates; Gallery option; bad fields named."""

from __future__ import annotations

import io

import numpy as np
import pytest

from paintbench import CHANNELS
from paintbench.cli import main as paintbench
from paintbench.illum import compute_plate_illum, correct, fetch_gallery_illum, illum_filename, load_functions
from paintbench.images import BadFieldError
from paintbench.loaddata import load_data_table
from paintbench.metadata import plate_layout, select_wells
from paintbench.synthetic import generate_plate, ground_truth, plate_nuisance

PLATE = "BR00116991"
CPJUMP1_CHANNELS = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}


@pytest.fixture(scope="module")
def synthetic_plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plate")
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=3, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(PLATE), "all", None, None)[:40]
    generate_plate(PLATE, wells, [1], CPJUMP1_CHANNELS, truth, folder, field_size=192, cells_per_field=20, seed=3)
    return load_data_table(PLATE, folder, wells, [1], CPJUMP1_CHANNELS)


def test_recovers_the_planted_illumination_gradient(synthetic_plate, tmp_path):
    written = compute_plate_illum(synthetic_plate, tmp_path, list(CHANNELS))
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
