"""Crops for embedding, straight from the images: every cell once, nothing on disk.

Where the crops come from is a `CropSource`: its `fields` table (FIELD_KEY + crops per field, in order) and
`batches(batch_size, num_workers)`, an iterator of (float16 crops (B, 5, S, S), each crop's field number).
- `ImageSource`: DataLoader workers decode one field each (paintbench.vit.fields.FieldReader: the same correction,
  normalization and crop geometry as the pretraining sample), cut its crops at the plate's centres
  (<prefix>.centres.parquet) and send them as float16; the main process packs them into model batches across
  field boundaries. A field that cannot be read is skipped and recorded (`skipped`) when allowed, else raised.
- `CacheSource`: crops already in a cache (<prefix>.npy, read in contiguous memmap slices): an existing cache of
  every crop, or tests.
- `RawSource`: an external encoder's crops (paintbench.vit.encoders): illumination-corrected camera units (float32),
  cut where that encoder's format cuts them (tiles from the top-left corner with a DNA foreground filter, or nuclei
  found in the field), every field of the LoadData table; each encoder scales them itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from paintbench.registry import CHANNELS
from paintbench.vit.crops import bad_field, cache_files
from paintbench.vit.fields import (DNA, FIELD_KEY, FieldReader, corner_tiles, extract_crops, find_nuclei,
                                     foreground_tiles)

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]  # (crops, field number of each crop)


def field_table(centres: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Fields in first-appearance order with their crop counts, and each crop's field number."""
    keys = centres[FIELD_KEY]
    codes = keys.groupby(FIELD_KEY, sort=False).ngroup().to_numpy()  # numbered in order of first appearance
    fields = keys.iloc[np.unique(codes, return_index=True)[1]].reset_index(drop=True)
    fields["crops"] = np.bincount(codes, minlength=len(fields)).astype(np.int64)
    return fields, codes.astype(np.int64)


class _FieldCrops(Dataset):
    """Item i = all crops of field i as a float16 tensor (or an error value)."""

    def __init__(self, rows: list[dict], centres: list[np.ndarray], reader: FieldReader, crop_size: int):
        self.rows, self.centres, self.reader, self.crop_size = rows, centres, reader, crop_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        from paintbench.images import BadFieldError

        try:
            return {"task": i, "crops": torch.from_numpy(self.reader.crops(self.rows[i], self.centres[i], self.crop_size))}
        except BadFieldError as err:
            return {"task": i, "error": str(err)}


def _pack(loader, rows: list[dict], skip: bool, skipped: list[dict], batch_size: int) -> Iterator[Batch]:
    """Crops of consecutive fields packed into model batches across field boundaries."""
    pending, codes, held = [], [], 0
    for item in loader:
        i = int(item["task"])
        if bad_field(item, rows[i], "vit_embed", skip, skipped):
            continue
        pending.append(item["crops"])
        codes.append(torch.full((len(item["crops"]),), i, dtype=torch.int64))
        held += len(item["crops"])
        while held >= batch_size:
            crops, fields = torch.cat(pending), torch.cat(codes)
            yield crops[:batch_size], fields[:batch_size]
            pending, codes, held = [crops[batch_size:]], [fields[batch_size:]], held - batch_size
    if held:
        yield torch.cat(pending), torch.cat(codes)


def _loader(tasks: Dataset, num_workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(tasks, batch_size=None, shuffle=False, num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers > 0 else None)


class ImageSource:
    """Every crop of one plate, decoded from its images in DataLoader workers."""

    def __init__(self, load_data: pd.DataFrame, illum_dir: str | Path, prefix: str | Path, skip_bad_fields: bool = False):
        files = cache_files(prefix)
        norm = json.loads(files["norm"].read_text())
        self.crop_size, self.skip = int(norm["crop_size"]), skip_bad_fields
        centres = pd.read_parquet(files["centres"])
        self.fields, self.codes = field_table(centres)
        by_field = dict(iter(centres.groupby(FIELD_KEY, sort=False)[["Metadata_Y", "Metadata_X"]]))
        table = load_data.astype({"Metadata_Plate": str, "Metadata_Well": str, "Metadata_Site": int}).set_index(FIELD_KEY)
        keys = list(self.fields[FIELD_KEY].itertuples(index=False, name=None))
        missing = [k for k in keys if k not in table.index]
        if missing:
            raise ValueError(f"{files['centres']}: {len(missing)} field(s) are not in the LoadData table, e.g. {missing[0]}")
        self.rows = [{**dict(zip(FIELD_KEY, k)), **table.loc[k].to_dict()} for k in keys]
        self.centres = [by_field[k].to_numpy(np.int64) for k in keys]
        self.reader = FieldReader(illum_dir, str(norm["plate"]), np.array(norm["low"]), np.array(norm["high"]))
        self.skipped: list[dict] = []
        self.shape = (len(norm["channels"]), self.crop_size, self.crop_size)

    def batches(self, batch_size: int, num_workers: int = 2, pin_memory: bool = False) -> Iterator[Batch]:
        tasks = _FieldCrops(self.rows, self.centres, self.reader, self.crop_size)
        yield from _pack(_loader(tasks, num_workers, pin_memory), self.rows, self.skip, self.skipped, batch_size)


@dataclass(frozen=True)
class Geometry:
    """Where an external encoder's crops are cut: 'tiles' (from the top-left corner, stride = size; with
    `foreground`, only tiles with >= fraction of DNA pixels above otsu_factor x Otsu) or 'nuclei'."""

    crop: str
    crop_size: int
    foreground: tuple = ()

    def centres(self, field: np.ndarray) -> np.ndarray:
        if self.crop == "nuclei":
            return find_nuclei(field[DNA])
        centres = corner_tiles(field.shape[1:], self.crop_size)
        options = dict(self.foreground)
        if options:
            centres = foreground_tiles(field[DNA], centres, self.crop_size, options["fraction"], options["otsu_factor"])
        return centres


class _RawCrops(Dataset):
    def __init__(self, rows: list[dict], reader: FieldReader, geometry: Geometry):
        self.rows, self.reader, self.geometry = rows, reader, geometry

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        from paintbench.images import BadFieldError

        try:
            field = self.reader.corrected(self.rows[i], list(CHANNELS))
            crops = extract_crops(field, self.geometry.centres(field), self.geometry.crop_size, dtype=np.float32)
            return {"task": i, "crops": torch.from_numpy(crops)}
        except BadFieldError as err:
            return {"task": i, "error": str(err)}


class RawSource:
    """Every field of a plate's LoadData table, cut by one Geometry, in illumination-corrected camera units."""

    def __init__(self, load_data: pd.DataFrame, illum_dir: str | Path, plate: str, geometry: Geometry,
                 skip_bad_fields: bool = False):
        table = load_data.astype({"Metadata_Plate": str, "Metadata_Well": str, "Metadata_Site": int})
        self.rows = table.to_dict("records")
        self.fields = table[FIELD_KEY].reset_index(drop=True).assign(crops=0)  # counted as they are cut
        self.reader, self.geometry, self.skip = FieldReader(illum_dir, plate), geometry, skip_bad_fields
        self.skipped: list[dict] = []
        self.shape = (len(CHANNELS), geometry.crop_size, geometry.crop_size)

    def batches(self, batch_size: int, num_workers: int = 2, pin_memory: bool = False) -> Iterator[Batch]:
        tasks = _RawCrops(self.rows, self.reader, self.geometry)
        yield from _pack(_loader(tasks, num_workers, pin_memory), self.rows, self.skip, self.skipped, batch_size)


class _CacheSlices(Dataset):
    def __init__(self, path: Path, n: int, batch_size: int):
        self.path, self.n, self.batch_size = path, n, batch_size
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __getitem__(self, k: int) -> torch.Tensor:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._array[k * self.batch_size : (k + 1) * self.batch_size]))  # a copy


class CacheSource:
    """Every crop of a cache whose index lists all its rows in order (Metadata_Crop = 0 ... N-1)."""

    def __init__(self, prefix: str | Path):
        files = cache_files(prefix)
        self.path, index = files["array"], pd.read_parquet(files["index"])
        n = int(np.load(self.path, mmap_mode="r").shape[0])
        if n != len(index) or not np.array_equal(index["Metadata_Crop"].to_numpy(), np.arange(n)):
            raise ValueError(f"{files['index']}: {len(index)} rows do not list the {n} crops of {self.path} in order")
        self.fields, self.codes = field_table(index)
        self.skipped: list[dict] = []
        self.shape = tuple(np.load(self.path, mmap_mode="r").shape[1:])

    def batches(self, batch_size: int, num_workers: int = 2, pin_memory: bool = False) -> Iterator[Batch]:
        loader = _loader(_CacheSlices(self.path, len(self.codes), batch_size), num_workers, pin_memory)
        codes = torch.from_numpy(self.codes)
        start = 0
        for crops in loader:
            yield crops, codes[start : start + len(crops)]
            start += len(crops)
