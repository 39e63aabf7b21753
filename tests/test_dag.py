"""The DAG of the full 51-plate CPJUMP1 batch stays manageable (jobs per plate and shard, not per image)."""

from __future__ import annotations

import os
import re

from tests.helpers import REPO, snakemake


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
