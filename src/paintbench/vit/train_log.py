"""train_log.tsv, the loss of every pretraining step, and its plot train_loss.png (paintbench.vit.train writes both)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from paintbench.atomic import atomic_path
from paintbench.registry import LOSS_NAMES
from paintbench.vit.core import world

log = logging.getLogger("paintbench.vit.train")

LOG_COLUMNS = ("step", "loss", "lr", "seconds", "replicate_map")
LOG_HEADER = "\t".join(LOG_COLUMNS) + "\n"


def _log_row(row: str, start: int) -> bool:
    fields = row.split("\t")
    return row.endswith("\n") and len(fields) == len(LOG_COLUMNS) and fields[0].isdigit() and int(fields[0]) <= start


class LossLog:
    """train_log.tsv, one row per step. Losses stay on the device until `flush` (one sync per flush).

    A fresh run starts the file anew; a resumed one starts from the checkpoint's history (older checkpoints:
    the file's well-formed rows up to the checkpoint's step), so every step appears once whatever happened to
    the file. `rows` holds every row written, for the next checkpoint. Only process 0 writes the file.
    """

    def __init__(self, path: Path, start: int, history: list[str] | None = None) -> None:
        rows = history if history is not None else (
            path.read_text().splitlines(keepends=True)[1:] if start and path.exists() else [])
        kept = [r for r in rows if _log_row(r, start)]
        if len(kept) < start:
            log.warning("%s: %d of %d rows before the checkpoint are missing", path, start - len(kept), start)
        self.path, self.pending, self.rows, self.file = path, [], kept, None
        if world()[0] == 0:
            with atomic_path(path) as tmp:
                tmp.write_text(LOG_HEADER + "".join(kept))
            self.file = path.open("a")

    def add(self, step: int, loss: torch.Tensor, lr: float, seconds: float, tracked: float | None = None) -> None:
        self.pending.append((step, loss.detach(), lr, seconds, tracked))

    def flush(self) -> list[float]:
        """Write the pending rows; returns their losses. A non-finite loss stops training here."""
        if not self.pending:
            return []
        losses = torch.stack([row[1] for row in self.pending]).float().tolist()
        for (step, _, lr, seconds, tracked), loss in zip(self.pending, losses):
            if not math.isfinite(loss):
                raise FloatingPointError(f"{self.path}: loss is {loss} at step {step}")
            self.rows.append(f"{step}\t{loss!r}\t{lr!r}\t{seconds:.3f}\t{'' if tracked is None else repr(tracked)}\n")
            if self.file:
                self.file.write(self.rows[-1])
        if self.file:
            self.file.flush()
        self.pending.clear()
        return losses

    def close(self) -> None:
        if self.file:
            self.file.close()


def plot_log(log_path: Path, plot_path: Path, method: str = "mae") -> None:
    """Loss (with a running mean), tracked replicate mAP when there is any, and learning rate against step."""
    import pandas as pd
    from matplotlib.figure import Figure

    rows = pd.read_csv(log_path, sep="\t")
    tracked = rows.dropna(subset=["replicate_map"])
    ratios = (3, 2, 1) if len(tracked) else (3, 1)
    fig = Figure(figsize=(7, 4 + len(ratios)), layout="constrained")
    axes = fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios)
    ax_loss, ax_lr = axes[0], axes[-1]
    if len(rows):
        steps, loss = rows["step"].to_numpy(), rows["loss"].to_numpy()
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(steps, loss, lw=0.5, alpha=0.4, color="C0", label="per step")
        ax_loss.plot(steps[window - 1:], smooth, color="C0", label=f"mean of {window}")
        ax_lr.plot(steps, rows["lr"], color="C1")
        ax_loss.legend()
    if len(tracked):
        axes[1].plot(tracked["step"], tracked["replicate_map"], "o-", color="C2")
        axes[1].set_ylabel("replicate mAP\n(tracked sample)")
    ax_loss.set_ylabel(LOSS_NAMES.get(method, "loss"))
    ax_loss.set_title(f"{method.upper() if method == 'mae' else method.capitalize()} pretraining: {log_path.parent.name}")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    with atomic_path(plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
