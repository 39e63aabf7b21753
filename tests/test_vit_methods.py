"""MAE, DINO and SimCLR on one training loop: DDP on 2 gloo processes equals one process on the same global
batch, every method resumes bit-for-bit and under another process count, the CUDA-only paths (bf16 autocast,
torch.compile) run on CPU, and the objectives' pieces give known answers."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paintbench.vit.dino import koleo, teacher_momentum, teacher_temperature
from paintbench.vit.core import step_seeds
from paintbench.vit.methods import method_settings
from paintbench.vit.simclr import nt_xent
from tests.helpers import REPO
from tests.vit_ddp_run import EVERY, STEPS, Interrupted, run

METHODS = ["mae", "dino", "simclr"]


def losses(out_dir) -> list[float]:
    return [float(line.split("\t")[1]) for line in (out_dir / "train_log.tsv").read_text().splitlines()[1:]]


def encoder_state(out_dir) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "encoder.pt", weights_only=True)["encoder"]


def torchrun(out_dir, method: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             str(REPO / "tests" / "vit_ddp_run.py"), str(out_dir), method],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def assert_same_run(a, b, exact: bool) -> None:
    if exact:
        assert losses(a) == losses(b)
    else:
        assert losses(a) == pytest.approx(losses(b), rel=1e-4, abs=1e-5)
    ref, other = encoder_state(a), encoder_state(b)
    assert ref.keys() == other.keys()
    for key in ref:
        if exact:
            assert torch.equal(ref[key], other[key]), key
        else:
            # Adam divides by sqrt(v): on elements whose gradient is ~0, float-level differences in the summation
            # order can move a weight by up to an lr step (2e-3). Bound the worst element by half a step, the mean.
            diff = (other[key] - ref[key]).abs()
            assert diff.max() < 1e-3 and diff.mean() < 2e-5, (key, diff.max().item(), diff.mean().item())


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_and_resume_across_process_counts(tmp_path, method):
    """DDP (gloo, 2 processes of 4 crops) against one process of 8: same losses and weights within float
    tolerance; a run interrupted on one process resumes on two and ends where the uninterrupted run ends."""
    single, double, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    run(single, method)
    torchrun(double, method)
    assert len(losses(double)) == STEPS
    assert_same_run(single, double, exact=False)

    with pytest.raises(Interrupted):
        run(resumed, method, interrupt_at=EVERY + 1)
    assert torch.load(resumed / "resume.pt", weights_only=True)["step"] == EVERY  # an unfinished run's state
    assert not (resumed / "checkpoint.pt").exists()
    torchrun(resumed, method)
    assert_same_run(single, resumed, exact=False)


@pytest.mark.parametrize("method", METHODS)
def test_resume_is_bit_identical(tmp_path, method):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(reference, method)
    with pytest.raises(Interrupted):
        run(resumed, method, interrupt_at=EVERY + 2)  # the log runs ahead of the checkpoint at EVERY
    run(resumed, method)
    assert [int(line.split("\t")[0]) for line in (resumed / "train_log.tsv").read_text().splitlines()[1:]] == \
        list(range(1, STEPS + 1))
    assert_same_run(reference, resumed, exact=True)
    ref_model = torch.load(reference / "checkpoint.pt", weights_only=True)["model"]
    new_model = torch.load(resumed / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(ref_model[k], new_model[k]) for k in ref_model)  # DINO's teacher and centre too


@pytest.mark.parametrize("method", METHODS)
def test_bf16_autocast_and_compile_run_on_cpu(tmp_path, method, monkeypatch):
    """The code paths a GPU run takes by default (bf16 autocast, torch.compile), exercised here first. Compiled
    with aot_eager: the graphs dynamo and AOT autograd trace are the GPU run's; inductor's code generation is not."""
    monkeypatch.setattr("paintbench.vit.core.COMPILE_BACKEND", "aot_eager")
    out = tmp_path / method
    run(out, method, steps=2, checkpoint_every=2, warmup_steps=1, precision="bf16", compile_model=True)
    assert len(losses(out)) == 2 and all(math.isfinite(v) for v in losses(out))
    assert all(torch.isfinite(v).all() for v in encoder_state(out).values())


def test_step_seeds_depend_on_seed_and_step_only():
    assert torch.equal(step_seeds(1, 5, 8), step_seeds(1, 5, 8))
    assert torch.equal(step_seeds(1, 5, 8)[:4], step_seeds(1, 5, 4))  # a longer batch extends, never reshuffles
    assert not torch.equal(step_seeds(1, 5, 8), step_seeds(1, 6, 8))
    assert (step_seeds(2, 1, 1000) >= 0).all()


def test_method_settings_reject_unknown_keys():
    assert method_settings("dino", {"local_crops": 4})["local_crops"] == 4
    with pytest.raises(ValueError, match="vit.simclr.*'temprature'"):
        method_settings("simclr", {"temprature": 0.2})
    with pytest.raises(ValueError, match="unknown self-supervised method 'byol'"):
        method_settings("byol", {})


def test_dino_schedules():
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    settings = method_settings("dino", {"warmup_teacher_temp": 0.04, "teacher_temp": 0.07,
                                        "teacher_temp_warmup_steps": 10})
    assert teacher_temperature(0, settings) == pytest.approx(0.04)
    assert teacher_temperature(5, settings) == pytest.approx(0.055)
    assert teacher_temperature(50, settings) == pytest.approx(0.07)


def test_koleo_known_answers():
    """Nearest-neighbour distances by hand: the square's corners on the unit circle are sqrt(2) apart."""
    square = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]) * 3  # scale is normalized away
    assert koleo(square).item() == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)
    # Two pairs of near-duplicates: each point's neighbour is its twin at distance 2 sin(0.05).
    pairs = torch.tensor([[1.0, 0], [math.cos(0.1), math.sin(0.1)], [-1, 0], [-math.cos(0.1), -math.sin(0.1)]])
    assert koleo(pairs).item() == pytest.approx(-math.log(2 * math.sin(0.05)), rel=1e-4)
    # Its gradient pushes the twins apart (it lowers the term).
    moved = pairs.clone().requires_grad_(True)
    koleo(moved).backward()
    assert koleo(pairs - 0.01 * moved.grad).item() < koleo(pairs).item()
    # Rows 2..3 of a 4-row global batch against everyone: the mean of those rows' terms.
    assert koleo(pairs[2:], pairs, offset=2).item() == pytest.approx(koleo(pairs).item(), rel=1e-6)


def test_nt_xent_known_answers():
    """Orthogonal crops with identical views: the loss is log(1 + (2B-2) e^0) - 1/T + ... computed by hand."""
    views = torch.eye(4)[:2]  # 2 crops, unit vectors e0, e1; both views equal
    temperature = 0.5
    loss = nt_xent((views, views), (views, views), 0, temperature)
    # Each query: positive logit 1/T, two others: 0 (the other crop, both views); self excluded.
    expected = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 2))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Swapping which view is the partner changes nothing; a collapsed batch has loss log(2B - 1).
    same = torch.ones(3, 4) / 2
    assert nt_xent((same, same), (same, same), 0, 0.1).item() == pytest.approx(math.log(5), rel=1e-5)


@pytest.mark.slow
def test_cli_launches_torchrun_for_several_gpus(tmp_path):
    """`paintbench vit-pretrain --gpus 2` (what the rule runs for vit.gpus: 2) starts 2 processes itself and writes
    one encoder; on CPU they use gloo."""
    import json

    import numpy as np
    import pandas as pd

    from tests.test_vit_train import blob_images

    prefix = tmp_path / "crops" / "PLATE"
    prefix.parent.mkdir()
    np.save(f"{prefix}.npy", blob_images(16, 32, seed=2).astype(np.float16))
    pd.DataFrame({"Metadata_Plate": "PLATE", "Metadata_Well": "A01", "Metadata_Site": 1,
                  "Metadata_Crop": np.arange(16)}).to_parquet(f"{prefix}.parquet")
    Path(f"{prefix}.norm.json").write_text(json.dumps({"illum": "x", "low": [0] * 5, "high": [1] * 5,
                                                       "percentiles": [1, 99.9], "clip": [-0.5, 3], "mode": "nuclei",
                                                       "crop_size": 32}))
    out = tmp_path / "model"
    command = [sys.executable, "-m", "paintbench", "vit-pretrain", "--crops", str(prefix), "--out-dir", str(out),
               "--model", "vit_tiny_patch16_224", "--input-size", "32", "--patch-size", "8",
               "--model-kwargs", '{"depth": 1, "embed_dim": 32, "num_heads": 2}', "--method", "simclr",
               "--settings", '{"hidden_dim": 32, "proj_dim": 16}', "--steps", "2", "--batch-size", "8",
               "--warmup-steps", "1", "--device", "cpu", "--gpus", "2", "--num-workers", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "launching 2 processes" in result.stderr and "torch.distributed.run" in result.stderr
    assert len(losses(out)) == 2 and (out / "encoder.pt").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["train_config"]["processes"] == 2
