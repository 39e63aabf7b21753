"""Encoder embeddings of one plate's crops, averaged per field and then per well.

- Crops come from a CropSource (paintbench.vit.stream): in the pipeline, `ImageSource` decodes the images in
  DataLoader workers (every cell, nothing cached); `CacheSource` reads a crop cache. Batches arrive as float16
  (half the bytes of float32 through worker IPC and PCIe), are converted to float32 on the device and resized to
  the encoder's img_size when the crop size differs (the same bilinear, antialiased-when-shrinking resize as
  pretraining: paintbench.vit.model.resize_to).
- Inference under torch.inference_mode() and paintbench.vit.autocast (bf16 on CUDA, fp32 on CPU);
  pinned host memory and non_blocking copies on CUDA.
- Pooling: "cls" = the class token of forward_features (after the final norm); "mean" = the mean of the
  patch tokens of forward_features (prefix tokens, i.e. class and register tokens, excluded).
- Well embedding = mean of its field means, each field mean the mean of its crops: fields weigh
  equally whatever their cell count (a crowded field would otherwise dominate its well). Sums are
  accumulated per field on the device in float64 with index_add_, so per-crop embeddings never
  have to come back to the host unless `crop_output` asks for them. Metadata_Object_Count = crops in
  the well, Metadata_Field_Count = fields with at least one crop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from tqdm import tqdm

from paintbench.atomic import atomic_path, write_table
from paintbench.vit import autocast, pick_device
from paintbench.vit.model import resize_to
from paintbench.vit.stream import CacheSource, ImageSource

CropSource = ImageSource | CacheSource

log = logging.getLogger(__name__)

POOLINGS = ("cls", "mean")
WELL_KEY = ["Metadata_Plate", "Metadata_Well"]


def feature_names(dim: int) -> list[str]:
    return [f"emb_{j:04d}" for j in range(dim)]


def pool_tokens(encoder: nn.Module, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, D) float32 embeddings of images x (B, C, H, W)."""
    tokens = encoder.forward_features(x)
    if tokens.ndim != 3:
        raise ValueError(f"forward_features returned shape {tuple(tokens.shape)}, expected (batch, tokens, dim)")
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if pooling == "cls":
        if getattr(encoder, "cls_token", None) is None:
            raise ValueError("pooling 'cls' needs an encoder with a class token; use 'mean'")
        return tokens[:, 0].float()
    if pooling == "mean":
        return tokens[:, prefix:].float().mean(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")


def _check(encoder_config: dict, shape: tuple[int, ...], pooling: str) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    chans = int(encoder_config.get("in_chans", shape[0]))
    if chans != shape[0]:
        raise ValueError(f"the encoder takes {chans} channels, the crops have {shape[0]}")


def embed_batches(source: CropSource, encoder: nn.Module, encoder_config: dict, pooling: str = "cls",
                  batch_size: int = 256, device: str | torch.device = "auto", num_workers: int = 2,
                  progress: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (field number of each crop, (B, D) float32 embeddings on the device) for the source's batches.

    inference_mode and autocast are entered per batch, never across a yield, so they do not leak into
    the caller; the embeddings are inference tensors (read them, or update tensors in inference_mode).
    """
    device = device if isinstance(device, torch.device) else pick_device(device)
    _check(encoder_config, source.shape, pooling)
    img_size = int(encoder_config["img_size"])
    encoder = encoder.to(device).eval()
    cuda = device.type == "cuda"
    with tqdm(total=int(source.fields["crops"].sum()), desc="embed", unit="crop", mininterval=5,
              disable=not progress) as bar:
        for crops, codes in source.batches(batch_size, num_workers, pin_memory=cuda):
            with torch.inference_mode(), autocast(device):
                emb = pool_tokens(encoder, resize_to(crops.to(device, non_blocking=cuda).float(), img_size), pooling)
            bar.update(len(crops))
            yield codes, emb


def _crop_schema(columns: list[str], dim: int) -> pa.Schema:
    text = {"Metadata_Plate", "Metadata_Well"}
    return pa.schema([(c, pa.string() if c in text else pa.int64()) for c in columns]
                     + [(name, pa.float32()) for name in feature_names(dim)])


def _crop_table(index: pd.DataFrame, embeddings: np.ndarray, schema: pa.Schema) -> pa.Table:
    values = [index[c].to_numpy() for c in index.columns] + list(embeddings.T)
    return pa.table([pa.array(v, type=f.type) for v, f in zip(values, schema)], schema=schema)


def embed_plate(source: CropSource, encoder: nn.Module, encoder_config: dict, output: str | Path,
                pooling: str = "cls", batch_size: int = 256, device: str = "auto", num_workers: int = 2,
                crop_output: str | Path | None = None, crop_index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write the well-level embeddings of one plate's crops (see the module docstring); returns the table.

    `crop_output` (optional): the per-crop embeddings with `crop_index`'s columns (one row per crop of the
    source, fields contiguous and in order), written atomically.
    """
    device_ = pick_device(device)
    fields, dim = source.fields, int(getattr(encoder, "num_features", 0) or encoder.embed_dim)
    with torch.inference_mode():
        sums = torch.zeros(len(fields), dim, dtype=torch.float64, device=device_)
    counts = np.zeros(len(fields), np.int64)
    with contextlib.ExitStack() as stack:
        writer = None
        if crop_output is not None:
            tmp = stack.enter_context(atomic_path(crop_output))  # renamed after the writer below has closed
            schema = _crop_schema(list(crop_index.columns), dim)
            writer = stack.enter_context(pq.ParquetWriter(tmp, schema))
            row_fields, position = np.repeat(np.arange(len(fields)), fields["crops"].to_numpy()), 0
        for codes, emb in embed_batches(source, encoder, encoder_config, pooling, batch_size, device_, num_workers):
            if emb.shape[1] != dim:
                raise ValueError(f"the encoder's embeddings have {emb.shape[1]} dimensions, num_features says {dim}")
            with torch.inference_mode():
                sums.index_add_(0, codes.to(device_), emb.double())
            counts += np.bincount(codes.numpy(), minlength=len(fields))
            if writer is not None:
                while row_fields[position] != int(codes[0]):  # rows of a field the source skipped
                    position += 1
                rows = crop_index.iloc[position : position + len(emb)]
                writer.write_table(_crop_table(rows, emb.cpu().numpy(), schema))
                position += len(emb)

    kept = counts > 0  # a field the source skipped has no crops
    field_means = sums.cpu().numpy()[kept] / counts[kept, None]
    wells = well_means(fields[kept].assign(crops=counts[kept]).reset_index(drop=True), field_means)
    write_table(wells, output)
    log.info("%s: %d wells, %d fields, %d crops, %d dimensions (%s pooling)", output, len(wells), int(kept.sum()),
             int(counts.sum()), dim, pooling)
    return wells


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
                            seconds: float = 10.0, pooling: str = "cls", in_chans: int = 5, warmup: int = 3) -> dict:
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
                          device: str = "auto", num_workers: int = 2, pooling: str = "cls",
                          seconds: float | None = None, warmup: int = 2) -> dict:
    """Crops/s of the whole embedding loop (decoding or reading, workers, transfer, resize, forward).

    The first `warmup` batches (worker start-up, kernel selection) are not timed; stops after `seconds`
    of timed work when given, else at the end of the source.
    """
    device_ = pick_device(device)
    crops, began = 0, (time.perf_counter() if warmup <= 0 else None)
    batches = embed_batches(source, encoder, encoder_config, pooling, batch_size, device_, num_workers, progress=False)
    try:
        for k, (_, emb) in enumerate(batches):
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
