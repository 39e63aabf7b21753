"""Encoder embeddings of one plate's crops, averaged per field and then per well.

- Crops come from a CropSource (paintbench.vit.stream): in the pipeline, `ImageSource` decodes the images in
  DataLoader workers (every cell, nothing cached); `CacheSource` reads a crop cache. Batches arrive as float16
  (half the bytes of float32 through worker IPC and PCIe), are converted to float32 on the device and resized to
  the encoder's img_size when the crop size differs (the same bilinear, antialiased-when-shrinking resize as
  pretraining: paintbench.vit.model.resize_to).
- Several encoders (one per feature set: vitmae, vitdino, ...) embed the same decoded batches: the images are
  read once per plate.
- Inference under torch.inference_mode() and paintbench.vit.autocast (bf16 on CUDA, fp32 on CPU);
  pinned host memory and non_blocking copies on CUDA.
- Pooling: "cls" = the class token of forward_features (after the final norm); "mean" = the mean of the
  patch tokens of forward_features (prefix tokens, i.e. class and register tokens, excluded).
- Well embedding = mean of its field means, each field mean the mean of its crops: fields weigh
  equally whatever their cell count (a crowded field would otherwise dominate its well). Sums are
  accumulated per field on the device in float64 with index_add_, so per-crop embeddings never
  come back to the host. Metadata_Object_Count = crops in
  the well, Metadata_Field_Count = fields with at least one crop.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from paintbench.atomic import write_table
from paintbench.vit.core import POOLINGS, autocast, pick_device, pool_tokens, resize_to
from paintbench.vit.stream import CacheSource, ImageSource, RawSource

CropSource = ImageSource | CacheSource | RawSource
Encoder = tuple[nn.Module, dict]  # an encoder and its config, as paintbench.vit.model.load_encoder returns them

log = logging.getLogger(__name__)

WELL_KEY = ["Metadata_Plate", "Metadata_Well"]


def feature_names(dim: int) -> list[str]:
    return [f"emb_{j:04d}" for j in range(dim)]


def _check(encoder_config: dict, shape: tuple[int, ...], pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    chans = int(encoder_config.get("in_chans", shape[0]))
    if chans != shape[0]:
        raise ValueError(f"the encoder takes {chans} channels, the crops have {shape[0]}")


class PooledEncoder(nn.Module):
    """One of paintbench's own encoders as an embedder: crops resized to its img_size, its tokens pooled."""

    def __init__(self, encoder: nn.Module, config: dict, pooling: str):
        super().__init__()
        self.encoder, self.size, self.pooling = encoder, int(config["img_size"]), pooling
        self.width = _width(encoder)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return pool_tokens(self.encoder, resize_to(crops.float(), self.size), self.pooling)


def as_embedders(encoders: Sequence[Encoder | nn.Module], shape: tuple[int, ...], pooling: str) -> list[nn.Module]:
    """Our (encoder, config) pairs wrapped as PooledEncoder; external embedders (paintbench.vit.encoders.Embedder)
    as they are: each maps a batch of crops to (B, width) embeddings."""
    out = []
    for item in encoders:
        if isinstance(item, nn.Module):
            out.append(item)
            continue
        encoder, config = item
        _check(config, shape, pooling)
        out.append(PooledEncoder(encoder, config, pooling))
    return out


def embed_batches(source: CropSource, encoders: Sequence[Encoder | nn.Module], pooling: str = "mean",
                  batch_size: int = 256, device: str | torch.device = "auto", num_workers: int = 2,
                  progress: bool = True) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Yield (field number of each crop, one (B, D) float32 embedding per encoder, on the device) per batch.

    Every encoder sees the same decoded batch: a plate's images are read once however many feature sets embed
    them. inference_mode and autocast are entered per batch, never across a yield, so they do not leak into the
    caller; the embeddings are inference tensors (read them, or update tensors in inference_mode).
    """
    device = device if isinstance(device, torch.device) else pick_device(device)
    models = [m.to(device).eval() for m in as_embedders(encoders, source.shape, pooling)]
    cuda = device.type == "cuda"
    with tqdm(total=int(source.fields["crops"].sum()) or None, desc="embed", unit="crop", mininterval=5,
              disable=not progress) as bar:
        for crops, codes in source.batches(batch_size, num_workers, pin_memory=cuda):
            with torch.inference_mode(), autocast(device):
                x = crops.to(device, non_blocking=cuda).float()
                embeddings = [model(x).float() for model in models]
            bar.update(len(crops))
            yield codes, embeddings


def _width(encoder: nn.Module) -> int:
    return int(getattr(encoder, "num_features", 0) or encoder.embed_dim)


def embed_plate(source: CropSource, encoders: Sequence[Encoder | nn.Module], outputs: Sequence[str | Path], pooling: str = "mean",
                batch_size: int = 256, device: str = "auto", num_workers: int = 2) -> list[pd.DataFrame]:
    """Write each encoder's well-level embeddings of one plate's crops to its output (see the module docstring);
    returns the tables, in the encoders' order."""
    if len(encoders) != len(outputs):
        raise ValueError(f"{len(encoders)} encoders but {len(outputs)} outputs")
    device_ = pick_device(device)
    encoders = as_embedders(encoders, source.shape, pooling)
    fields, dims = source.fields, [int(model.width) for model in encoders]
    with torch.inference_mode():
        sums = [torch.zeros(len(fields), dim, dtype=torch.float64, device=device_) for dim in dims]
    counts = np.zeros(len(fields), np.int64)
    for codes, embeddings in embed_batches(source, encoders, pooling, batch_size, device_, num_workers):
        codes_ = codes.to(device_)
        for total, emb, dim, output in zip(sums, embeddings, dims, outputs):
            if emb.shape[1] != dim:
                raise ValueError(f"{output}: the encoder's embeddings have {emb.shape[1]} dimensions, "
                                 f"num_features says {dim}")
            with torch.inference_mode():
                total.index_add_(0, codes_, emb.double())
        counts += np.bincount(codes.numpy(), minlength=len(fields))

    kept = counts > 0  # a field the source skipped has no crops
    tables = []
    for total, output in zip(sums, outputs):
        field_means = total.cpu().numpy()[kept] / counts[kept, None]
        wells = well_means(fields[kept].assign(crops=counts[kept]).reset_index(drop=True), field_means)
        write_table(wells, output)
        log.info("%s: %d wells, %d fields, %d crops, %d dimensions", output, len(wells), int(kept.sum()),
                 int(counts.sum()), field_means.shape[1])
        tables.append(wells)
    return tables


def well_means(fields: pd.DataFrame, field_means: np.ndarray) -> pd.DataFrame:
    """One row per well: the mean of its field means (float32 emb_ columns), crop and field counts."""
    groups = fields.groupby(WELL_KEY, sort=True).indices
    keys = list(groups)
    table = pd.DataFrame(keys, columns=WELL_KEY) if keys else pd.DataFrame(columns=WELL_KEY)
    table["Metadata_Object_Count"] = np.array([fields["crops"].to_numpy()[groups[k]].sum() for k in keys], np.int64)
    table["Metadata_Field_Count"] = np.array([len(groups[k]) for k in keys], np.int64)
    means = np.stack([field_means[groups[k]].mean(axis=0) for k in keys]) if keys else np.zeros((0, field_means.shape[1]))
    return pd.concat([table, pd.DataFrame(means.astype(np.float32), columns=feature_names(field_means.shape[1]))], axis=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward_throughput(encoder: nn.Module, img_size: int, batch_size: int, device: str = "auto",
                            seconds: float = 10.0, pooling: str = "mean", in_chans: int = 5, warmup: int = 3) -> dict:
    """Model-only crops/s: forward passes on one random batch already on the device (no data loading)."""
    device_ = pick_device(device)
    encoder = encoder.to(device_).eval()
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device_)
    with torch.inference_mode(), autocast(device_):
        for _ in range(warmup):
            pool_tokens(encoder, x, pooling)
        _sync(device_)
        batches, began = 0, time.perf_counter()
        while True:
            pool_tokens(encoder, x, pooling)
            batches += 1
            if batches % 4 == 0 or device_.type != "cuda":
                _sync(device_)
                if time.perf_counter() - began >= seconds:
                    break
        elapsed = time.perf_counter() - began
    return {"crops": batches * batch_size, "seconds": elapsed, "crops_per_s": batches * batch_size / elapsed,
            "batch_size": batch_size, "img_size": img_size, "device": str(device_)}


def end_to_end_throughput(source: CropSource, encoder: nn.Module, encoder_config: dict, batch_size: int = 256,
                          device: str = "auto", num_workers: int = 2, pooling: str = "mean",
                          seconds: float | None = None, warmup: int = 2) -> dict:
    """Crops/s of the whole embedding loop (decoding or reading, workers, transfer, resize, forward).

    The first `warmup` batches (worker start-up, kernel selection) are not timed; stops after `seconds`
    of timed work when given, else at the end of the source.
    """
    device_ = pick_device(device)
    crops, began = 0, (time.perf_counter() if warmup <= 0 else None)
    batches = embed_batches(source, [(encoder, encoder_config)], pooling, batch_size, device_, num_workers,
                            progress=False)
    try:
        for k, (_, (emb,)) in enumerate(batches):
            if k < warmup:
                if k == warmup - 1:
                    _sync(device_)
                    began = time.perf_counter()
                continue
            crops += len(emb)
            if seconds is not None and time.perf_counter() - began >= seconds:
                break
        _sync(device_)
    finally:
        batches.close()  # stops the loader's workers now, not at garbage collection
    elapsed = time.perf_counter() - began if began is not None else float("nan")
    return {"crops": crops, "seconds": elapsed, "crops_per_s": crops / elapsed if crops else float("nan"),
            "batch_size": batch_size, "num_workers": num_workers, "device": str(device_)}
