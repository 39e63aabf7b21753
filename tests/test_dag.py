"""The DAG of the full 51-plate CPJUMP1 batch stays manageable (jobs per plate and shard, not per image)."""

from __future__ import annotations

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


def test_workflow_passes_snakemake_lint(tmp_path):
    for config in ("config.yaml", "demo.yaml"):
        result = snakemake(["--lint", "--configfile", str(REPO / "config" / config)], cwd=tmp_path, check=False)
        output = result.stdout + result.stderr
        assert result.returncode == 0 and "Lints for" not in output, f"{config}:\n{output[-4000:]}"
