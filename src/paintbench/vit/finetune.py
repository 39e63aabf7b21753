"""Fine-tuning, the second phase: a pretrained encoder trained weakly supervised on the training side of the
perturbation split (paintbench.holdout), then embedded and scored as a feature set of its own (`<feature set>_ft`).

Weak supervision as DeepProfiler does it: every crop is labelled with its well's perturbation (negative controls form
one class of their own), and a linear head on the encoder's pooled embedding learns to classify them (cross-entropy).
The crops are the pretraining sample of the crop caches; `LabelledCrops` keeps only the rows of the training side
and of the negative controls, so no held-out perturbation's label (or image) is ever read by the loader.
Optimization as pretraining: AdamW (fused on CUDA), warmup then cosine, bf16 autocast on CUDA; the encoder is saved as
paintbench's encoder.pt, so embedding takes it like any other.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from paintbench.atomic import atomic_path, write_table
from paintbench.metadata import NEGCON
from paintbench.vit.core import autocast, pick_device, pool_tokens, resize_to
from paintbench.vit.crops import CropDataset
from paintbench.vit.train import param_groups, warmup_cosine

log = logging.getLogger(__name__)

PERT = "Metadata_broad_sample"
CONTROL_CLASS = "negative control"
LOG_COLUMNS = ["step", "loss", "accuracy", "lr", "seconds"]


class LabelledCrops(Dataset):
    """The crops of training-side wells (and negative controls) with their class; held-out wells are dropped from
    the index before any crop is read. `labels[k]` names class k; `.index` lists the rows kept."""

    def __init__(self, crops: CropDataset, layout: pd.DataFrame, split: pd.DataFrame):
        wells = layout[["Metadata_Plate", "Metadata_Well", PERT, "Metadata_control_type"]]
        index = crops.index.reset_index().rename(columns={"index": "_row"}).merge(
            wells, on=["Metadata_Plate", "Metadata_Well"], how="left")
        train = set(split.loc[split["side"] == "train", PERT])
        control = index["Metadata_control_type"] == NEGCON
        keep = control | index[PERT].isin(train)
        self.index = index[keep].reset_index(drop=True)
        names = self.index[PERT].where(~control[keep].to_numpy(), CONTROL_CLASS)
        self.labels = sorted(set(names))
        self.targets = names.map({name: k for k, name in enumerate(self.labels)}).to_numpy(np.int64)
        self.crops = crops
        if len(self.labels) < 2:
            raise ValueError(f"fine-tuning: {len(self.labels)} class(es) on the training side; it needs two or more "
                             "(config key 'vit.finetune.heldout_fraction', or more perturbations)")

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.crops[int(self.index.at[k, "_row"])], int(self.targets[k])


class Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, img_size: int, pooling: str, classes: int):
        super().__init__()
        self.encoder, self.img_size, self.pooling = encoder, img_size, pooling
        width = int(getattr(encoder, "num_features", 0) or encoder.embed_dim)
        self.head = nn.Linear(width, classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(pool_tokens(self.encoder, resize_to(crops, self.img_size), self.pooling))


def finetune(encoder: nn.Module, encoder_config: dict, data: LabelledCrops, out_dir: Path, *, steps: int,
             batch_size: int, lr: float, weight_decay: float = 0.05, warmup_steps: int = 10, pooling: str = "mean",
             seed: int = 0, device: str = "auto", num_workers: int = 0, method: str = "ft") -> Path:
    """Train `encoder` with a linear head to classify `data`'s crops; write out_dir/encoder.pt and finetune_log.tsv
    (step, loss, batch accuracy, learning rate, seconds). Returns the encoder file."""
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = Classifier(encoder, int(encoder_config["img_size"]), pooling, len(data.labels)).to(dev).train()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95),
                                  fused=True if dev.type == "cuda" else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, steps))
    sampler = torch.utils.data.RandomSampler(data, replacement=True, num_samples=steps * batch_size,
                                             generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(data, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=dev.type == "cuda")
    rows, began = [], time.perf_counter()
    for step, (crops, targets) in enumerate(loader, start=1):
        crops, targets = crops.to(dev, non_blocking=True).float(), targets.to(dev, non_blocking=True)
        with autocast(dev):
            logits = model(crops)
        loss = nn.functional.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        accuracy = float((logits.argmax(dim=1) == targets).float().mean())
        rows.append({"step": step, "loss": float(loss), "accuracy": accuracy, "lr": scheduler.get_last_lr()[0],
                     "seconds": time.perf_counter() - began})
        if step % 25 == 0 or step == steps:
            log.info("fine-tuning step %d/%d: loss %.4f, batch accuracy %.2f", step, steps, float(loss), accuracy)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(pd.DataFrame(rows, columns=LOG_COLUMNS), out_dir / "finetune_log.tsv")
    path = out_dir / "encoder.pt"
    with atomic_path(path) as tmp:
        torch.save({"encoder": model.encoder.state_dict(), "encoder_config": encoder_config, "method": method,
                    "classes": data.labels}, tmp)
    return path
