"""The prepared GPU check (scripts/gpu_check.py) runs every step at tiny size on the CPU (--dry-run) and writes the
files a GPU run writes: so the first GPU machine runs a script that has already run."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from tests.helpers import REPO


def test_the_dry_run_measures_every_step_and_writes_the_same_files(tmp_path):
    out = tmp_path / "gpu"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["cuda_tests.txt", "gpu_check.log", "gpu_check.tsv",
                                                     "nvidia_smi.txt"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    results = pd.read_csv(out / "gpu_check.tsv", sep="\t")
    assert "error" not in set(results["metric"]), results[results["metric"] == "error"]
    training = results[results["step"] == "training"]
    assert set(training["method"].dropna()) == {"mae", "dino", "simclr"}
    assert set(training.loc[training["metric"] == "steps_per_s", "batch_size"].astype(int)) == {4, 8}
    agreement = results[results["metric"] == "fp32_vs_cpu_max_rel"]
    assert len(agreement) == 3 and agreement["detail"].str.startswith("PASS").all()
    tuning = results[(results["step"] == "fine_tuning") & (results["metric"] == "steps_per_s")]
    assert len(tuning) == 2 and (tuning["value"].astype(float) > 0).all()
    embedding = results[(results["step"] == "embedding") & (results["metric"] == "end_to_end")]
    assert len(embedding) == 2 and (embedding["value"].astype(float) > 0).all()
    assert "tests collected" in (out / "cuda_tests.txt").read_text()  # the CUDA tests are found (run on a GPU)
