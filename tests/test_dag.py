"""The DAG of the full 51-plate CPJUMP1 batch stays manageable (jobs per plate and shard, not per image)."""

from __future__ import annotations

import pytest

import os
import re

from tests.helpers import REPO, snakemake

pytestmark = pytest.mark.slow  # Snakemake dry runs and lint of whole workflows


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("Reasons:")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)}


def test_full_batch_dry_run(tmp_path):
    result = snakemake(
        ["-n", "--quiet", "rules", "--configfile", str(REPO / "config" / "config.yaml"),
         "--config", "plates=all", "wells=all", "sites=all"],
        cwd=tmp_path,
    )
    counts = job_counts(result.stdout + result.stderr)
    assert counts["download"] == counts["illum"] == counts["cellprofiler_well_profiles"] == 51
    assert counts["cellprofiler_shard"] == 51 * 384 // 16  # default shards of 16 wells
    assert counts["total"] < 10_000


def job_resources(dry_run_output: str, rule: str) -> dict[str, str]:
    block = dry_run_output.split(f"rule {rule}:")[1].split("\n\n")[0]
    line = next(part for part in block.splitlines() if "resources:" in part)
    return dict(item.strip().split("=", 1) for item in line.split("resources:")[1].split(",") if "=" in item)


def test_resources_match_the_machine_and_the_plate(tmp_path):
    """Workstation: mem_mb capped at the machine's memory; disk_mb from the plan; downloads take a slot of the
    global `download` resource; GPU rules' threads are the DataLoader workers."""
    result = snakemake(["-n", "--cores", "4", "--configfile", str(REPO / "config" / "config.yaml"),
                        "--config", "plates=[BR00116991]", "vit={num_workers: 3}"], cwd=tmp_path)
    out = result.stdout + result.stderr
    machine = 0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    pretrain = job_resources(out, "vit_pretrain")
    assert int(pretrain["mem_mb"]) <= machine and int(pretrain["gpu"]) == 1
    download = job_resources(out, "download")
    assert int(download["download"]) == 1 and int(download["disk_mb"]) == round(384 * 5 * 2.42)  # 384 fields, 5 TIFFs
    assert int(job_resources(out, "vit_crops")["disk_mb"]) < int(download["disk_mb"])  # the sample: under the images
    assert "--num-workers 3" in out.split("rule vit_embed:")[1].split("\n\n")[0]


def test_multi_gpu_pretraining_is_one_job_asking_for_every_gpu(tmp_path):
    """vit.gpus: N -> one vit_pretrain job per method with gpu=N that launches N processes itself."""
    result = snakemake(["-n", "--cores", "4", "--resources", "gpu=4", "--configfile", str(REPO / "config" / "config.yaml"),
                        "--config", "plates=[BR00116991]", "vit={gpus: 4}"], cwd=tmp_path)
    out = result.stdout + result.stderr
    blocks = out.split("rule vit_pretrain:")[1:]
    assert len(blocks) == 3  # mae, dino, simclr
    for block in blocks:
        block = block.split("\n\n")[0]
        assert job_resources("rule vit_pretrain:" + block, "vit_pretrain")["gpu"] == "4"
        assert "--gpus 4" in block


def test_workflow_passes_snakemake_lint(tmp_path):
    for config in ("config.yaml", "demo.yaml"):
        result = snakemake(["--lint", "--configfile", str(REPO / "config" / config)], cwd=tmp_path, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Lints for" not in output, f"{config}:\n{output[-4000:]}"


def job_blocks(dry_run_output: str) -> list[dict]:
    """Each job of a `snakemake -n -p` run: rule, its declared files and its shell command."""
    jobs = []
    for block in dry_run_output.split("\nrule ")[1:]:
        if "Shell command: " not in block:
            continue
        head, command = block.split("Shell command: ", 1)
        fields = dict(line.strip().split(": ", 1) for line in head.splitlines()[1:] if ": " in line)
        declared = {f for key in ("input", "output", "log", "benchmark") for f in fields.get(key, "").split(", ") if f}
        command = "\n".join(line for line in command.split("\n\n")[0].splitlines()
                            if not line.startswith("Would remove temporary output"))
        outputs = {f for f in fields.get("output", "").split(", ") if f}
        jobs.append({"rule": head.split(":")[0], "declared": declared, "outputs": outputs, "command": command})
    return jobs


def test_every_file_a_command_names_is_declared(tmp_path):
    """Every path under results_dir on a job's command line is a declared input, output or log of its rule, or the
    prefix of declared files (a crop cache's PREFIX) or the folder its outputs are written to: no rule reads a file
    Snakemake does not know about (0.2's report rules took results_dir and read five undeclared files; its
    CellProfiler and ViT rules took the illumination folder)."""
    import shlex

    from tests.conftest import small_demo_config

    config = small_demo_config(tmp_path)
    result = snakemake(["-n", "-p", "--configfile", config], cwd=tmp_path)
    jobs = job_blocks(result.stdout + result.stderr)
    assert {job["rule"] for job in jobs} >= {"download", "illum", "cellprofiler_shard", "vit_crops", "vit_pretrain",
                                             "vit_embed", "profiles", "profile_chain", "replicate_retrieval", "matching",
                                             "target_id", "layout_controls",
                                             "report_summary", "report_figures", "report_html"}
    results = str(tmp_path / "results")
    undeclared = []
    for job in jobs:
        # The configuration shown in the report (--config-text) names results_dir as text, not as a file.
        words = [w.split("=", 1)[-1] for w in shlex.split(job["command"]) if results in w and "\n" not in w]
        for word in words:
            known = (word in job["declared"] or any(f.startswith(f"{word}.") for f in job["declared"])
                     or any(os.path.dirname(f) == word for f in job["outputs"]))
            if not known:
                undeclared.append(f"{job['rule']}: {word}")
    assert undeclared == []
