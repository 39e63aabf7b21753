"""MAE pretraining by optimizer steps, resumable bit-for-bit from `out_dir/checkpoint.pt`.

Every source of randomness is either derived from (seed, step/epoch) or saved in the checkpoint:
batch indices come from a per-epoch permutation seeded by (seed, epoch), so resuming needs no
DataLoader state; masking noise comes from a dedicated CPU generator; dropout-style randomness
uses the global torch RNG. The last two generators' states travel in the checkpoint.

Outputs in out_dir: checkpoint.pt (every `checkpoint_every` steps and at the end), encoder.pt
(encoder state_dict + encoder_config, at the end), train_log.tsv (step, loss, lr, seconds; one
row per step) and train_loss.png. All but the log are written atomically; the log is appended to
and cut back to the checkpoint's step on resume.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from paintbench.atomic import atomic_path
from paintbench.vit import IN_CHANS, autocast, build_encoder, pick_device
from paintbench.vit.model import DECODER_DEFAULTS, MaskedAutoencoder, build_mae_from_decoder_config, resize_to

log = logging.getLogger(__name__)

CHECKPOINT, ENCODER, LOG, PLOT = "checkpoint.pt", "encoder.pt", "train_log.tsv", "train_loss.png"
LOG_HEADER = "step\tloss\tlr\tseconds\n"
# train_config entries that shape the trajectory: a checkpoint made with other values is not resumed.
TRAJECTORY_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "mask_ratio", "seed", "decoder",
                   "n_crops", "crop_shape")
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


def rng_state(mask_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "mask": mask_gen.get_state(), "cuda": cuda}


def restore_rng(state: dict[str, Any], mask_gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    mask_gen.set_state(state["mask"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def resumable(checkpoint: dict[str, Any], encoder_config: dict, train_config: dict) -> list[str]:
    """Names of settings that differ between a checkpoint and this run (empty: safe to resume)."""
    differ = [key for key in TRAJECTORY_KEYS if checkpoint["train_config"].get(key) != train_config[key]]
    return differ + (["encoder_config"] if checkpoint["encoder_config"] != encoder_config else [])


def cut_log(path: Path, step: int) -> None:
    """Keep the header and the well-formed rows up to `step` (a killed run may leave later or torn rows)."""
    rows = path.read_text().splitlines(keepends=True)[1:] if path.exists() else []
    kept = [r for r in rows if r.endswith("\n") and len(r.split("\t")) == 4 and int(r.split("\t")[0]) <= step]
    if len(kept) < step:
        log.warning("%s: %d of %d rows before the checkpoint are missing", path, step - len(kept), step)
    with atomic_path(path) as tmp:
        tmp.write_text(LOG_HEADER + "".join(kept))


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


def pretrain(crops: Dataset, encoder_config: dict[str, Any], out_dir: Path, *, steps: int, batch_size: int,
             lr: float, warmup_steps: int, checkpoint_every: int, seed: int, weight_decay: float = 0.05,
             mask_ratio: float = 0.75, device: str = "auto", num_workers: int = 0,
             decoder: dict[str, Any] | None = None, resume: bool = True, compile_model: bool | None = None,
             log_every: int = 10, progress: bool = True) -> Path:
    """Pretrain an MAE for `steps` optimizer steps on `crops` (items: (C, S, S) float tensors); returns encoder.pt.

    `lr` is the absolute peak learning rate (no batch-size scaling). `compile_model` None = on for CUDA only.
    """
    if steps < 0 or batch_size < 1 or checkpoint_every < 1 or log_every < 1 or warmup_steps < 0:
        raise ValueError("need steps >= 0, batch_size >= 1, checkpoint_every >= 1, log_every >= 1, warmup_steps >= 0")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    n = len(crops)
    if n == 0:
        raise ValueError("pretrain: the crop dataset is empty")
    crop_shape = list(torch.as_tensor(crops[0]).shape)
    decoder = {**DECODER_DEFAULTS, "norm_pix_loss": True, **(decoder or {})}
    train_config = dict(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        warmup_steps=warmup_steps, mask_ratio=mask_ratio, seed=seed, decoder=decoder, n_crops=n,
                        crop_shape=crop_shape, checkpoint_every=checkpoint_every, num_workers=num_workers,
                        device=str(dev), log_every=log_every)
    torch.manual_seed(derive_seed(seed, STREAM_INIT))
    model = build_mae_from_decoder_config(encoder_config, decoder).to(dev)
    if crop_shape[0] != model.in_chans or len(crop_shape) != 3:
        raise ValueError(f"crops are {crop_shape}, expected ({model.in_chans}, S, S)")
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95),
                                  fused=True if dev.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, steps))
    mask_gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_MASK))
    start, elapsed = 0, 0.0
    ckpt_path, log_path = out_dir / CHECKPOINT, out_dir / LOG
    if resume and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        differ = resumable(state, encoder_config, train_config)
        if differ:
            log.warning("%s: not resumed, settings differ (%s); starting over", ckpt_path, ", ".join(differ))
        else:
            model.encoder.load_state_dict(state["encoder"])
            model.decoder.load_state_dict(state["decoder"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            restore_rng(state["rng"], mask_gen, dev)
            start, elapsed = int(state["step"]), float(state["seconds"])
            log.info("%s: resuming at step %d of %d", ckpt_path, start, steps)
    if start:
        cut_log(log_path, start)
    else:
        with atomic_path(log_path) as tmp:
            tmp.write_text(LOG_HEADER)

    def save_checkpoint(step: int, seconds: float) -> None:
        state = {"encoder": model.encoder.state_dict(), "decoder": model.decoder.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                 "encoder_config": encoder_config, "train_config": train_config,
                 "rng": rng_state(mask_gen, dev), "seconds": seconds}
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)

    if compile_model and dev.type != "cuda":
        log.warning("pretrain: torch.compile is only used on CUDA; running eagerly on %s", dev)
    elif compile_model or (compile_model is None and dev.type == "cuda"):
        model.compile()  # in place: state_dict keys stay those of the plain modules
    loader = DataLoader(crops, batch_sampler=StepBatchSampler(n, batch_size, seed, start, steps),
                        num_workers=num_workers, pin_memory=dev.type == "cuda", worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(derive_seed(seed, STREAM_LOADER, start)),
                        persistent_workers=False)
    pending: list[tuple[int, torch.Tensor, float, float]] = []
    t0 = time.perf_counter()
    model.train()
    with log_path.open("a") as log_file, tqdm(total=steps, initial=start, desc="MAE pretraining", unit="step",
                                              mininterval=2, disable=not progress) as bar:
        def flush() -> None:
            """One device sync per flush: losses stay on the device between flushes."""
            if not pending:
                return
            losses = torch.stack([p[1] for p in pending]).float().tolist()
            for (step, _, step_lr, seconds), loss in zip(pending, losses):
                if not math.isfinite(loss):
                    raise FloatingPointError(f"pretrain: loss is {loss} at step {step} ({out_dir})")
                log_file.write(f"{step}\t{loss!r}\t{step_lr!r}\t{seconds:.3f}\n")
            log_file.flush()
            bar.update(len(pending))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            pending.clear()

        step = start
        for step, batch in enumerate(loader, start=start + 1):
            imgs = resize_to(torch.as_tensor(batch).to(dev, non_blocking=True).float(), model.grid[0] * model.patch_size)
            noise = torch.rand(imgs.shape[0], model.num_patches, generator=mask_gen)
            step_lr = optimizer.param_groups[0]["lr"]
            with autocast(dev):
                loss, _, _ = model(imgs, mask_ratio, noise=noise.to(dev, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            pending.append((step, loss.detach(), step_lr, elapsed + time.perf_counter() - t0))
            if step % log_every == 0:
                flush()
            if step % checkpoint_every == 0 or step == steps:
                flush()  # the log reaches the checkpoint's step before the checkpoint exists
                save_checkpoint(step, elapsed + time.perf_counter() - t0)
        flush()
    if start == steps:  # nothing trained in this call: resumed at the end, or steps == 0
        log.info("%s: at step %d of %d, writing outputs only", ckpt_path, start, steps)
        if steps == 0:
            save_checkpoint(0, elapsed)
    encoder_path = out_dir / ENCODER
    with atomic_path(encoder_path) as tmp:
        torch.save({"encoder": model.encoder.state_dict(), "encoder_config": encoder_config}, tmp)
    plot_log(log_path, out_dir / PLOT)
    return encoder_path


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept state_dicts saved from wrappers: torch.compile ('_orig_mod.'), DDP ('module.'), a whole MAE ('encoder.')."""
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_encoder(path: str | Path, device: str | torch.device = "cpu",
                 encoder_config: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Encoder (eval mode) + its config from our checkpoint.pt or encoder.pt, or from a plain timm state_dict
    file (then `encoder_config` is required). Mismatches are errors naming the file."""
    path = Path(path)
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state_dict or paintbench checkpoint ({type(obj).__name__})")
    if "encoder" in obj and "encoder_config" in obj:
        state, config = obj["encoder"], obj["encoder_config"]
        if encoder_config is not None and dict(encoder_config) != config:
            raise ValueError(f"{path}: stored encoder_config {config} differs from the given {encoder_config}")
    else:
        if encoder_config is None:
            raise ValueError(f"{path}: a plain state_dict needs an encoder_config (model, img_size, patch_size, ...)")
        state, config = _strip_prefixes(obj), dict(encoder_config)
    if config.get("in_chans", IN_CHANS) != IN_CHANS:
        raise ValueError(f"{path}: encoder_config has in_chans={config['in_chans']}, Cell Painting needs {IN_CHANS}")
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.shape[1] != IN_CHANS:
        raise ValueError(f"{path}: patch embedding takes {proj.shape[1]} channels, Cell Painting needs {IN_CHANS}")
    encoder = build_encoder(**config)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit {config}: {error}") from error
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match {config['model']}: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    return encoder.to(device).eval(), config


def load_mae(path: str | Path, device: str | torch.device = "cpu") -> MaskedAutoencoder:
    """The whole MAE (encoder + decoder) from a checkpoint.pt, e.g. to look at reconstructions."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = build_mae_from_decoder_config(state["encoder_config"], state["train_config"]["decoder"])
    model.encoder.load_state_dict(state["encoder"])
    model.decoder.load_state_dict(state["decoder"])
    return model.to(device).eval()
