"""The conda YAMLs for `--sdm conda` users pin exactly what the setup script installs."""

from __future__ import annotations

import yaml

from tests.helpers import REPO


def test_conda_yamls_match_the_lock_files():
    for lock in sorted((REPO / "envs").glob("*.lock.txt")):
        env = yaml.safe_load(lock.with_name(lock.name.replace(".lock.txt", ".yaml")).read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        pinned = {p for p in pip_section if not p.startswith("--")}
        locked = {line.strip() for line in lock.read_text().splitlines() if line.strip() and not line.startswith("#")}
        assert pinned == locked, f"{lock.name}: rerun scripts/conda_envs.py"
        assert "python=3.11" in env["dependencies"]


def test_analysis_lock_pins_the_stack_the_pipeline_needs():
    locked = dict(line.split("==") for line in (REPO / "envs" / "paintbench.lock.txt").read_text().split())
    assert locked["torch"] == "2.14.1" and locked["torchvision"] == "0.29.1"
    for package in ("snakemake", "snakemake-executor-plugin-slurm", "timm", "pandas", "pyarrow", "statsmodels",
                    "matplotlib", "boto3", "tifffile", "imagecodecs", "tqdm", "moto", "copairs", "selenium"):
        assert package in locked, package
    cellprofiler = dict(line.split("==") for line in (REPO / "envs" / "cellprofiler.lock.txt").read_text().split())
    assert cellprofiler["numpy"] == "1.26.4" and cellprofiler["imagecodecs"] == "2024.12.30"
