"""The package as a user installs it: every import declared in pyproject.toml, and a wheel that works on its own
(installed into a fresh environment over the locked dependencies, outside the checkout)."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement

from tests.helpers import LINCS_PLATE, REPO

pytestmark = pytest.mark.slow  # builds and installs a wheel into a fresh environment

# Needed at run time without an import of its own: tifffile decodes the Gallery's LZW TIFFs with it.
RUNTIME_ONLY = {"imagecodecs"}


def third_party_imports() -> set[str]:
    found = set()
    for path in (REPO / "src" / "paintbench").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "paintbench"}


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}


def test_every_import_is_a_declared_dependency():
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[m][0].lower().replace("_", "-") for m in third_party_imports()}
    assert needed - declared() == set(), "imported but not in pyproject.toml's dependencies"
    assert declared() - needed - RUNTIME_ONLY == set(), "declared but never imported"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding the built wheel (--no-deps) over the locked environment's packages; returns its bin."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    for part in ("src", "workflow/schemas", "config/metadata"):
        shutil.copytree(REPO / part, source / part, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(work / "dist")], check=True, capture_output=True, timeout=300)
    (wheel,) = (work / "dist").glob("paintbench-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    # The locked packages, after the venv's own: a path line, so the checkout's editable install (a .pth of its
    # own in that folder) is not activated and the wheel's paintbench is the one imported.
    (site / "locked.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    return venv / "bin"


def run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(bin_dir / "paintbench"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/bin:/bin", "MPLCONFIGDIR": str(cwd / "mpl"), "HOME": str(cwd)})
    assert done.returncode == 0, f"paintbench {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_runs_outside_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import paintbench; print(paintbench.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(installed.parent)), where.stdout  # the wheel's copy, not the checkout's
    assert "check-config" in run(installed, tmp_path, "--help").stdout
    # The schema and the bundled CPJUMP1 metadata come with the package.
    shown = run(installed, tmp_path, "check-config", "--configfile", str(REPO / "config" / "demo.yaml")).stdout
    assert "source: synthetic" in shown and "BR00116991" in shown
    # A stage, then the report's summary and figures (matplotlib, the paper's bundled values) on its results.
    results = tmp_path / "results"
    for task in ("replicate_retrieval", "sister_matching", "compound_gene_matching"):
        extra = [] if task == "replicate_retrieval" else ["--replicate-results", str(results / "replicate_retrieval.parquet")]
        run(installed, tmp_path, "retrieval", "--profiles", str(LINCS_PLATE), "--task", task, "--control-col", "",
            "--control-value", "DMSO", "--null-size", "1000", *extra, "--output", str(results / f"{task}.parquet"))
    files = [f"--{t.replace('_', '-')}" if i % 2 == 0 else f"lincs={results / t}.parquet"
             for t in ("replicate_retrieval", "sister_matching", "compound_gene_matching") for i in range(2)]
    run(installed, tmp_path, "report-summary", *files, "--published",
        str(REPO / "config" / "metadata" / "cpjump1_published_cellprofiler.tsv"), "--dataset", "own",
        "--output", str(tmp_path / "summary.tsv"))
    summary = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    row = summary[(summary["feature_set"] == "lincs") & (summary["task"] == "replicate_retrieval")].iloc[0]
    assert row["n_perturbations"] == 58
    run(installed, tmp_path, "report-figures", "--summary", str(tmp_path / "summary.tsv"), "--plates", "SQ00015054",
        *files, "--replicate-ap", f"lincs={results / 'replicate_retrieval_ap.parquet'}", "--figures-dir",
        str(tmp_path / "figures"))
    assert (tmp_path / "figures" / "fraction_retrieved.png").stat().st_size > 0
    assert (tmp_path / "figures" / "plate_replicate_ap_lincs.svg").stat().st_size > 0
