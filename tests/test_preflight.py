"""Your own plates without surprises: what cannot succeed stops before any job, naming what to change; what a
failed job found is kept; a deterministic failure is not retried, a transient one is; replaced images rerun."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import tifffile
import yaml

from tests.helpers import REAL_CHANNELS, REAL_SITE, REPO, snakemake

DEMO = REPO / "config" / "demo.yaml"


def paintbench(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paintbench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def write_config(path, **settings) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def test_one_negative_control_stops_check_config_and_plan_naming_plate_and_key(tmp_path):
    one = write_config(tmp_path / "one.yaml", negcon_wells=1)
    for command in ("check-config", "plan"):
        done = paintbench(command, "--configfile", str(DEMO), one)
        assert done.returncode in (1, 3), done.stderr
        assert "plate BR00116991: 1 negative-control well(s) selected" in done.stderr
        assert "raise config key 'negcon_wells' (now 1)" in done.stderr


def test_layered_config_files_and_the_weak_conditions_plan_warns_about(tmp_path):
    """check-config and plan layer several files as Snakemake does (the later wins, section by section); 4
    controls on 3 compound plates leave a perfect list at p = 1/15: the plan warns, it does not stop."""
    four = write_config(tmp_path / "four.yaml", negcon_wells=4, vit={"steps": 7})
    done = paintbench("check-config", "--configfile", str(DEMO), four)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert config["negcon_wells"] == 4 and config["vit"]["steps"] == 7 and config["vit"]["model"] == "vit_tiny_patch16_224"
    plan = paintbench("plan", "--configfile", str(DEMO), "--configfile", four)
    assert plan.returncode == 0, plan.stderr
    assert "Will run, but weak or incomplete:" in plan.stdout
    assert ("condition A549 compound 24 h: 45 of 46 perturbations can never reach q < 0.05 (a perfect list of 2 "
            "replicate(s) among 4 controls has p = 0.0667)") in plan.stdout


@pytest.fixture()
def own_plate(tmp_path):
    """The real field as a local plate (BR00143976, its own channel order, brightfield on ch1): wells C03 and A02 (DMSO
    both: two controls), only C03 imaged, site 3."""
    folder = tmp_path / "metadata"
    shutil.copytree(REPO / "config" / "metadata", folder)
    plates = pd.read_csv(folder / "experiment-metadata.tsv", sep="\t")
    extra = plates.iloc[[0]].assign(Assay_Plate_Barcode="BR00143976", Number_of_images=384 * 9 * 6)
    pd.concat([plates, extra]).to_csv(folder / "experiment-metadata.tsv", sep="\t", index=False)
    images = tmp_path / "images"
    shutil.copytree(REAL_SITE, images)
    return {"source": "local", "plates": ["BR00143976"], "wells": ["C03", "A02"], "sites": [3], "genes": None,
            "channels": {**REAL_CHANNELS, "Brightfield": 1}, "metadata_dir": str(folder),
            "local": {"image_dir": str(images)}, "qc": {"max_missing_fraction": 0.5},
            "results_dir": str(tmp_path / "results"), "data_dir": str(tmp_path / "data")}


def test_a_site_or_channel_the_images_lack_stops_before_any_job(tmp_path, own_plate):
    site = write_config(tmp_path / "site.yaml", **{**own_plate, "sites": [1]})
    done = paintbench("check-config", "--configfile", str(DEMO), site)
    assert done.returncode == 1
    assert "plate BR00143976: site(s) 1 requested (config key 'sites') but the images in" in done.stderr
    assert "have sites 3" in done.stderr
    channel = write_config(tmp_path / "channel.yaml", **{**own_plate, "channels": {**own_plate["channels"], "Mito": 9}})
    done = paintbench("check-config", "--configfile", str(DEMO), channel)
    assert "channel(s) Mito (9) of config key 'channels' are not among the images" in done.stderr
    assert "which have channels 1, 2, 3, 4, 5, 6" in done.stderr
    fine = write_config(tmp_path / "fine.yaml", **own_plate)
    done = paintbench("check-config", "--configfile", str(DEMO), fine)
    assert done.returncode == 0 and "1 requested image(s) absent" not in done.stderr  # A02 site 3: a recorded hole
    assert "plate BR00143976: 6 requested image(s) absent" in done.stderr  # A02's 6 channels, a warning
    plan = paintbench("plan", "--configfile", str(DEMO), fine)
    assert plan.returncode == 0, plan.stderr
    assert "images read in place" in plan.stdout and "6 channels of config key 'channels'" in plan.stdout
    assert "download" not in plan.stdout.split("fields")[-1].split("illumination")[0]  # nothing downloaded
    assert "DESIGN.md" not in plan.stdout


def test_a_failed_download_keeps_what_it_found_and_says_what_exists(tmp_path, own_plate):
    """The download job's QC table goes with its failure (Snakemake removes a failed job's outputs): the message lists
    the missing channel beside the channels that exist, and a .failed.tsv beside the QC output keeps every record."""
    channels = ",".join(f"{k}={v}" for k, v in {**own_plate["channels"], "Mito": 9}.items())
    qc = tmp_path / "qc" / "download.tsv"
    done = paintbench("download", "--source", "local", "--plate", "BR00143976", "--wells", "C03", "--sites", "3",
                      "--channels", channels, "--image-dir", own_plate["local"]["image_dir"], "--metadata-dir",
                      own_plate["metadata_dir"], "--qc-output", str(qc), "--output", str(tmp_path / "ld.csv"))
    assert done.returncode == 3
    assert "none of its 1 requested field(s) is complete" in done.stderr
    assert "channel(s) Mito (ch9) are in no file (config key 'channels')" in done.stderr
    assert "the plate's images have sites 3 and channels 1, 2, 3, 4, 5, 6" in done.stderr
    kept = pd.read_csv(tmp_path / "qc" / "download.failed.tsv", sep="\t")
    assert kept["channel"].tolist() == ["Mito"] and not qc.exists()


def test_profiles_that_keep_nothing_say_which_and_what_to_change(tmp_path):
    rows = [{"Metadata_Plate": "P1", "Metadata_Well": f"A{i:02d}", "Metadata_control_type": "negcon" if i < 5 else None,
             "Metadata_broad_sample": "DMSO" if i < 5 else f"BRD-{i}", **{f"Cells_{j}": float(j) for j in range(6)}}
            for i in range(1, 13)]
    pd.DataFrame(rows).to_parquet(tmp_path / "annotated.parquet")
    done = paintbench("profile-chain", "--profiles", str(tmp_path / "annotated.parquet"), "--name",
                      "cellprofiler/mad_featselect", "--steps", "mad", "featselect", "--output", str(tmp_path / "o.parquet"))
    assert done.returncode == 3
    assert "cellprofiler/mad_featselect: step 'featselect'" in done.stderr
    assert "run a chain without featselect for cellprofiler (config key profiles.feature_sets" in done.stderr


# ------------------------------------------------------------------------------------------------ through Snakemake
@pytest.mark.slow
def test_replaced_local_images_rerun_that_plate(tmp_path, own_plate):
    config = write_config(tmp_path / "own.yaml", **own_plate)
    target = str(tmp_path / "results" / "load_data" / "BR00143976.csv")
    snakemake([target, "--cores", "1", "--configfile", str(DEMO), config], cwd=tmp_path)
    assert "Nothing to be done" in snakemake([target, "-n", "--configfile", str(DEMO), config], cwd=tmp_path).stdout
    tiff = tmp_path / "images" / "r03c03f03p01-ch5sk1fk1fl1.tiff"
    tifffile.imwrite(tiff, tifffile.imread(tiff)[::-1])  # the DNA image replaced by another
    planned = snakemake([target, "-n", "--configfile", str(DEMO), config], cwd=tmp_path)
    assert "rule download:" in planned.stdout and "params" in planned.stdout.lower()


@pytest.mark.slow
def test_a_deterministic_failure_is_not_retried_and_a_killed_job_is(tmp_path):
    """The workstation profile retries a failed job once. A precomputed table that lacks a well of the run fails on
    its input: the retry stops at once saying so. A pretraining killed in mid-run is a transient failure: the retry
    runs it again, and the run completes."""
    from tests.conftest import small_demo_config

    config = small_demo_config(tmp_path, plates=["BR00117000", "BR00117003"], genes=["CSK"], negcon_wells=2,
                               feature_sets=["vitmae"])
    data = yaml.safe_load(open(config))
    data["vit"].update(steps=400, checkpoint_every=50)
    table = tmp_path / "mine.csv"
    pd.DataFrame({"Metadata_Plate": ["BR00117000"], "Metadata_Well": ["A01"], "x": [1.0]}).to_csv(table, index=False)
    data["precomputed"] = {"mine": {"path": str(table)}}
    open(config, "w").write(yaml.safe_dump(data))
    results = tmp_path / "results"
    target = str(results / "profiles" / "mine" / "BR00117000.parquet")
    failed = snakemake([target, "--cores", "1", "--configfile", config], cwd=tmp_path, check=False)
    assert failed.returncode != 0
    log = (results / "logs" / "precomputed_profiles" / "mine" / "BR00117000.log").read_text()
    assert "not retried (attempt 2)" in log and "well(s) of the run have no row" in log

    encoder = results / "vit" / "mae" / "encoder.pt"
    process = subprocess.Popen([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
                                "--directory", str(tmp_path), str(encoder), "--cores", "2", "--configfile", config],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline:
        found = subprocess.run(["pgrep", "-f", "paintbench vit-pretrain"], capture_output=True, text=True).stdout.split()
        if found and (results / "vit" / "mae" / "train_log.tsv").exists():
            killed = int(found[0])
            os.kill(killed, signal.SIGKILL)
        time.sleep(1)
    output, _ = process.communicate(timeout=1200)
    assert killed is not None and process.returncode == 0, output[-4000:]
    assert encoder.exists() and "Trying to restart job" in output, output[-4000:]
    steps = pd.read_csv(results / "vit" / "mae" / "train_log.tsv", sep="\t")["step"]
    assert steps.is_unique and steps.max() == 400  # the retry resumed from its last checkpoint
