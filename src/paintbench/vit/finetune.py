"""Fine-tuning, the second phase: a pretrained encoder trained weakly supervised on the training side of the
perturbation split (paintbench.holdout), then embedded and scored as a feature set of its own (`<feature set>_ft`).

Weak supervision as DeepProfiler does it: every crop is labelled with its well's perturbation (negative controls form
one class of their own), and a linear head on the encoder's embedding learns to classify them (cross-entropy).
Only the wells of the training side and the negative controls are ever read (`well_labels`):
- paintbench's ViTs (`finetune`) take the pretraining sample of the crop caches (`LabelledCrops`);
- external encoders (`finetune_encoder`) take a bounded, seeded sample of crops cut from the images as that encoder's
  format cuts them (`sample_encoder_crops`), and train through the very path that embeds (paintbench.vit.encoders.
  Embedder: scaling, resize, normalization, backbone, pooling). Their backbone is saved under FINETUNED_KEY, the
  architecture's own key names, which load_backbone reads for any format it builds.
Optimization as pretraining: AdamW (fused on CUDA), warmup then cosine, bf16 autocast on CUDA.
"""

from __future__ import annotations

import logging
import math
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
from paintbench.vit.encoders import FINETUNED_KEY, Embedder
from paintbench.vit.stream import Geometry, RawSource
from paintbench.vit.train import param_groups, warmup_cosine

log = logging.getLogger(__name__)

PERT = "Metadata_broad_sample"
WELL = ["Metadata_Plate", "Metadata_Well"]
CONTROL_CLASS = "negative control"
LOG_COLUMNS = ["step", "loss", "accuracy", "lr", "seconds"]


def well_labels(layout: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The wells fine-tuning may read, with their class: the training side's perturbations and the negative
    controls (one class). Held-out wells (and positive controls, untreated wells) are not in it."""
    wells = layout[[*WELL, PERT, "Metadata_control_type"]].astype({"Metadata_Plate": str, "Metadata_Well": str})
    control = wells["Metadata_control_type"] == NEGCON
    train = set(split.loc[split["side"] == "train", PERT])
    keep = control | wells[PERT].isin(train)
    out = wells.loc[keep, [*WELL, PERT]].copy()
    out["label"] = wells.loc[keep, PERT].where(~control[keep], CONTROL_CLASS)
    return out.reset_index(drop=True)


def _classes(labels: pd.Series) -> tuple[list[str], np.ndarray]:
    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError(f"fine-tuning: {len(names)} class(es) on the training side; it needs two or more "
                         "(config key 'vit.finetune.heldout_fraction', or more perturbations)")
    return names, labels.map({name: k for k, name in enumerate(names)}).to_numpy(np.int64)


class LabelledCrops(Dataset):
    """The cached crops of training-side wells (and negative controls) with their class; held-out wells are dropped
    from the index before any crop is read. `labels[k]` names class k; `.index` lists the rows kept."""

    def __init__(self, crops: CropDataset, layout: pd.DataFrame, split: pd.DataFrame):
        index = crops.index.reset_index().rename(columns={"index": "_row"})
        index = index.astype({"Metadata_Plate": str, "Metadata_Well": str})
        self.index = index.merge(well_labels(layout, split), on=WELL, how="inner").sort_values("_row",
                                                                                              ignore_index=True)
        self.labels, self.targets = _classes(self.index["label"])
        self.crops = crops

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.crops[int(self.index.at[k, "_row"])], int(self.targets[k])


class LabelledTensors(Dataset):
    """Crops held in memory (an external encoder's sample) with their class and the field each came from."""

    def __init__(self, crops: torch.Tensor, labels: pd.Series, fields: pd.DataFrame):
        self.crops, self.fields = crops, fields.reset_index(drop=True)
        self.labels, self.targets = _classes(labels.reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        return self.crops[k], int(self.targets[k])


def sample_encoder_crops(plates: list[tuple[pd.DataFrame, Path]], labels: pd.DataFrame, geometry: Geometry,
                         max_crops: int, seed: int, num_workers: int = 0,
                         skip_bad_fields: bool = False) -> LabelledTensors:
    """Up to max_crops crops (float32 camera units, as paintbench.vit.stream.RawSource cuts them), the same share from
    each plate: its labelled wells' fields in seeded random order, at most ceil(share / fields) crops per field so
    that the sample spans the wells. `plates` pairs each plate's LoadData table with its illumination folder. Only
    the LoadData rows of `labels`' wells are handed to the reader."""
    share = -(-max_crops // len(plates))
    crops, names, fields = [], [], []
    for k, (load_data, illum_dir) in enumerate(plates):
        table = load_data.astype({"Metadata_Plate": str, "Metadata_Well": str})
        table = table.merge(labels[[*WELL, "label"]], on=WELL, how="inner").sample(frac=1.0, random_state=seed + k)
        if table.empty:
            continue
        plate = str(table["Metadata_Plate"].iloc[0])
        per_field = max(1, math.ceil(share / len(table)))
        source = RawSource(table.reset_index(drop=True), illum_dir, plate, geometry, skip_bad_fields)
        taken, held = np.zeros(len(table), np.int64), 0
        for batch, codes in source.batches(batch_size=64, num_workers=num_workers):
            for row in np.unique(codes.numpy()):
                pick = np.flatnonzero(codes.numpy() == row)[: per_field - taken[row]][: share - held]
                taken[row] += len(pick)
                held += len(pick)
                crops.append(batch[pick])
                names += [source.rows[row]["label"]] * len(pick)
                fields += [{key: source.rows[row][key] for key in ("Metadata_Plate", "Metadata_Well", "Metadata_Site")}] * len(pick)
            if held >= share:
                break
        log.info("plate %s: %d crops from %d fields of %d labelled wells", plate, held, int((taken > 0).sum()),
                 table[WELL].drop_duplicates().shape[0])
    if not crops:
        raise ValueError("fine-tuning: no crop was cut from the training side's wells")
    return LabelledTensors(torch.cat(crops), pd.Series(names), pd.DataFrame(fields))


class Classifier(nn.Module):
    """A linear head on an embedding (B, width) of raw crops."""

    def __init__(self, features: nn.Module, width: int, classes: int):
        super().__init__()
        self.features, self.head = features, nn.Linear(width, classes)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(crops))


class PooledViT(nn.Module):
    """paintbench's encoder as vit-embed uses it: crops resized to its input size, tokens pooled."""

    def __init__(self, encoder: nn.Module, img_size: int, pooling: str):
        super().__init__()
        self.encoder, self.img_size, self.pooling = encoder, img_size, pooling

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.encoder, resize_to(crops, self.img_size), self.pooling)


def train_classifier(features: nn.Module, width: int, data: Dataset, classes: int, *, steps: int, batch_size: int,
                     lr: float, weight_decay: float = 0.05, warmup_steps: int = 10, seed: int = 0,
                     device: str = "auto", num_workers: int = 0) -> list[dict]:
    """Train `features` and a linear head to classify `data`; the rows of the fine-tuning log (LOG_COLUMNS)."""
    dev = pick_device(device)
    torch.manual_seed(seed)
    model = Classifier(features, width, classes).to(dev).train()
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
        rows.append({"step": step, "loss": float(loss.detach()), "accuracy": accuracy, "lr": scheduler.get_last_lr()[0],
                     "seconds": time.perf_counter() - began})
        if step % 25 == 0 or step == steps:
            log.info("fine-tuning step %d/%d: loss %.4f, batch accuracy %.2f", step, steps, rows[-1]["loss"], accuracy)
    model.cpu()
    return rows


def finetune(encoder: nn.Module, encoder_config: dict, data: LabelledCrops, out_dir: Path, *, pooling: str = "mean",
             method: str = "ft", **training) -> Path:
    """Fine-tune paintbench's encoder on `data` (train_classifier's keywords); write out_dir/encoder.pt (what
    vit-embed loads) and finetune_log.tsv. Returns the encoder file."""
    features = PooledViT(encoder, int(encoder_config["img_size"]), pooling)
    width = int(getattr(encoder, "num_features", 0) or encoder.embed_dim)
    rows = train_classifier(features, width, data, len(data.labels), **training)
    return _save(out_dir, "encoder.pt", rows, {"encoder": encoder.state_dict(), "encoder_config": encoder_config,
                                               "method": method, "classes": data.labels})


def finetune_encoder(embedder: Embedder, data: LabelledTensors, out_dir: Path, **training) -> Path:
    """Fine-tune an external encoder (paintbench.vit.encoders.Embedder) on `data`; write out_dir/backbone.pt (its
    backbone's state dict under FINETUNED_KEY) and finetune_log.tsv. Returns the backbone file."""
    rows = train_classifier(embedder, int(embedder.width), data, len(data.labels), **training)
    spec = embedder.spec
    return _save(out_dir, "backbone.pt", rows, {FINETUNED_KEY: embedder.backbone.state_dict(), "format": spec.format,
                                                "parent": spec.name, "classes": data.labels})


def _save(out_dir: Path, name: str, rows: list[dict], payload: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(pd.DataFrame(rows, columns=LOG_COLUMNS), out_dir / "finetune_log.tsv")
    path = out_dir / name
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
