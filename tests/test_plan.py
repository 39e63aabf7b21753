"""`paintbench plan`: counts, hours and disk of a run before it starts, each from a rate with its source."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paintbench.config import load_config
from paintbench.plan import RATES, estimate, plate_disk_mb
from tests.helpers import REPO


def rows(config_name: str, **overrides) -> dict[str, dict]:
    config = load_config(REPO / "config" / config_name, overrides)
    return {r["quantity"]: r for r in estimate(config, str(REPO / "config" / "metadata"), cells_per_field=150)}


def test_default_run_counts_and_the_vit_disk_goal():
    plan = rows("config.yaml")
    assert plan["plates"]["value"] == 10 and plan["fields"]["value"] == 3840  # 10 plates x 384 wells x 1 field
    assert plan["download"]["value"] == pytest.approx(3840 * 5 * 2.42e6 / 1e9, abs=0.1)
    # The ViT branch stores only its pretraining sample: less than the images it reads, where a cache of every
    # crop at 150 cells per field would take three times the images.
    assert plan["ViT pretraining sample (kept)"]["value"] < plan["download"]["value"] / 2
    assert plan["ViT cache of every crop (not made)"]["value"] > 3 * plan["download"]["value"]
    assert plan["CellProfiler"]["unit"] == "CPU-hours" and plan["CellProfiler"]["value"] > 10
    assert all(r["source"] for r in plan.values())
    assert plan["peak disk"]["value"] > plan["download"]["value"]


def test_full_batch_and_published_profiles_only():
    full = rows("config.yaml", plates="all", sites="all")
    assert full["fields"]["value"] == 384 * (9 * 47 + 16 * 4)  # four plates image 16 fields per well
    paper = rows("paper.yaml")
    assert "download" not in paper and "CellProfiler" not in paper and paper["plates"]["value"] == 40


def test_plate_disk_for_the_rules():
    config = load_config(REPO / "config" / "config.yaml")
    metadata = str(REPO / "config" / "metadata")
    assert plate_disk_mb(config, "BR00116991", metadata, "download") == round(384 * 5 * 2.42)
    assert plate_disk_mb(config, "BR00116991", metadata, "vit_crops") < plate_disk_mb(config, "BR00116991", metadata,
                                                                                       "download")
    assert plate_disk_mb(config, "BR00116991", metadata, "report") == 100  # the floor


def test_plan_command_prints_the_table_with_sources(tmp_path):
    done = subprocess.run([sys.executable, "-m", "paintbench", "plan", "--configfile", str(REPO / "config" / "config.yaml"),
                           "--config", "plates=[BR00116991,BR00116992]", "sites=[1,2]", "--output",
                           str(tmp_path / "plan.tsv")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "1,536" in done.stdout and "GPU-hours" in done.stdout  # 2 plates x 384 wells x 2 fields
    assert RATES["gpu_train_crops_per_s"].source in done.stdout
    assert (tmp_path / "plan.tsv").read_text().startswith("quantity\tvalue\tunit\tsource")


def test_the_benchmarks_own_cost_grows_with_the_wells_and_halves_its_memory_at_float32():
    small, full = rows("config.yaml"), rows("config.yaml", plates="all")
    retrieval, memory = "benchmark: replicate retrieval", "benchmark: memory of one retrieval job"
    assert full[retrieval]["unit"] == "CPU-minutes" and "bench_scale.py" in full[retrieval]["source"]
    # linear in the wells (blocked candidates): the same per-well rate at 10 and 51 plates
    assert full[retrieval]["value"] / small[retrieval]["value"] == pytest.approx(
        full["wells"]["value"] / small["wells"]["value"], rel=0.1)  # two significant digits each
    single = rows("config.yaml", plates="all", retrieval={"precision": "float32"})
    assert single[memory]["value"] == pytest.approx(full[memory]["value"] / 2, rel=0.01)
    assert full["benchmark: matching"]["value"] >= small["benchmark: matching"]["value"] > 0  # same platemaps
