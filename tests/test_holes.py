"""The Gallery's holes, end to end on a loopback S3 server: a plate missing a whole field, a field missing one
channel, a truncated object. The run completes to the report, the QC tables name each hole, and nothing else is
lost. The run scores the ViT branch only: CellProfiler reads the same LoadData tables (complete fields only) and
its own skipping of fields that fail to decode is tested in test_cellprofiler.py; each CellProfiler field costs
~13 s here, which CI time cannot spare twice."""

from __future__ import annotations

import subprocess
import sys

import boto3
import pandas as pd
import pytest
import yaml

from paintbench.layout import image_filename
from paintbench.metadata import plate_layout, select_wells
from paintbench.synthetic import generate_plate, ground_truth
from tests.helpers import CPJUMP1_CHANNELS, REPO, snakemake

pytestmark = pytest.mark.slow  # a plate with holes through the workflow

PLATES = ["BR00116993", "BR00116994"]  # plates the shared bucket holds no images of otherwise
SITES = [1, 2]


@pytest.fixture(scope="module")
def holey_run(s3_gallery, tmp_path_factory):
    folder = tmp_path_factory.mktemp("holes")
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=7, strong_fraction=0.4, null_fraction=0.3,
                         effect_scale=2.0)
    admin = boto3.client("s3", endpoint_url=s3_gallery.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    wells = select_wells(plate_layout(PLATES[0]), "all", ["CSK"], 4)
    holes = {"field": (PLATES[0], wells[1], 2), "channel": (PLATES[1], wells[2], 1), "truncated": (PLATES[0], wells[3], 1)}
    for n, plate in enumerate(PLATES):
        generate_plate(plate, wells, SITES, CPJUMP1_CHANNELS, truth, folder / "source" / plate, field_size=96,
                       cells_per_field=10, seed=7)
        images = f"{s3_gallery.plate_folder(plate, f'2020-11-0{5 + n}T10_00_00')}Images/"
        for well in wells:
            for site in SITES:
                for name, channel in CPJUMP1_CHANNELS.items():
                    if (plate, well, site) == holes["field"] or ((plate, well, site) == holes["channel"] and name == "ER"):
                        continue
                    body = (folder / "source" / plate / image_filename(well, site, channel)).read_bytes()
                    if (plate, well, site) == holes["truncated"] and name == "DNA":
                        body = body[: len(body) // 2]
                    admin.put_object(Bucket=s3_gallery.bucket, Key=images + image_filename(well, site, channel),
                                     Body=body, ACL="public-read")
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(source="s3", endpoint_url=s3_gallery.endpoint_url, plates=PLATES, genes=["CSK"], negcon_wells=4,
                  sites=SITES, data_dir=str(folder / "data"), results_dir=str(folder / "results"),
                  qc={"max_missing_fraction": 0.25}, feature_sets=["vitmae"])
    config["vit"].update(steps=20, warmup_steps=2, checkpoint_every=10)
    config["retrieval"] = {"null_size": 2000, "seed": 0}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    snakemake(["--cores", "2", "--configfile", str(path)], cwd=folder, timeout=1500)
    return folder / "results", wells, holes, str(path)


def test_every_hole_is_recorded_and_left_out(holey_run):
    results, wells, holes, _ = holey_run
    missing = pd.read_csv(results / "qc" / "missing_fields.tsv", sep="\t")
    records = {(r.Metadata_Plate, r.Metadata_Well, r.Metadata_Site, r.channel): r.reason for r in missing.itertuples()}
    assert {k for k in records if k[:3] == holes["field"]} == {(*holes["field"], c) for c in CPJUMP1_CHANNELS}
    assert "not in s3://" in records[(*holes["field"], "DNA")]
    assert list(k for k in records if k[:3] == holes["channel"]) == [(*holes["channel"], "ER")]
    assert records[(*holes["truncated"], "DNA")].startswith("truncated")
    assert len(records) == 7
    for plate in PLATES:
        qc = pd.read_csv(results / "qc" / f"{plate}.tsv", sep="\t")
        expected = {h[1:] for h in holes.values() if h[0] == plate}
        assert set(zip(qc["Metadata_Well"], qc["Metadata_Site"])) == expected
        load_data = pd.read_csv(results / "load_data" / f"{plate}.csv")
        fields = set(zip(load_data["Metadata_Well"], load_data["Metadata_Site"]))
        assert fields == {(w, s) for w in wells for s in SITES} - expected  # nothing else lost
        centres = pd.read_parquet(results / "vit" / "crops" / f"{plate}.centres.parquet")
        assert set(zip(centres["Metadata_Well"], centres["Metadata_Site"])) <= fields
        assert len(set(zip(centres["Metadata_Well"], centres["Metadata_Site"]))) >= len(fields) - 1  # empty fields
        # Every well still has a field: none is dropped from the profiles.
        assert set(pd.read_parquet(results / "profiles" / "vitmae" / f"{plate}.parquet")["Metadata_Well"]) == set(wells)


def test_report_shows_the_holes(holey_run):
    results, _, _, _ = holey_run
    page = (results / "reports" / "index.html").read_text()
    assert "missing or truncated images" in page and "truncated: image data ends" in page
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    assert (summary.loc[summary["task"] == "replicate_retrieval", "n_perturbations"] > 0).all()


def test_too_many_holes_fail_the_plate_naming_it(holey_run, tmp_path):
    results, wells, _, config = holey_run
    settings = yaml.safe_load(open(config))
    command = [sys.executable, "-m", "paintbench", "download", "--source", "s3", "--plate", PLATES[0],
               "--wells", ",".join(wells), "--sites", "1,2", "--channels", "DNA=5,ER=4,RNA=3,AGP=2,Mito=1",
               "--image-dir", str(tmp_path / "images"), "--endpoint-url", settings["endpoint_url"],
               "--max-missing-fraction", "0.05", "--qc-output", str(tmp_path / "qc.tsv"),
               "--output", str(tmp_path / "load_data.csv")]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 3
    assert f"plate {PLATES[0]}: 2 of {2 * len(wells)} requested fields" in done.stderr
    assert "qc.max_missing_fraction 0.05" in done.stderr and not (tmp_path / "load_data.csv").exists()
