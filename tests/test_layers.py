"""The package's layers (pyproject.toml's import-linter contracts) hold: data flows one way, images -> profiles ->
retrieval -> report with the command line on top; each ViT method builds on the shared core; no import circles.
And the check has teeth: an import pointing up, or a circle, breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

LINT = Path(sys.executable).with_name("lint-imports")


def lint(source: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(source)}
    return subprocess.run([str(LINT), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_layers_hold(tmp_path):
    done = lint(REPO / "src", tmp_path)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "0 broken" in done.stdout


def test_an_upward_import_or_a_circle_breaks_them(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(REPO / "src" / "paintbench", copy / "paintbench", ignore=shutil.ignore_patterns("__pycache__"))
    retrieval = copy / "paintbench" / "retrieval.py"
    retrieval.write_text(retrieval.read_text() + "\nfrom paintbench.report import summary  # noqa\n")
    done = lint(copy, tmp_path)
    assert done.returncode != 0 and "paintbench.retrieval is not allowed to import paintbench.report" in done.stdout
    # A circle inside one layer (the ViT core importing a method) is caught too.
    retrieval.write_text(retrieval.read_text().replace("\nfrom paintbench.report import summary  # noqa\n", "\n"))
    core = copy / "paintbench" / "vit" / "core.py"
    core.write_text(core.read_text() + "\nfrom paintbench.vit import dino  # noqa\n")
    done = lint(copy, tmp_path)
    assert done.returncode != 0 and "paintbench.vit.core is not allowed to import paintbench.vit.dino" in done.stdout
