"""MAE pretraining by optimizer steps, resumable bit-for-bit from `out_dir/checkpoint.pt`.

Every source of randomness is either derived from (seed, step/epoch) or saved in the checkpoint:
batch indices come from a per-epoch permutation seeded by (seed, epoch), so resuming needs no
DataLoader state; masking noise comes from a dedicated CPU generator; dropout-style randomness
uses the global torch RNG. The last two generators' states travel in the checkpoint.

Outputs in out_dir: checkpoint.pt (every `checkpoint_every` steps and at the end), encoder.pt
(encoder state_dict + encoder_config, at the end), train_log.tsv (step, loss, lr, seconds; one
row per step) and train_loss.png. All but the log are written atomically; the log is appended to.

A checkpoint resumes only when it was made with the same settings and the same data: `data_fingerprint`
(paintbench.vit.crops.fingerprint: the illumination functions, normalization, crop settings and crop content)
is stored in it and compared, and a mismatch starts over with a warning naming what changed. The loss history
up to a checkpoint's step travels in the checkpoint, so a resume rewrites train_log.tsv whole even when a failed
job's log was deleted (Snakemake removes a failed job's declared outputs) and the loss plot shows the whole run.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from paintbench.atomic import atomic_path
from paintbench.vit import autocast, pick_device
from paintbench.vit.model import (DECODER_DEFAULTS, MaskedAutoencoder, build_mae_from_decoder_config,
                                  load_encoder, load_mae, resize_to)

__all__ = ["pretrain", "load_encoder", "load_mae"]  # the loaders live in model.py, beside build_mae

log = logging.getLogger(__name__)

CHECKPOINT, ENCODER, LOG, PLOT = "checkpoint.pt", "encoder.pt", "train_log.tsv", "train_loss.png"
LOG_HEADER = "step\tloss\tlr\tseconds\n"
# train_config entries that shape the trajectory: a checkpoint made with other values is not resumed.
TRAJECTORY_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "mask_ratio", "seed", "decoder",
                   "n_crops", "crop_shape", "data")
STREAM_INIT, STREAM_MASK, STREAM_EPOCH, STREAM_LOADER = range(4)


def derive_seed(seed: int, *path: int) -> int:
    """An independent 63-bit seed for each (seed, stream, ...) so the random streams never overlap."""
    words = np.random.SeedSequence([seed, *path]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1])) & (2**63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps [start, stop): sample positions step*B .. step*B+B-1 of an endless stream
    of per-epoch permutations, each seeded by (seed, epoch). The loader just cycles through epochs."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        cached: tuple[int, torch.Tensor] | None = None  # one epoch's permutation: steps move forward
        for step in range(self.start, self.stop):
            batch, position = [], step * self.batch_size
            while len(batch) < self.batch_size:
                epoch, offset = divmod(position, self.n)
                if cached is None or cached[0] != epoch:
                    gen = torch.Generator().manual_seed(derive_seed(self.seed, STREAM_EPOCH, epoch))
                    cached = (epoch, torch.randperm(self.n, generator=gen))
                take = min(self.batch_size - len(batch), self.n - offset)
                batch += cached[1][offset:offset + take].tolist()
                position += take
            yield batch


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy/random seeded from torch's per-worker seed (for datasets that augment)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR factor for 0-based `step`: linear warmup to 1 over warmup_steps, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms, tokens and position embeddings (as in MAE/ViT training)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.endswith(("token", "pos_embed"))
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainState:
    """Everything a checkpoint must capture for a resume to continue bit-for-bit."""

    model: MaskedAutoencoder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mask_gen: torch.Generator  # CPU generator of the masking noise
    device: torch.device
    encoder_config: dict[str, Any]
    train_config: dict[str, Any]

    def checkpoint(self, step: int, seconds: float, history: list[str]) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        return {"encoder": self.model.encoder.state_dict(), "decoder": self.model.decoder.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": step,
                "encoder_config": self.encoder_config, "train_config": self.train_config, "seconds": seconds,
                "history": history,
                "rng": {"torch": torch.get_rng_state(), "mask": self.mask_gen.get_state(), "cuda": cuda}}

    def save(self, path: Path, step: int, seconds: float, history: list[str]) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.checkpoint(step, seconds, history), tmp)

    def restore(self, state: dict[str, Any]) -> None:
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.decoder.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.mask_gen.set_state(state["rng"]["mask"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def resumable(checkpoint: dict[str, Any], encoder_config: dict, train_config: dict) -> list[str]:
    """What differs between a checkpoint and this run: setting names, and for the data the parts that changed
    ('illumination functions', 'crop content', ...). Empty: safe to resume."""
    saved = checkpoint["train_config"]
    differ = [key for key in TRAJECTORY_KEYS if key != "data" and saved.get(key) != train_config[key]]
    data, old = train_config.get("data") or {}, saved.get("data") or {}
    differ += [f"data: {part}" for part in sorted(set(data) | set(old)) if data.get(part) != old.get(part)]
    return differ + (["encoder_config"] if checkpoint["encoder_config"] != encoder_config else [])


class LossLog:
    """train_log.tsv, one row per step. Losses stay on the device until `flush` (one sync per flush).

    A fresh run starts the file anew; a resumed one starts from the checkpoint's history (older checkpoints:
    the file's well-formed rows up to the checkpoint's step), so every step appears once whatever happened to
    the file. `rows` holds every row written, for the next checkpoint.
    """

    def __init__(self, path: Path, start: int, history: list[str] | None = None) -> None:
        rows = history if history is not None else (
            path.read_text().splitlines(keepends=True)[1:] if start and path.exists() else [])
        kept = [r for r in rows if r.endswith("\n") and len(r.split("\t")) == 4 and r.split("\t")[0].isdigit()
                and int(r.split("\t")[0]) <= start]
        if len(kept) < start:
            log.warning("%s: %d of %d rows before the checkpoint are missing", path, start - len(kept), start)
        with atomic_path(path) as tmp:
            tmp.write_text(LOG_HEADER + "".join(kept))
        self.path, self.pending, self.rows = path, [], kept
        self.file = path.open("a")

    def add(self, step: int, loss: torch.Tensor, lr: float, seconds: float) -> None:
        self.pending.append((step, loss.detach(), lr, seconds))

    def flush(self) -> list[float]:
        """Write the pending rows; returns their losses. A non-finite loss stops training here."""
        if not self.pending:
            return []
        losses = torch.stack([row[1] for row in self.pending]).float().tolist()
        for (step, _, lr, seconds), loss in zip(self.pending, losses):
            if not math.isfinite(loss):
                raise FloatingPointError(f"{self.path}: loss is {loss} at step {step}")
            self.rows.append(f"{step}\t{loss!r}\t{lr!r}\t{seconds:.3f}\n")
            self.file.write(self.rows[-1])
        self.file.flush()
        self.pending.clear()
        return losses

    def close(self) -> None:
        self.file.close()


def plot_log(log_path: Path, plot_path: Path) -> None:
    """Loss (with a running mean) and learning rate against step; Agg canvas, no pyplot state."""
    from matplotlib.figure import Figure

    rows = np.loadtxt(log_path, delimiter="\t", skiprows=1, ndmin=2)
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    if len(rows):
        steps, loss = rows[:, 0], rows[:, 1]
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(steps, loss, lw=0.5, alpha=0.4, color="C0", label="per step")
        ax_loss.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
        ax_lr.plot(steps, rows[:, 2], color="C1")
        ax_loss.legend()
    ax_loss.set_ylabel("masked-patch MSE")
    ax_loss.set_title(f"MAE pretraining: {log_path.parent.name}")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def build_state(encoder_config: dict[str, Any], dev: torch.device, train_config: dict[str, Any],
                compile_model: bool | None) -> TrainState:
    """Model (seeded init), AdamW (fused on CUDA), warmup-cosine LambdaLR and the masking generator."""
    seed, decoder = train_config["seed"], train_config["decoder"]
    torch.manual_seed(derive_seed(seed, STREAM_INIT))
    model = build_mae_from_decoder_config(encoder_config, decoder).to(dev)
    shape = train_config["crop_shape"]
    if len(shape) != 3 or shape[0] != model.in_chans:
        raise ValueError(f"crops are {shape}, expected ({model.in_chans}, S, S)")
    optimizer = torch.optim.AdamW(param_groups(model, train_config["weight_decay"]), lr=train_config["lr"],
                                  betas=(0.9, 0.95), fused=True if dev.type == "cuda" else None)
    warmup, steps = train_config["warmup_steps"], train_config["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps))
    if compile_model and dev.type != "cuda":
        log.warning("pretrain: torch.compile is only used on CUDA; running eagerly on %s", dev)
    elif compile_model or (compile_model is None and dev.type == "cuda"):
        model.compile()  # in place: state_dict keys stay those of the plain modules
    mask_gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_MASK))
    return TrainState(model, optimizer, scheduler, mask_gen, dev, encoder_config, train_config)


def train_step(state: TrainState, batch: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """One optimizer step on a batch of crops, resized on the device to the model's img_size."""
    model, dev = state.model, state.device
    imgs = resize_to(torch.as_tensor(batch).to(dev, non_blocking=True).float(), model.grid[0] * model.patch_size)
    noise = torch.rand(imgs.shape[0], model.num_patches, generator=state.mask_gen)
    with autocast(dev):
        loss, _, _ = model(imgs, mask_ratio, noise=noise.to(dev, non_blocking=True))
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    state.scheduler.step()
    return loss.detach()


def pretrain(crops: Dataset, encoder_config: dict[str, Any], out_dir: Path, *, steps: int, batch_size: int,
             lr: float, warmup_steps: int, checkpoint_every: int, seed: int, weight_decay: float = 0.05,
             mask_ratio: float = 0.75, device: str = "auto", num_workers: int = 0,
             decoder: dict[str, Any] | None = None, resume: bool = True, compile_model: bool | None = None,
             log_every: int = 10, progress: bool = True, data_fingerprint: dict[str, str] | None = None) -> Path:
    """Pretrain an MAE for `steps` optimizer steps on `crops` (items: (C, S, S) float tensors); returns encoder.pt.

    `lr` is the absolute peak learning rate (no batch-size scaling). `compile_model` None = on for CUDA only.
    An existing out_dir/checkpoint.pt made with the same settings is continued (unless resume=False);
    one made with other settings is overwritten by a fresh run.
    """
    if steps < 0 or batch_size < 1 or checkpoint_every < 1 or log_every < 1 or warmup_steps < 0:
        raise ValueError("need steps >= 0, batch_size >= 1, checkpoint_every >= 1, log_every >= 1, warmup_steps >= 0")
    if len(crops) == 0:
        raise ValueError("pretrain: the crop dataset is empty")
    out_dir, dev = Path(out_dir), pick_device(device)
    ckpt_path = out_dir / CHECKPOINT
    train_config = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, mask_ratio=mask_ratio, seed=seed,
                        decoder={**DECODER_DEFAULTS, **(decoder or {})},
                        n_crops=len(crops), crop_shape=list(torch.as_tensor(crops[0]).shape),
                        checkpoint_every=checkpoint_every, num_workers=num_workers, device=str(dev),
                        log_every=log_every, data=data_fingerprint or {})
    state = build_state(encoder_config, dev, train_config, compile_model)
    start, elapsed, history = 0, 0.0, None
    if resume and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        differ = resumable(saved, encoder_config, train_config)
        if differ:
            log.warning("%s: not resumed, settings differ (%s); starting over", ckpt_path, ", ".join(differ))
        else:
            state.restore(saved)
            start, elapsed, history = int(saved["step"]), float(saved["seconds"]), saved.get("history")
            log.info("%s: resuming at step %d of %d", ckpt_path, start, steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    loss_log = LossLog(out_dir / LOG, start, history)
    # Batches depend on (seed, step) only; the loader's own generator merely seeds worker processes.
    loader = DataLoader(crops, batch_sampler=StepBatchSampler(len(crops), batch_size, seed, start, steps),
                        num_workers=num_workers, pin_memory=dev.type == "cuda", worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(derive_seed(seed, STREAM_LOADER, start)))
    t0 = time.perf_counter()
    state.model.train()
    try:
        with tqdm(total=steps, initial=start, desc="MAE pretraining", unit="step", mininterval=2,
                  disable=not progress) as bar:
            for step, batch in enumerate(loader, start=start + 1):
                step_lr = state.optimizer.param_groups[0]["lr"]
                loss_log.add(step, train_step(state, batch, mask_ratio), step_lr, elapsed + time.perf_counter() - t0)
                if step % log_every == 0 or step % checkpoint_every == 0 or step == steps:
                    losses = loss_log.flush()  # before a checkpoint: the log reaches its step first
                    bar.update(len(losses))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if step % checkpoint_every == 0 or step == steps:
                    state.save(ckpt_path, step, elapsed + time.perf_counter() - t0, loss_log.rows)
    finally:
        loss_log.close()
    if start == steps:  # nothing trained in this call: resumed at the end, or steps == 0
        log.info("%s: at step %d of %d, writing outputs only", ckpt_path, start, steps)
        if steps == 0:
            state.save(ckpt_path, 0, elapsed, loss_log.rows)
    encoder_path = out_dir / ENCODER
    with atomic_path(encoder_path) as tmp:
        torch.save({"encoder": state.model.encoder.state_dict(), "encoder_config": encoder_config}, tmp)
    plot_log(out_dir / LOG, out_dir / PLOT)
    return encoder_path
