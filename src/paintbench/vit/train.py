"""Self-supervised pretraining (MAE, DINO or SimCLR: paintbench.vit.methods) by optimizer steps, on one or N
processes, resumable bit-for-bit from `out_dir/resume.pt`.

Every source of randomness is either derived from (seed, step/epoch) or saved in the checkpoint: batch indices
come from a per-epoch permutation seeded by (seed, epoch), so resuming needs no DataLoader state; each sample's
masking or views come from a per-sample seed drawn from (seed, step); dropout-style randomness uses the global
torch RNG, whose state travels in the checkpoint.

Multi-process (torchrun; `vit.gpus`): every process builds the same step's global batch of indices and loads its
own slice of it, the objective sees per-sample seeds of its slice, and DistributedDataParallel averages the
gradients: with losses that are means over samples this is the single-process step on the global batch (SimCLR
gathers its negatives, DINO averages its centre over processes). The checkpoint does not depend on the number
of processes, so a run resumes under another N. Process 0 writes every file.

Outputs in out_dir: checkpoint.pt (the finished run's whole state), encoder.pt (encoder state_dict +
encoder_config), train_log.tsv (step, loss, lr, seconds, replicate_map; one row per step, replicate_map only at
tracked steps) and train_loss.png. While training, the state is saved every `checkpoint_every` steps to resume.pt,
which no rule declares: Snakemake deletes a job's outputs before it runs and after it fails, and this file is what
a rerun continues from; it is removed once checkpoint.pt is written. All but the log are written atomically.

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
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from paintbench.atomic import atomic_path
from paintbench.vit.core import autocast, mean_over_processes, pick_device, step_seeds, world
from paintbench.vit.methods import build_objective, method_settings
from paintbench.vit.train_log import LossLog, plot_log
from paintbench.vit.model import load_encoder, load_mae

__all__ = ["pretrain", "load_encoder", "load_mae"]  # the loaders live in model.py, beside build_mae

log = logging.getLogger(__name__)

CHECKPOINT, ENCODER, LOG, PLOT = "checkpoint.pt", "encoder.pt", "train_log.tsv", "train_loss.png"
# The state of an unfinished run: never a declared output, since Snakemake deletes a job's outputs before it runs
# and after it fails, which would throw away what a rerun resumes from.
RESUME = "resume.pt"
# train_config entries that shape the trajectory: a checkpoint made with other values is not resumed.
TRAJECTORY_KEYS = ("method", "settings", "views", "pooling", "steps", "batch_size", "lr", "weight_decay",
                   "warmup_steps", "seed", "n_crops", "crop_shape", "data")
STREAM_INIT, STREAM_MASK, STREAM_EPOCH, STREAM_LOADER = range(4)
Tracker = Callable[[torch.nn.Module], float]


def derive_seed(seed: int, *path: int) -> int:
    """An independent 63-bit seed for each (seed, stream, ...) so the random streams never overlap."""
    words = np.random.SeedSequence([seed, *path]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1])) & (2**63 - 1)


class StepBatchSampler(Sampler[list[int]]):
    """Batches for steps [start, stop): sample positions step*B .. step*B+B-1 of an endless stream
    of per-epoch permutations, each seeded by (seed, epoch). The loader just cycles through epochs.
    Process `rank` of `processes` gets its slice of every global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0,
                 processes: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.start, self.stop = n, batch_size, seed, start, stop
        self.rank, self.processes = rank, processes

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
            share = self.batch_size // self.processes
            yield batch[self.rank * share:(self.rank + 1) * share]


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

    objective: torch.nn.Module  # the method's module (paintbench.vit.methods), unwrapped
    runner: torch.nn.Module  # what the step calls: the objective, or the objective wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    encoder_config: dict[str, Any]
    train_config: dict[str, Any]

    def checkpoint(self, step: int, seconds: float, history: list[str]) -> dict[str, Any]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {"model": self.objective.state_dict(), "encoder": self.objective.encoder.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": step,
                "encoder_config": self.encoder_config, "train_config": self.train_config, "seconds": seconds,
                "history": history, "rng": {"torch": torch.get_rng_state(), "cuda": cuda}}

    def save(self, path: Path, step: int, seconds: float, history: list[str]) -> None:
        if world()[0] == 0:
            with atomic_path(path) as tmp:
                torch.save(self.checkpoint(step, seconds, history), tmp)

    def restore(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def resumable(checkpoint: dict[str, Any], encoder_config: dict, train_config: dict) -> list[str]:
    """What differs between a checkpoint and this run: setting names, and for the data the parts that changed
    ('illumination functions', 'crop content', ...). Empty: safe to resume."""
    saved = checkpoint["train_config"]
    differ = [key for key in TRAJECTORY_KEYS if key != "data" and saved.get(key) != train_config[key]]
    data, old = train_config.get("data") or {}, saved.get("data") or {}
    differ += [f"data: {part}" for part in sorted(set(data) | set(old)) if data.get(part) != old.get(part)]
    return differ + (["encoder_config"] if checkpoint["encoder_config"] != encoder_config else [])


def latest_state(paths: list[Path]) -> tuple[dict[str, Any] | None, Path | None]:
    """The saved training state with the most steps among `paths` (a finished checkpoint, a resume file), and its
    file; (None, None) when there is none."""
    states = [(torch.load(path, map_location="cpu", weights_only=True), path) for path in paths if path.exists()]
    return max(states, key=lambda found: int(found[0]["step"]), default=(None, None))


def init_processes(device: str) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPU) and take this process's
    GPU. Returns (rank, processes, device)."""
    import os

    import torch.distributed as dist

    processes = int(os.environ.get("WORLD_SIZE", "1"))
    dev = pick_device(device)
    if processes == 1:
        return 0, 1, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), processes, dev


def build_state(encoder_config: dict[str, Any], dev: torch.device, train_config: dict[str, Any],
                compile_model: bool | None) -> TrainState:
    """Objective (seeded init), AdamW (fused on CUDA), warmup-cosine LambdaLR; compiled and DDP-wrapped as asked."""
    torch.manual_seed(derive_seed(train_config["seed"], STREAM_INIT))
    objective = build_objective(train_config["method"], encoder_config, train_config["settings"],
                                train_config["views"], train_config["pooling"], train_config["steps"]).to(dev)
    shape = train_config["crop_shape"]
    if len(shape) != 3 or shape[0] != encoder_config.get("in_chans", 5):
        raise ValueError(f"crops are {shape}, expected ({encoder_config.get('in_chans', 5)}, S, S)")
    optimizer = torch.optim.AdamW(param_groups(objective, train_config["weight_decay"]), lr=train_config["lr"],
                                  betas=(0.9, 0.95), fused=True if dev.type == "cuda" else None)
    warmup, steps = train_config["warmup_steps"], train_config["steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, steps))
    runner = objective
    if compile_model or (compile_model is None and dev.type == "cuda"):
        objective.compile_networks()  # in place: the state_dict keys stay those of the plain modules
    if world()[1] > 1:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (DINO's centre) are updated identically on every process: no broadcast needed.
        runner = DistributedDataParallel(runner, device_ids=[dev.index] if dev.type == "cuda" else None,
                                         broadcast_buffers=False)
    return TrainState(objective, runner, optimizer, scheduler, dev, encoder_config, train_config)


def train_step(state: TrainState, batch: torch.Tensor, step: int) -> torch.Tensor:
    """One optimizer step (1-based `step`) on this process's slice of the global batch; returns the loss averaged
    over processes (what one process on the whole batch would log)."""
    config, dev = state.train_config, state.device
    rank, processes = world()
    share = config["batch_size"] // processes
    seeds = step_seeds(config["seed"], step, config["batch_size"])[rank * share:(rank + 1) * share]
    crops = torch.as_tensor(batch).to(dev, non_blocking=True).float()
    with autocast(dev, config["precision"]):
        loss = state.runner(crops, seeds, step)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    objective = state.objective
    if hasattr(objective, "adjust_gradients"):
        objective.adjust_gradients(step)
    if objective.clip_grad:
        torch.nn.utils.clip_grad_norm_(objective.parameters(), objective.clip_grad)
    state.optimizer.step()
    state.scheduler.step()
    objective.after_step(step)
    return mean_over_processes(loss.detach())


def pretrain(crops: Dataset, encoder_config: dict[str, Any], out_dir: Path, *, steps: int, batch_size: int,
             lr: float, warmup_steps: int, checkpoint_every: int, seed: int, method: str = "mae",
             settings: dict[str, Any] | None = None, views: dict[str, Any] | None = None, pooling: str = "mean",
             weight_decay: float = 0.05, device: str = "auto", num_workers: int = 0, precision: str = "auto",
             resume: bool = True, compile_model: bool | None = None, log_every: int = 10, progress: bool = True,
             data_fingerprint: dict[str, str] | None = None, track: Tracker | None = None,
             track_every: int = 0) -> Path:
    """Pretrain `method` for `steps` optimizer steps on `crops` (items: (C, S, S) float tensors); returns encoder.pt.

    `lr` is the absolute peak learning rate (no batch-size scaling); `batch_size` the global batch (split over
    processes under torchrun). `compile_model` None = on for CUDA only. `track(encoder) -> replicate mAP` runs
    every `track_every` steps and at the end (process 0), for the log only. An existing out_dir/checkpoint.pt
    made with the same settings is continued (unless resume=False); one made with others is started over.
    """
    if steps < 0 or batch_size < 1 or checkpoint_every < 1 or log_every < 1 or warmup_steps < 0 or track_every < 0:
        raise ValueError("need steps >= 0, batch_size >= 1, checkpoint_every >= 1, log_every >= 1, warmup_steps >= 0, "
                         "track_every >= 0")
    if len(crops) == 0:
        raise ValueError("pretrain: the crop dataset is empty")
    rank, processes, dev = init_processes(device)
    if batch_size % processes:
        raise ValueError(f"config key 'vit.batch_size': {batch_size} does not split over {processes} processes "
                         "(vit.gpus)")
    out_dir = Path(out_dir)
    ckpt_path, resume_path = out_dir / CHECKPOINT, out_dir / RESUME
    train_config = dict(method=method, settings=method_settings(method, settings), views=dict(views or {}),
                        pooling=pooling, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, seed=seed, n_crops=len(crops),
                        crop_shape=list(torch.as_tensor(crops[0]).shape), checkpoint_every=checkpoint_every,
                        num_workers=num_workers, device=str(dev), processes=processes, precision=precision,
                        log_every=log_every, track_every=track_every, data=data_fingerprint or {})
    state = build_state(encoder_config, dev, train_config, compile_model)
    start, elapsed, history = 0, 0.0, None
    saved, found = latest_state([ckpt_path, resume_path]) if resume else (None, None)
    if saved is not None:
        differ = resumable(saved, encoder_config, train_config)
        if differ:
            log.warning("%s: not resumed, settings differ (%s); starting over", found, ", ".join(differ))
        else:
            state.restore(saved)
            start, elapsed, history = int(saved["step"]), float(saved["seconds"]), saved.get("history")
            log.info("%s: resuming at step %d of %d", found, start, steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    loss_log = LossLog(out_dir / LOG, start, history)
    # Batches depend on (seed, step) only; the loader's own generator merely seeds worker processes.
    sampler = StepBatchSampler(len(crops), batch_size, seed, start, steps, rank, processes)
    loader = DataLoader(crops, batch_sampler=sampler, num_workers=num_workers, pin_memory=dev.type == "cuda",
                        worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(derive_seed(seed, STREAM_LOADER, start, rank)))
    t0 = time.perf_counter()
    state.runner.train()
    try:
        with tqdm(total=steps, initial=start, desc=f"{method} pretraining", unit="step", mininterval=2,
                  disable=not progress or rank != 0) as bar:
            for step, batch in enumerate(loader, start=start + 1):
                step_lr = state.optimizer.param_groups[0]["lr"]
                loss = train_step(state, batch, step)
                tracked = None
                if track is not None and rank == 0 and track_every and (step % track_every == 0 or step == steps):
                    tracked = track(state.objective.encoder)
                    state.runner.train()
                loss_log.add(step, loss, step_lr, elapsed + time.perf_counter() - t0, tracked)
                if step % log_every == 0 or step % checkpoint_every == 0 or step == steps:
                    losses = loss_log.flush()  # before a checkpoint: the log reaches its step first
                    bar.update(len(losses))
                    bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if step % checkpoint_every == 0 or step == steps:
                    state.save(ckpt_path if step == steps else resume_path, step, elapsed + time.perf_counter() - t0,
                               loss_log.rows)
    finally:
        loss_log.close()
    if start == steps:  # nothing trained in this call: resumed at the end, or steps == 0
        log.info("%s: at step %d of %d, writing outputs only", ckpt_path, start, steps)
        if steps == 0 or not ckpt_path.exists():
            state.save(ckpt_path, start, elapsed, loss_log.rows)
    encoder_path = out_dir / ENCODER
    if rank == 0:
        resume_path.unlink(missing_ok=True)  # checkpoint.pt now holds the finished state
        with atomic_path(encoder_path) as tmp:
            torch.save({"encoder": state.objective.encoder.state_dict(), "encoder_config": encoder_config,
                        "method": method}, tmp)
        plot_log(out_dir / LOG, out_dir / PLOT, method)
    return encoder_path
