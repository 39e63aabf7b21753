"""The cluster path on a real single-node SLURM cluster (scripts/slurm_start.sh): profiles/slurm runs both
branches as SLURM jobs with the same results as a local run, a cancelled job is retried, and a killed Snakemake
recovers with the documented command without leaving partial output that looks complete."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import small_demo_config
from tests.helpers import REPO, snakemake

pytestmark = pytest.mark.slow  # a real single-node SLURM cluster

STATE = Path(os.environ.get("PAINTBENCH_SLURM_DIR", "/tmp/paintbench-slurm"))
TINY_PLATES = ["BR00117000", "BR00117003"]  # CRISPR replicates: CSK's two guides + 2 controls each


@pytest.fixture(scope="module")
def cluster():
    """SLURM_CONF of the test cluster; stopped afterwards only if this module started it."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start a cluster with scripts/slurm_start.sh, which needs root")
    env = {**os.environ, "SLURM_CONF": str(STATE / "etc" / "slurm.conf")}
    # On a fresh machine SLURM is not even installed yet: slurm_start.sh installs it.
    was_up = bool(shutil.which("scontrol")) and (STATE / "etc" / "slurm.conf").exists() \
        and subprocess.run(["scontrol", "ping"], env=env, capture_output=True).returncode == 0
    started = subprocess.run(["bash", str(REPO / "scripts" / "slurm_start.sh")], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    yield env
    if not was_up:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm_stop.sh")], check=True, timeout=120)


def cpu_cluster_profile(folder: Path) -> Path:
    """profiles/slurm as shipped, with the GPU rules sent to the CPU partition (the test cluster has no GPU)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for rule in ("vit_pretrain", "vit_embed"):
        profile["set-resources"][rule] = {"gpu": 0, "mem_mb": 4000}
        # One core, as the demo's local ViT jobs take (vit.num_workers: 1): equal thread counts, equal floats.
        profile["set-threads"][rule] = 1
    profile["slurm-init-seconds-before-status-checks"] = 2
    path = folder / "profile" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(profile))
    return path.parent


def tiny_config(folder: Path, **vit) -> str:
    # The two feature sets the tests compare (the ViT embedding job embeds every configured method).
    config = small_demo_config(folder, plates=TINY_PLATES, genes=["CSK"], negcon_wells=2,
                               feature_sets=["cellprofiler", "vitmae"])
    data = yaml.safe_load(Path(config).read_text())
    data["vit"].update(vit)
    Path(config).write_text(yaml.safe_dump(data))
    return config


def cluster_command(folder: Path, config: str, targets: list[str]) -> list[str]:
    """The cluster command of docs/usage.md (workflow profile off, so profiles/default does not override it)."""
    # results_dir in the config is absolute: so are the targets.
    return [sys.executable, "-m", "snakemake", *(str(folder / t) for t in targets), "--snakefile", str(REPO / "Snakefile"), "--directory", str(folder),
            "--profile", str(cpu_cluster_profile(folder)), "--workflow-profile", "none", "--configfile", config]


def sacct_rules(env: dict, since: datetime) -> pd.DataFrame:
    """Jobs SLURM accounted since `since`: rule (from Snakemake's job comment) and final state."""
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-S", since.strftime("%Y-%m-%dT%H:%M:%S"), "-o", "JobID,Comment,State"],
                         env=env, capture_output=True, text=True, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    table = pd.DataFrame(rows, columns=["job", "comment", "state"])
    return table.assign(rule=table["comment"].str.extract(r"^rule_(\w+?)(?:_wildcards_.*)?$")[0])


def test_both_branches_run_as_slurm_jobs_and_match_a_local_run(cluster, tmp_path):
    targets = [f"results/retrieval/{fs}/replicate_retrieval.parquet" for fs in ("cellprofiler/mad_featselect",
                                                                                "vitmae/mad")]
    local = tmp_path / "local"
    local.mkdir()
    snakemake([*(str(local / t) for t in targets), "--cores", "2", "--configfile", tiny_config(local)], cwd=local)
    remote = tmp_path / "slurm"
    remote.mkdir()
    since = datetime.now()
    run = subprocess.run(cluster_command(remote, tiny_config(remote), targets), env=cluster, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-6000:]
    jobs = sacct_rules(cluster, since)
    ran = set(jobs["rule"].dropna())
    assert {"illum", "cellprofiler_shard", "cellprofiler_well_profiles", "vit_crops", "vit_pretrain", "vit_embed",
            "profiles", "profile_chain", "replicate_retrieval"} <= ran, jobs
    assert "download" not in ran  # a local rule: runs on the submitting host
    assert (jobs["state"] == "COMPLETED").all(), jobs
    assert (jobs["rule"] == "cellprofiler_shard").sum() == len(TINY_PLATES)
    for path in [*targets, *(f"results/profiles/{fs}/{p}.parquet" for fs in ("cellprofiler", "vitmae") for p in TINY_PLATES)]:
        pd.testing.assert_frame_equal(pd.read_parquet(remote / path), pd.read_parquet(local / path), rtol=1e-6)


def wait_for_running(env: dict, rule: str, process: subprocess.Popen, timeout: float = 600) -> str:
    """Job id of the first RUNNING job of `rule`, from squeue (sacct stores the comment only once a job ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "snakemake ended before the job started"
        out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T"], env=env, capture_output=True, text=True).stdout
        for job, comment, state in (line.split("|") for line in out.splitlines() if line.count("|") == 2):
            # Jobs with wildcards are commented rule_<rule>_wildcards_<values> (vit_pretrain: {method}).
            if re.fullmatch(rf"rule_{rule}(_wildcards_.*)?", comment) and state == "RUNNING":
                return job
        time.sleep(1)
    raise AssertionError(f"no running {rule} job within {timeout} s")


RETRY_STEPS = 500


def encoder_target(folder: Path) -> tuple[str, str]:
    # Long enough to be caught running and cancelled (~80 s with the demo ViT on one core); checkpoints every 50 steps
    # so a retry resumes.
    return tiny_config(folder, steps=RETRY_STEPS, checkpoint_every=50), "results/vit/mae/encoder.pt"


def test_cancelled_job_is_retried_and_the_run_completes(cluster, tmp_path):
    config, target = encoder_target(tmp_path)
    since = datetime.now()
    process = subprocess.Popen(cluster_command(tmp_path, config, [target]), env=cluster, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    job = wait_for_running(cluster, "vit_pretrain", process)
    time.sleep(5)
    subprocess.run(["scancel", job], env=cluster, check=True)
    output, _ = process.communicate(timeout=1200)
    assert process.returncode == 0, output[-5000:]
    states = sacct_rules(cluster, since).query("rule == 'vit_pretrain'")["state"].tolist()
    assert states[0].startswith("CANCELLED") and states[-1] == "COMPLETED", states
    log = pd.read_csv(tmp_path / "results" / "vit" / "mae" / "train_log.tsv", sep="\t")
    assert log["step"].is_unique and log["step"].max() == RETRY_STEPS


def test_killed_snakemake_recovers_with_the_documented_command(cluster, tmp_path):
    config, target = encoder_target(tmp_path)
    command = cluster_command(tmp_path, config, [target])
    process = subprocess.Popen(command, env=cluster, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    job = wait_for_running(cluster, "vit_pretrain", process)
    os.killpg(process.pid, signal.SIGKILL)  # no chance to clean up or cancel its jobs
    process.wait()
    # The recovery of docs/usage.md: cancel the orphaned job, unlock, then the same command (the profile has
    # rerun-incomplete, so the job that was in flight runs again and resumes from its last checkpoint).
    subprocess.run(["scancel", job], env=cluster, check=True)
    time.sleep(3)
    encoder = tmp_path / target
    assert not encoder.exists(), "a killed run must not leave an encoder that looks complete"
    subprocess.run([*command, "--unlock"], env=cluster, capture_output=True, check=True, timeout=300)
    rerun = subprocess.run(command, env=cluster, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-5000:]
    assert encoder.exists()
    log = pd.read_csv(encoder.parent / "train_log.tsv", sep="\t")
    assert log["step"].is_unique and log["step"].max() == RETRY_STEPS


def test_a_deterministic_failure_is_not_retried_on_the_cluster(cluster, tmp_path):
    """profiles/slurm resubmits a failed job twice: a precomputed table lacking a well of the run fails on its input,
    and the resubmitted jobs stop at once saying so (the rule's log is the last attempt's)."""
    config = tiny_config(tmp_path)
    data = yaml.safe_load(Path(config).read_text())
    table = tmp_path / "mine.csv"
    pd.DataFrame({"Metadata_Plate": [TINY_PLATES[0]], "Metadata_Well": ["A01"], "x": [1.0]}).to_csv(table, index=False)
    data["precomputed"] = {"mine": {"path": str(table)}}
    Path(config).write_text(yaml.safe_dump(data))
    since = datetime.now()
    target = f"results/profiles/mine/{TINY_PLATES[0]}.parquet"
    run = subprocess.run(cluster_command(tmp_path, config, [target]), env=cluster, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode != 0
    jobs = sacct_rules(cluster, since).query("rule == 'precomputed_profiles'")
    assert len(jobs) == 3 and (jobs["state"] == "FAILED").all(), jobs  # the first try and two resubmissions
    log = (tmp_path / "results" / "logs" / "precomputed_profiles" / "mine" / f"{TINY_PLATES[0]}.log").read_text()
    assert "not retried (attempt 3)" in log and "well(s) of the run have no row" in log
