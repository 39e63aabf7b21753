"""The per-plate crop plan and pretraining sample: where every crop is, and a bounded sample of them on disk.

Files (prefix = results_dir/vit/crops/<plate>):
- `<prefix>.norm.json`: the plate's normalization (per channel low/high), the crop settings and a fingerprint of
  the illumination functions it was made with (MAE checkpoints compare it before resuming).
- `<prefix>.centres.parquet`: every crop centre of every field (Metadata_Plate/Well/Site, Metadata_Y/X, px):
  what the embedding reads from the images (paintbench.vit.stream). A few bytes per cell.
- `<prefix>.npy` float16 (N, 5, S, S) in CHANNELS order and `<prefix>.parquet`, its index (INDEX_COLUMNS,
  Metadata_Crop = row in the array): the pretraining sample, at most `sample_per_field` crops per field (seeded),
  or every crop when it is None. Rows are ordered by well, then site, then crop. Written under temporary names
  and renamed; the index goes last, so its presence marks a complete cache.

Why a sample and a stream rather than a cache of every cell: a 160 px float16 crop is 256 KB, and real fields
hold 100-300 cells, so caching every crop costs ~2x the images (measured 2.2x on a real field; 5-16 TB for the
CPJUMP1 batch). Pretraining only needs a bounded, diverse sample (re-read every epoch, so it is worth caching);
embedding needs every cell once, and decoding a field costs less than embedding its cells.

Choices:
- Two passes. Pass 1 ("survey") reads only the DNA channel of every field (nuclei mode; tiles mode skips it:
  counts follow from the field size), segments it and keeps the centres; it also reads all channels of the
  sampled normalization fields. Pass 2 decodes the sampled fields' five channels once and writes their crops
  into a memmap allocated at its final size. Memory holds one field per worker plus the centres.
- Normalization: low/high = the 1st/99.9th percentiles (by default) of corrected pixels, pooled from a seeded
  sample of up to `norm_fields` fields (up to 65,536 pixel positions each); see paintbench.vit.fields.
- Decoding, correction, normalization and cropping run in torch DataLoader workers (batch_size=None: one field
  per item); each worker writes its crops straight into its rows of the memmap. A field that cannot be read comes
  back as an error value: with `skip_bad_fields` it is left out and recorded (QC records), else it is raised
  again in the main process with its own message (plate, well, site, file) and the temporary .npy is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from paintbench.paths import illum_filename
from paintbench.registry import CHANNELS
from paintbench.atomic import atomic_path, write_table
from paintbench.images import BadFieldError, FieldId
from paintbench.qc import record
from paintbench.vit.fields import (CLIP, DNA, FIELD_KEY, MIN_NUCLEUS_AREA, FieldReader, field_seed, find_nuclei,
                                   subsample, tile_centres)

log = logging.getLogger(__name__)

MODES = ("tiles", "nuclei")
NORM_PIXELS_PER_FIELD = 65536
CENTRE_COLUMNS = ("Nuclei_Location_Center_Y", "Nuclei_Location_Center_X")
INDEX_COLUMNS = [*FIELD_KEY, "Metadata_Crop", "Metadata_Y", "Metadata_X"]
CENTRE_TABLE = [*FIELD_KEY, "Metadata_Y", "Metadata_X"]
__all__ = ["CLIP", "CropCache", "CropDataset", "build_crop_cache", "cache_files", "tile_centres"]


class CropCache(NamedTuple):
    index: pd.DataFrame  # the pretraining sample's rows
    centres: pd.DataFrame  # every crop centre: what the embedding reads
    skipped: list[dict]  # QC records of fields left out (skip_bad_fields)


def cache_files(prefix: str | Path) -> dict[str, Path]:
    """The cache's files; the suffix is appended, so plate names with dots are safe."""
    name = str(prefix)
    return {"array": Path(name + ".npy"), "index": Path(name + ".parquet"), "norm": Path(name + ".norm.json"),
            "centres": Path(name + ".centres.parquet")}


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(prefixes: list[str | Path]) -> dict[str, str]:
    """What MAE pretraining learned from, part by part (a checkpoint resumes only when every part matches):
    the illumination functions the crops were corrected with, the normalization, the crop settings and the crop
    content itself (the sample's array and index bytes)."""
    parts: dict[str, list] = {"illumination functions": [], "normalization": [], "crop settings": [], "crop content": []}
    for prefix in sorted(map(str, prefixes)):
        files = cache_files(prefix)
        norm = json.loads(files["norm"].read_text())
        parts["illumination functions"].append(norm.get("illum"))
        parts["normalization"].append([norm["low"], norm["high"], norm["percentiles"], norm["clip"]])
        parts["crop settings"].append([norm["mode"], norm["crop_size"], norm.get("max_crops_per_field"),
                                       norm.get("sample_per_field")])
        parts["crop content"].append([file_digest(files["array"]), file_digest(files["index"])])
    return {part: hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16] for part, values in parts.items()}


class _FieldTasks(Dataset):
    """One field per item, run in DataLoader workers.

    job 'survey': nuclei centres and pixel samples; job 'crop': the field's sampled crops, written by the worker
    itself into rows starts[i]:starts[i+1] of the .npy at `array_path` (its own r+ memmap).
    """

    def __init__(self, job: str, rows: list[dict], reader: FieldReader, segment: bool = False,
                 sampled: frozenset[int] = frozenset(), centres: list[np.ndarray] | None = None, crop_size: int = 0,
                 seed: int = 0, min_nucleus_area: int = MIN_NUCLEUS_AREA, array_path: Path | None = None,
                 starts: np.ndarray | None = None):
        self.job, self.rows, self.reader, self.segment, self.sampled = job, rows, reader, segment, sampled
        self.centres, self.crop_size, self.seed, self.min_nucleus_area = centres, crop_size, seed, min_nucleus_area
        self.array_path, self.starts = array_path, starts
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def _survey(self, i: int, row: dict) -> dict:
        sampled = i in self.sampled
        field = self.reader.corrected(row, list(CHANNELS) if sampled else ["DNA"])
        result = {"task": i, "centres": np.zeros((0, 2), np.int64), "pixels": np.zeros((0, 0), np.float32)}
        if self.segment:
            result["centres"] = find_nuclei(field[DNA if sampled else 0], min_area=self.min_nucleus_area)
        if sampled:
            flat = field.reshape(field.shape[0], -1)
            n = min(flat.shape[1], NORM_PIXELS_PER_FIELD)
            positions = np.random.default_rng(field_seed(self.seed, row)).choice(flat.shape[1], size=n, replace=False)
            result["pixels"] = flat[:, np.sort(positions)]
        return result

    def _crop(self, i: int, row: dict) -> dict:
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r+")
        self.reader.crops(row, self.centres[i], self.crop_size, out=self._array[self.starts[i] : self.starts[i + 1]])
        return {"task": i, "crops": len(self.centres[i])}

    def __getitem__(self, i: int) -> dict:
        try:
            return self._survey(i, self.rows[i]) if self.job == "survey" else self._crop(i, self.rows[i])
        except BadFieldError as err:  # returned, not raised: torch would wrap the message in a traceback
            return {"task": i, "error": str(err)}


def run_fields(tasks: Dataset, indices: list[int], num_workers: int, desc: str) -> Iterator[dict]:
    """Each task's result in order (errors as {'task', 'error'} items), computed in `num_workers` processes."""
    subset = torch.utils.data.Subset(tasks, indices)
    loader = DataLoader(subset, batch_size=None, shuffle=False, num_workers=num_workers,
                        prefetch_factor=2 if num_workers > 0 else None)
    yield from tqdm(loader, total=len(indices), desc=desc, unit="field", mininterval=2)


def bad_field(item: dict, row: dict, stage: str, skip: bool, skipped: list[dict]) -> bool:
    """True when the item is an error: recorded (skip) or raised with its own message."""
    if "error" not in item:
        return False
    if not skip:
        raise BadFieldError(item["error"])
    log.warning("skipping %s", item["error"])
    fid = FieldId.of(pd.Series(row))
    skipped.append(record(fid.plate, fid.well, fid.site, stage, item["error"]))
    return True


def _external_centres(table: pd.DataFrame, rows: list[dict], shape: tuple[int, int],
                      columns: tuple[str, str]) -> list[np.ndarray]:
    """Given centres (e.g. CellProfiler's Nuclei_Location_Center_Y/X) per field, rounded; outside ones dropped."""
    missing = [c for c in [*FIELD_KEY, *columns] if c not in table.columns]
    if missing:
        raise ValueError(f"nuclei_centres: missing column(s) {missing}")
    keys = table[FIELD_KEY].astype({"Metadata_Plate": str, "Metadata_Well": str, "Metadata_Site": int})
    yx = np.rint(table[list(columns)].to_numpy(np.float64))
    groups = pd.Series(np.arange(len(table))).groupby([keys[c].to_numpy() for c in FIELD_KEY]).indices
    out, dropped = [], 0
    for row in rows:
        where = groups.get((str(row["Metadata_Plate"]), str(row["Metadata_Well"]), int(row["Metadata_Site"])))
        centres = np.zeros((0, 2)) if where is None else yx[np.sort(where)]
        inside = (centres >= 0).all(axis=1) & (centres[:, 0] < shape[0]) & (centres[:, 1] < shape[1])
        dropped += int((~inside).sum())
        out.append(centres[inside].astype(np.int64).reshape(-1, 2))
    if dropped:
        log.warning("nuclei_centres: %d centre(s) outside the %dx%d fields dropped", dropped, *shape)
    return out


def centre_table(rows: list[dict], centres: list[np.ndarray]) -> pd.DataFrame:
    """One row per crop centre, fields in `rows` order."""
    counts = np.array([len(c) for c in centres], dtype=np.int64)
    yx = np.concatenate([np.zeros((0, 2), np.int64), *centres]).astype(np.int64)
    return pd.DataFrame({
        "Metadata_Plate": np.repeat([str(r["Metadata_Plate"]) for r in rows], counts),
        "Metadata_Well": np.repeat([str(r["Metadata_Well"]) for r in rows], counts),
        "Metadata_Site": np.repeat([int(r["Metadata_Site"]) for r in rows], counts).astype(np.int64),
        "Metadata_Y": yx[:, 0], "Metadata_X": yx[:, 1]})


def _normalization(pixels: list[np.ndarray], plate: str, percentiles: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    if not pixels:
        raise ValueError(f"plate {plate}: no readable field to take the normalization from")
    pooled = np.concatenate(pixels, axis=1)
    low, high = (np.percentile(pooled, q, axis=1) for q in percentiles)
    flat = high <= low
    if flat.any():
        log.warning("plate %s: channel(s) %s have no spread in the sample; scale set to 1",
                    plate, [CHANNELS[c] for c in np.flatnonzero(flat)])
        high = np.where(flat, low + 1.0, high)
    return low, high


def build_crop_cache(load_data: pd.DataFrame, illum_dir: str | Path, out_prefix: str | Path, mode: str = "tiles",
                     crop_size: int = 96, num_workers: int = 2, norm_percentiles: tuple[float, float] = (1.0, 99.9),
                     norm_fields: int = 32, seed: int = 0, max_crops_per_field: int | None = None,
                     sample_per_field: int | None = None, nuclei_centres: pd.DataFrame | None = None,
                     centre_columns: tuple[str, str] = CENTRE_COLUMNS, min_nucleus_area: int = MIN_NUCLEUS_AREA,
                     skip_bad_fields: bool = False) -> CropCache:
    """Write one plate's normalization, crop centres and pretraining sample (see the module docstring).

    mode 'tiles': a centred grid of non-overlapping crop_size tiles per field. mode 'nuclei': crops centred on
    nuclei found in the DNA channel, or on `nuclei_centres` (columns Metadata_Plate/Well/Site and
    `centre_columns`, y then x, in px) when given. `max_crops_per_field` keeps a seeded random subset of every
    field's centres (for embedding too); `sample_per_field` caps the pretraining sample further.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    plates = load_data["Metadata_Plate"].astype(str).unique()
    if len(plates) != 1:
        raise ValueError(f"one plate per crop cache expected, found {list(plates)}")
    plate, illum_dir, files = plates[0], Path(illum_dir), cache_files(out_prefix)
    rows = load_data.sort_values(["Metadata_Well", "Metadata_Site"], kind="stable").to_dict("records")
    shape = np.load(illum_dir / illum_filename(plate, "DNA"), mmap_mode="r").shape
    if min(shape) <= crop_size:
        raise ValueError(f"plate {plate}: crop size {crop_size} does not fit in its {shape[0]}x{shape[1]} fields")

    rng = np.random.default_rng(seed)
    sampled = sorted(rng.choice(len(rows), size=min(len(rows), norm_fields), replace=False).tolist())
    segment = mode == "nuclei" and nuclei_centres is None
    survey = _FieldTasks("survey", rows, FieldReader(illum_dir, plate), segment=segment, sampled=frozenset(sampled),
                         seed=seed, min_nucleus_area=min_nucleus_area)
    found: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(rows)
    pixels, skipped, bad = [], [], set()
    for item in run_fields(survey, list(range(len(rows))) if segment else sampled, num_workers, f"{plate}: survey"):
        i = int(item["task"])
        if bad_field(item, rows[i], "vit_crops", skip_bad_fields, skipped):
            bad.add(i)
            continue
        found[i] = item["centres"].numpy()
        if item["pixels"].numel():
            pixels.append(item["pixels"].numpy())
    if mode == "tiles":
        found = [tile_centres(shape, crop_size)] * len(rows)
    elif nuclei_centres is not None:
        found = _external_centres(nuclei_centres, rows, shape, centre_columns)
    centres = [np.zeros((0, 2), np.int64) if i in bad else subsample(c, max_crops_per_field, field_seed(seed, row))
               for i, (c, row) in enumerate(zip(found, rows))]
    low, high = _normalization(pixels, plate, norm_percentiles)
    norm = {"plate": plate, "channels": list(CHANNELS), "percentiles": list(norm_percentiles),
            "low": low.tolist(), "high": high.tolist(), "clip": list(CLIP), "fields": len(sampled) - len(bad & set(sampled)),
            "mode": mode, "crop_size": crop_size, "max_crops_per_field": max_crops_per_field,
            "sample_per_field": sample_per_field,
            "illum": {c: file_digest(illum_dir / illum_filename(plate, c)) for c in CHANNELS}}
    with atomic_path(files["norm"]) as tmp:
        tmp.write_text(json.dumps(norm, indent=1) + "\n")
    all_centres = centre_table(rows, centres)
    write_table(all_centres, files["centres"])

    # The pretraining sample: a seeded subset of each field's centres (a different stream than the cap's).
    sample = [subsample(c, sample_per_field, [*field_seed(seed, row), 1]) for c, row in zip(centres, rows)]
    counts = np.array([len(c) for c in sample], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    failed: set[int] = set()
    with atomic_path(files["array"]) as tmp:
        # Allocated at its final size; each worker writes its fields' rows through its own mapping.
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16,
                                  shape=(int(starts[-1]), len(CHANNELS), crop_size, crop_size))
        crop = _FieldTasks("crop", rows, FieldReader(illum_dir, plate, low, high), centres=sample, crop_size=crop_size,
                           seed=seed, array_path=tmp, starts=starts)
        for item in run_fields(crop, [i for i in range(len(rows)) if counts[i]], num_workers, f"{plate}: crops"):
            if bad_field(item, rows[int(item["task"])], "vit_crops", skip_bad_fields, skipped):
                failed.add(int(item["task"]))
        del crop  # num_workers=0: the main process's own mapping

    index = centre_table(rows, sample)
    index.insert(3, "Metadata_Crop", np.arange(len(index), dtype=np.int64))
    if failed:  # their rows stay in the array, unfilled and unindexed; the embedding stream skips them too
        keep = ~np.isin(np.repeat(np.arange(len(rows)), counts), sorted(failed))
        index = index[keep].reset_index(drop=True)
        all_centres = all_centres[~all_centres[FIELD_KEY].apply(tuple, axis=1).isin(
            {(str(rows[i]["Metadata_Plate"]), str(rows[i]["Metadata_Well"]), int(rows[i]["Metadata_Site"])) for i in failed})]
        write_table(all_centres.reset_index(drop=True), files["centres"])
    write_table(index, files["index"])
    empty = sorted({str(r["Metadata_Well"]) for r in rows} - set(all_centres["Metadata_Well"]))
    if empty:
        log.warning("plate %s: %d well(s) without any crop, missing from the cache: %s", plate, len(empty), empty)
    log.info("plate %s: %d crop centres (%s, %d px) in %d fields; pretraining sample %d crops; %d field(s) skipped",
             plate, len(all_centres), mode, crop_size, len(rows), len(index), len(skipped))
    return CropCache(index, all_centres.reset_index(drop=True), skipped)


class CropDataset(Dataset):
    """Crops of one or several plates' caches as float32 (5, S, S) tensors; `.index` is their index, concatenated.
    Item k is index row k; its array row is that row's Metadata_Crop."""

    def __init__(self, prefixes: list[str | Path]):
        self.prefixes = [Path(p) for p in prefixes]
        if not self.prefixes:
            raise ValueError("no crop caches given")
        indexes, cache, sizes = [], [], set()
        for k, prefix in enumerate(self.prefixes):
            files = cache_files(prefix)
            array = np.load(files["array"], mmap_mode="r")
            index = pd.read_parquet(files["index"])
            if len(index) and index["Metadata_Crop"].max() >= len(array):
                raise ValueError(f"{files['index']}: rows point past the {len(array)} crops of {files['array']}")
            indexes.append(index)
            cache.append(np.full(len(index), k, np.int64))
            sizes.add(array.shape[1:])
        if len(sizes) != 1:
            raise ValueError(f"crop caches differ in crop shape: {sorted(sizes)}")
        self.shape = sizes.pop()
        self.index = pd.concat(indexes, ignore_index=True)
        self._cache, self._row = np.concatenate(cache), self.index["Metadata_Crop"].to_numpy(np.int64)
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # each process maps the files itself (a memmap pickles as a copy)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._arrays is None:
            self._arrays = [np.load(cache_files(p)["array"], mmap_mode="r") for p in self.prefixes]
        return torch.from_numpy(self._arrays[self._cache[i]][self._row[i]].astype(np.float32))
