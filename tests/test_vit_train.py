"""MAE pretraining: it learns, it resumes bit-for-bit after a SIGKILL, and encoders load from every file kind."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from paintbench.vit import build_encoder
from paintbench.vit.core import resize_to
from paintbench.vit.model import build_mae_from_decoder_config
from paintbench.vit.train import (STREAM_INIT, StepBatchSampler, derive_seed, load_encoder, load_mae, pretrain,
                                  warmup_cosine)
from tests.helpers import REPO

TINY = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5,
            kwargs=dict(depth=2, embed_dim=64, num_heads=2))
# Stochastic depth makes training draw from the global torch RNG, which a resume must restore too.
TINY_DROP_PATH = TINY | dict(kwargs=TINY["kwargs"] | dict(drop_path_rate=0.2))
DECODER = dict(dim=32, depth=1, heads=2)
MAE_SETTINGS = {f"decoder_{k}": v for k, v in DECODER.items()}
RESUME_STEPS, RESUME_EVERY = 40, 10


def blob_images(n: int, size: int, seed: int) -> np.ndarray:
    """Cell-like crops: 1-3 Gaussian blobs sharing a position across the 5 channels, channel-specific widths."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    widths = np.array([0.5, 1.0, 0.8, 1.3, 0.9], np.float32)  # DNA tight, AGP wide: like nucleus vs cell body
    out = np.zeros((n, 5, size, size), np.float32)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            radius = rng.uniform(3, 7) * size / 32
            d2 = (yy - cy) ** 2 + (xx - cx) ** 2
            for c in range(5):
                out[i, c] += rng.uniform(0.5, 1.5) * np.exp(-d2 / (2 * (radius * widths[c]) ** 2))
    return out


class BlobCrops(Dataset):
    """A crop-cache stand-in: float32 tensors (5, S, S); `delay` slows loading so a run can be killed mid-way."""

    def __init__(self, n: int, size: int, seed: int, delay: float = 0.0) -> None:
        self.images, self.delay = torch.from_numpy(blob_images(n, size, seed)), delay

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        return self.images[index]


@contextlib.contextmanager
def reproducible_cpu():
    """One thread and deterministic kernels, the same in this process and in the subprocess."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def run_small(out_dir: str | Path, steps: int = RESUME_STEPS, delay: float = 0.0, encoder_config: dict = TINY,
              **overrides) -> Path:
    """The resume test's run (also started as a subprocess): 64 crops in batches of 8, so epochs wrap."""
    settings = dict(steps=steps, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=RESUME_EVERY, seed=7,
                    settings=MAE_SETTINGS, log_every=1, progress=False, device="cpu") | overrides
    with reproducible_cpu():
        return pretrain(BlobCrops(64, 32, seed=5, delay=delay), encoder_config, Path(out_dir), **settings)


def log_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()[1:]]


def test_step_batches_cover_epochs_and_split_at_any_step():
    n, batch = 10, 4
    whole = list(StepBatchSampler(n, batch, seed=3, start=0, stop=15))
    assert all(len(b) == batch for b in whole)
    assert whole == list(StepBatchSampler(n, batch, 3, 0, 6)) + list(StepBatchSampler(n, batch, 3, 6, 15))
    stream = [i for b in whole for i in b]
    for epoch in range(len(stream) // n):
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))  # every crop once per epoch
    assert stream[:n] != stream[n:2 * n]  # a new shuffle each epoch
    assert list(StepBatchSampler(3, 7, 1, 0, 2))[0].count(0) >= 2  # batches larger than the dataset wrap
    assert whole != list(StepBatchSampler(n, batch, seed=4, start=0, stop=15))


def test_warmup_cosine():
    factors = [warmup_cosine(s, 4, 20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))
    assert 0 < factors[-1] < 0.05 and warmup_cosine(25, 4, 20) == 0.0


def held_out_loss(model, images: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss, _, _ = model(resize_to(images, 32), 0.75, torch.Generator().manual_seed(123))
    return loss.item()


def test_pretraining_reduces_held_out_loss(tmp_path):
    held_out = torch.from_numpy(blob_images(64, 40, seed=99))
    with reproducible_cpu():
        torch.manual_seed(derive_seed(11, STREAM_INIT))  # the same initial weights pretrain starts from
        before = held_out_loss(build_mae_from_decoder_config(TINY, DECODER), held_out)
        # 40 px crops for a 32 px model: the training step resizes.
        pretrain(BlobCrops(512, 40, seed=1), TINY, tmp_path, steps=150, batch_size=32, lr=2e-3, warmup_steps=10,
                 checkpoint_every=100, seed=11, settings=MAE_SETTINGS, device="cpu", progress=False)
        after = held_out_loss(load_mae(tmp_path / "checkpoint.pt"), held_out)
    assert after < 0.8 * before, (before, after)
    rows = log_rows(tmp_path / "train_log.tsv")
    assert [int(r[0]) for r in rows] == list(range(1, 151))
    assert (tmp_path / "train_loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"encoder", "model", "optimizer", "scheduler", "step", "encoder_config", "train_config",
            "rng"} <= set(checkpoint)
    assert checkpoint["step"] == 150 and checkpoint["encoder_config"] == TINY


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    run_small(reference, encoder_config=TINY_DROP_PATH)

    script = ("from tests.test_vit_train import TINY_DROP_PATH, run_small; "
              f"run_small({str(killed)!r}, delay=0.01, encoder_config=TINY_DROP_PATH)")
    stderr = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would stall the child
    with stderr.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=sink)
    log_path, deadline = killed / "train_log.tsv", time.monotonic() + 120
    try:  # kill a few steps after the first checkpoint, so the log runs ahead of the checkpoint
        while not (log_path.exists() and len(log_rows(log_path)) >= RESUME_EVERY + 3):
            assert proc.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, "the subprocess made no progress"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The resume file is always a whole state from a checkpoint step; the finished run's files do not exist yet
    # (checkpoint.pt and encoder.pt appear only when training completes).
    stopped = torch.load(killed / "resume.pt", weights_only=True)["step"]
    assert stopped % RESUME_EVERY == 0 and 0 < stopped < RESUME_STEPS
    assert not (killed / "encoder.pt").exists() and not (killed / "checkpoint.pt").exists()
    assert len(log_rows(log_path)) >= stopped
    with log_path.open("a") as torn:
        torn.write("99\t0.5")  # a row cut short by the kill

    run_small(killed, encoder_config=TINY_DROP_PATH)  # resumes in this process
    assert not (killed / "resume.pt").exists()  # checkpoint.pt holds the finished state

    ref_log, new_log = log_rows(reference / "train_log.tsv"), log_rows(log_path)
    assert [int(r[0]) for r in new_log] == list(range(1, RESUME_STEPS + 1))
    assert [r[:3] for r in new_log] == [r[:3] for r in ref_log]  # step, loss, lr: exactly equal
    for name in ("encoder.pt", "checkpoint.pt"):
        ref_state = torch.load(reference / name, weights_only=True)
        new_state = torch.load(killed / name, weights_only=True)
        for part in ("encoder", "model"):
            if part in ref_state:
                assert ref_state[part].keys() == new_state[part].keys()
                assert all(torch.equal(ref_state[part][k], new_state[part][k]) for k in ref_state[part]), (name, part)
    ref_opt = torch.load(reference / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    new_opt = torch.load(killed / "checkpoint.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(ref_opt[i][k], new_opt[i][k]) for i in ref_opt for k in ref_opt[i])


def test_changed_settings_start_over(tmp_path, caplog):
    caplog.set_level("INFO", logger="paintbench.vit.train")
    run_small(tmp_path, steps=10)
    first = torch.load(tmp_path / "encoder.pt", weights_only=True)["encoder"]
    run_small(tmp_path, steps=12, lr=5e-4)  # another trajectory: the old checkpoint must not be continued
    assert "not resumed" in caplog.text and "lr" in caplog.text and "steps" in caplog.text
    assert [int(r[0]) for r in log_rows(tmp_path / "train_log.tsv")] == list(range(1, 13))
    fresh = tmp_path / "fresh"
    run_small(fresh, steps=12, lr=5e-4)
    again = torch.load(tmp_path / "encoder.pt", weights_only=True)["encoder"]
    expected = torch.load(fresh / "encoder.pt", weights_only=True)["encoder"]
    assert all(torch.equal(again[k], expected[k]) for k in expected)
    assert not all(torch.equal(again[k], first[k]) for k in first)
    # Called again when finished: nothing is trained, the outputs are rewritten unchanged.
    log_text = (tmp_path / "train_log.tsv").read_text()
    run_small(tmp_path, steps=12, lr=5e-4)
    assert "resuming at step 12 of 12" in caplog.text and (tmp_path / "train_log.tsv").read_text() == log_text
    final = torch.load(tmp_path / "encoder.pt", weights_only=True)["encoder"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_loss_history_survives_a_deleted_log(tmp_path):
    """Snakemake deletes a failed job's declared outputs, train_log.tsv among them: the history travels in the
    checkpoint, so the resumed run's log and plot cover every step."""
    run_small(tmp_path, steps=20)
    original = (tmp_path / "train_log.tsv").read_text()
    (tmp_path / "train_log.tsv").unlink()
    run_small(tmp_path, steps=20)  # resumes at its last step: outputs only
    assert (tmp_path / "train_log.tsv").read_text() == original
    assert len(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["history"]) == 20


def test_changed_data_starts_over_naming_what_changed(tmp_path, caplog):
    caplog.set_level("INFO", logger="paintbench.vit.train")
    data = {"illumination functions": "a1", "normalization": "b1", "crop settings": "c1", "crop content": "d1"}
    run_small(tmp_path, steps=10, data_fingerprint=data)
    run_small(tmp_path, steps=10, data_fingerprint=data)
    assert "resuming at step 10 of 10" in caplog.text
    for part in ("illumination functions", "normalization", "crop content"):
        caplog.clear()
        data = {**data, part: data[part] + "x"}
        run_small(tmp_path, steps=10, data_fingerprint=data)
        assert f"not resumed, settings differ (data: {part})" in caplog.text, caplog.text
        assert [int(r[0]) for r in log_rows(tmp_path / "train_log.tsv")] == list(range(1, 11))


def test_load_encoder_from_every_file_kind(tmp_path):
    run_small(tmp_path, steps=3)
    images = torch.from_numpy(blob_images(2, 32, seed=3))
    from_checkpoint, config = load_encoder(tmp_path / "checkpoint.pt")
    from_encoder, config2 = load_encoder(tmp_path / "encoder.pt")
    assert config == config2 == TINY and not from_encoder.training
    plain = tmp_path / "plain.pth"
    torch.save(from_encoder.state_dict(), plain)
    from_plain, _ = load_encoder(plain, encoder_config=TINY)
    with torch.no_grad():
        reference = from_checkpoint(images)
        assert torch.equal(from_encoder(images), reference) and torch.equal(from_plain(images), reference)

    with pytest.raises(ValueError, match="plain.pth.*needs an encoder_config"):
        load_encoder(plain)
    wrong_depth = TINY | dict(kwargs=dict(depth=3, embed_dim=64, num_heads=2))
    with pytest.raises(ValueError, match="plain.pth.*missing"):
        load_encoder(plain, encoder_config=wrong_depth)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_encoder(garbage, encoder_config=TINY)
    three = tmp_path / "rgb.pth"
    torch.save(build_encoder(**(TINY | dict(in_chans=3))).state_dict(), three)
    with pytest.raises(ValueError, match="rgb.pth.*3 channels"):
        load_encoder(three, encoder_config=TINY)
    with pytest.raises(ValueError, match="rgb.pth.*in_chans=3"):
        load_encoder(three, encoder_config=TINY | dict(in_chans=3))
