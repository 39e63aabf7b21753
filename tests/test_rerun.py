"""Rerunning parts of a finished run (docs/usage.md "Rerunning a stage"): exactly the jobs a user expects, no more."""

from __future__ import annotations

import os
import shlex
import subprocess

import pandas as pd
import pytest

from tests.helpers import REPO, snakemake
from tests.test_dag import job_counts

pytestmark = pytest.mark.slow  # dry runs of the finished small demo

REPORT = {"report_summary", "report_figures", "report_html"}
PLATE = "BR00117000"


def planned(run, *args: str, targets: tuple[str, ...] = ()) -> dict[str, int]:
    """Jobs a dry run of the finished small demo would run, per rule (without the 'all' and 'total' rows)."""
    config, results = run
    # Targets first: --configfile takes several files, and would read a target after it as one.
    result = snakemake(["-n", *targets, "--quiet", "rules", "--configfile", config, *args], cwd=results.parent)
    text = result.stdout + result.stderr
    if "Nothing to be done" in text:
        return {}
    return {rule: n for rule, n in job_counts(text).items() if rule not in ("all", "total")}


def test_finished_run_is_up_to_date(small_demo_run):
    assert planned(small_demo_run) == {}


def test_forcerun_a_stage_reruns_it_and_everything_downstream(small_demo_run):
    jobs = planned(small_demo_run, "--forcerun", "profiles")
    assert set(jobs) == {"profiles", "profile_chain", "replicate_retrieval", "matching", "target_id",
                         "layout_controls"} | REPORT
    # 5 feature sets (the ViTs, CellProfiler, an external encoder), 2 chains each (profiles.feature_sets'
    # defaults): 10 profile sets; 2 matching tasks each
    assert jobs["profiles"] == 5 and jobs["profile_chain"] == jobs["target_id"] == jobs["layout_controls"] == 10
    assert jobs["matching"] == 20


def test_changing_a_chain_reruns_only_that_chain(small_demo_run):
    jobs = planned(small_demo_run, "--config", "profiles={steps: {sphering: {regularization: 0.1}}}")
    assert set(jobs) == {"profile_chain", "replicate_retrieval", "matching", "target_id", "layout_controls"} | REPORT
    assert jobs["profile_chain"] == 5  # the mad_sphering chain of every feature set, nothing else


def test_changing_a_retrieval_parameter_reruns_only_retrieval_and_reports(small_demo_run):
    jobs = planned(small_demo_run, "--config", "retrieval={null_size: 2000, seed: 0}")
    assert set(jobs) == {"replicate_retrieval", "matching", "layout_controls"} | REPORT


def test_one_branch_one_rule_one_plate(small_demo_run):
    _, results = small_demo_run
    # Only the ViT embeddings of every plate (one job per plate embeds all 3 methods), nothing downstream.
    assert planned(small_demo_run, "--forcerun", "vit_embed", "--until", "vit_embed") == {"vit_embed": 6}
    # Only the CellProfiler branch (its temporary shards are recomputed), nothing downstream.
    assert planned(small_demo_run, "--forcerun", "cellprofiler_shard", "--until", "cellprofiler_well_profiles") == {
        "cellprofiler_shard": 6, "cellprofiler_well_profiles": 6}
    # One plate through the CellProfiler branch.
    target = str(results / "profiles" / "cellprofiler" / f"{PLATE}.parquet")
    assert planned(small_demo_run, "--forcerun", target, "--until", target) == {
        "cellprofiler_shard": 1, "cellprofiler_well_profiles": 1}
    # Only the reports.
    assert set(planned(small_demo_run, "--forcerun", "report_summary")) == REPORT


def test_one_shard_by_hand_with_the_command_from_its_log(small_demo_run, tmp_path):
    _, results = small_demo_run
    log = (results / "logs" / "cellprofiler_shard" / PLATE / "s000.log").read_text()
    command = shlex.split(log.split("rerun this stage with: ", 1)[1].splitlines()[0])
    assert command[:4] == ["python", "-m", "paintbench", "cellprofiler"]
    output = tmp_path / "s000.parquet"
    command[command.index("--output") + 1] = str(output)
    command[command.index("--qc-output") + 1] = str(tmp_path / "s000.qc.parquet")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run([os.path.join(os.path.dirname(os.sys.executable), "python"), *command[1:]],
                          cwd=results.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    by_hand = pd.read_parquet(output)
    merged = pd.read_parquet(results / "cellprofiler" / PLATE / "single_cells.parquet")
    assert len(by_hand) == len(merged) > 0
    features = [c for c in by_hand.columns if not c.startswith("Metadata_")][:50]
    pd.testing.assert_frame_equal(by_hand[features].reset_index(drop=True), merged[features].reset_index(drop=True))


# Files the report reads (the five 0.2 did not declare, and one that was): the rule that writes each and the report
# rule that reads it. tests/test_dag.py checks that every file any command names is declared.
REPORT_READS = [("qc/BR00117000.tsv", "plate_qc", "report_html"),
                ("profiles/cellprofiler/BR00117000.parquet", "cellprofiler_well_profiles", "report_html"),
                ("vit/crops/BR00117000.centres.parquet", "vit_crops", "report_html"),
                ("synthetic/ground_truth.parquet", "synthetic_ground_truth", "report_html"),
                ("vit/mae/checkpoint.pt", "vit_pretrain", "report_figures"),
                ("profiles/vitsimclr/mad.parquet", "profile_chain", "report_figures"),
                ("profiles/cellprofiler/mad_sphering.steps.tsv", "profile_chain", "report_summary"),
                ("retrieval/vitdino/mad_sphering/layout_controls.parquet", "layout_controls", "report_summary")]


@pytest.mark.parametrize("path, writer, reader", REPORT_READS, ids=[p for p, _, _ in REPORT_READS])
def test_a_deleted_input_of_the_report_is_rebuilt_and_reported(small_demo_run, tmp_path, path, writer, reader):
    """Rebuilding a deleted file the report reads (`snakemake FILE all`, docs/usage.md) reruns the report rule
    that reads it: 0.2 did not declare five of them, so a rebuilt QC table or checkpoint never reached the report.
    (A plain `snakemake` skips a deleted intermediate file whatever is declared: Snakemake 7.7+ ignores deleted
    intermediates of up-to-date outputs, snakemake/snakemake#1978.)"""
    _, results = small_demo_run
    target, aside = results / path, tmp_path / "aside"
    target.rename(aside)  # a rename keeps the file's time, so putting it back leaves the run up to date
    try:
        jobs = planned(small_demo_run, targets=(str(target), "all"))
    finally:
        aside.rename(target)
    assert writer in jobs and reader in jobs, jobs
