"""The per-plate crop cache: every field decoded, corrected, normalized and cut into crops once.

Layout (the contract in paintbench.vit): `<prefix>.npy` float16 (N, 5, S, S) in CHANNELS order,
`<prefix>.parquet` one index row per crop (Metadata_Plate, Metadata_Well, Metadata_Site,
Metadata_Crop = row in the array, Metadata_Y, Metadata_X = crop centre in the field, px), and
`<prefix>.norm.json` the plate's normalization. Rows are ordered by well, then site, then crop, so a
well's crops are consecutive. The .npy and .parquet are each written under a temporary name and
renamed; the index goes last, so its presence marks a complete cache.

Choices:
- Two passes, with exact sizes instead of chunk files. Pass 1 ("survey") reads only the DNA channel
  of every field (nuclei mode; tiles mode skips it: counts follow from the field size), segments it
  and keeps the centres (a few bytes per nucleus); it also reads all channels of the sampled
  normalization fields. Pass 2 decodes every field's five channels once and writes its crops into a
  memmap allocated at its final size. Cost: DNA decoded twice (~20% more decoding). Chunk files
  would decode once but write the whole cache twice (10-30 GB per CPJUMP1 plate). Memory holds one
  field per worker plus the centres, whatever the plate size.
- Normalization per plate and channel: x' = (x - low) / (high - low), low/high = the 1st/99.9th
  percentiles (by default) of corrected pixels, pooled from a seeded sample of up to `norm_fields`
  fields (up to 65,536 pixel positions each). Then clipped to [-0.5, 3]: below -0.5 is only camera
  noise under the background; 3x the 99.9th percentile leaves headroom for genuinely bright objects
  (mitotic chromatin, Golgi puncta) while rare debris or saturated spots at 10-100x cannot dominate
  the MAE's squared reconstruction loss. In [-0.5, 3] float16 steps are at most 2^-9 ~ 0.002.
- Nuclei: Gaussian smoothing (sigma 2 px) of the corrected DNA, Otsu threshold, scipy.ndimage.label,
  objects under `min_nucleus_area` px dropped, objects touching the field border dropped (cut
  nuclei, as CellProfiler discards them), centroid of each mask. Touching nuclei merge (no
  watershed): a fast pass for crop centres, not a measurement. Crops are centred on each nucleus and
  reflect-padded where they pass the field border, so border cells keep their centring instead of
  being lost (a 96 px crop would otherwise drop ~17% of a 1080 px field's cells).
- Decoding, correction, normalization and cropping run in torch DataLoader workers (batch_size=None:
  one field per item). Since pass 1 fixes every field's rows, each worker writes its crops straight
  into its rows of the memmap (its own r+ mapping of the temporary .npy, disjoint rows); the main
  process only allocates the file, tracks progress and renames. Sending crops back instead cost ~50
  ms per 1080 px field in shared-memory copies, as much as decoding it. A BadFieldError in a worker
  comes back as a value and is raised again in the main process with its own message (plate, well,
  site, file), and the temporary .npy is removed.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from paintbench import CHANNELS
from paintbench.atomic import atomic_path, write_table
from paintbench.illum import illum_filename
from paintbench.images import BadFieldError, FieldId, read_field

log = logging.getLogger(__name__)

MODES = ("tiles", "nuclei")
CLIP = (-0.5, 3.0)
NORM_PIXELS_PER_FIELD = 65536
SMOOTH_SIGMA = 2.0
MIN_NUCLEUS_AREA = 30
CENTRE_COLUMNS = ("Nuclei_Location_Center_Y", "Nuclei_Location_Center_X")
FIELD_KEY = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
INDEX_COLUMNS = [*FIELD_KEY, "Metadata_Crop", "Metadata_Y", "Metadata_X"]
DNA = CHANNELS.index("DNA")


def cache_files(prefix: str | Path) -> dict[str, Path]:
    """The cache's files; the suffix is appended, so plate names with dots are safe."""
    name = str(prefix)
    return {"array": Path(name + ".npy"), "index": Path(name + ".parquet"), "norm": Path(name + ".norm.json")}


def find_nuclei(dna: np.ndarray, sigma: float = SMOOTH_SIGMA, min_area: int = MIN_NUCLEUS_AREA) -> np.ndarray:
    """(n, 2) int centres (y, x) of nuclei wholly inside the field, in label (raster) order."""
    smooth = ndimage.gaussian_filter(dna.astype(np.float32), sigma)
    if smooth.max() <= smooth.min():
        return np.zeros((0, 2), dtype=np.int64)
    labels, n = ndimage.label(smooth > threshold_otsu(smooth))
    # Areas and centroids by bincount over foreground pixels: ~10x faster than ndimage's per-label statistics.
    pixels = np.flatnonzero(labels)
    label = labels.ravel()[pixels]
    area = np.bincount(label, minlength=n + 1)
    y = np.bincount(label, pixels // labels.shape[1], minlength=n + 1)
    x = np.bincount(label, pixels % labels.shape[1], minlength=n + 1)
    keep = area >= min_area
    keep[np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))] = False  # and label 0
    centres = np.stack([y[keep], x[keep]], axis=1) / area[keep, None]
    return np.rint(centres).astype(np.int64).reshape(-1, 2)


def tile_centres(shape: tuple[int, int], crop_size: int) -> np.ndarray:
    """(n, 2) centres of a grid of non-overlapping tiles, the grid centred in the field (remainder split)."""
    (h, w), s = shape, crop_size
    ny, nx = h // s, w // s
    y0, x0 = (h - ny * s) // 2, (w - nx * s) // 2
    ys, xs = np.meshgrid(y0 + s * np.arange(ny) + s // 2, x0 + s * np.arange(nx) + s // 2, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int64)


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices past either end of 0 ... n-1 mirrored about the edge pixel (numpy's 'reflect' padding)."""
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def extract_crops(field: np.ndarray, centres: np.ndarray, crop_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """(n, C, S, S) float16 crops covering [c - S//2, c - S//2 + S) around each centre, reflected past the border.

    Written into `out` when given (e.g. the rows of a memmap). The field is cast to float16 once (crops of
    nuclei overlap); border crops gather mirrored indices.
    """
    s, p = crop_size, crop_size // 2
    field = field.astype(np.float16, copy=False)
    if out is None:
        out = np.empty((len(centres), field.shape[0], s, s), dtype=np.float16)
    h, w = field.shape[1:]
    for k, (y, x) in enumerate(centres):
        y0, x0 = y - p, x - p
        if y0 >= 0 and x0 >= 0 and y0 + s <= h and x0 + s <= w:
            out[k] = field[:, y0 : y0 + s, x0 : x0 + s]
        else:
            rows, cols = _reflect(np.arange(y0, y0 + s), h), _reflect(np.arange(x0, x0 + s), w)
            out[k] = field[:, rows[:, None], cols[None, :]]
    return out


def _field_seed(seed: int, row: dict) -> list[int]:
    """A seed per field from its identity, so a field's draws do not depend on which other fields are listed."""
    return [seed, zlib.crc32(f"{row['Metadata_Plate']}/{row['Metadata_Well']}/{row['Metadata_Site']}".encode())]


def _cap(centres: np.ndarray, limit: int | None, seed: list[int]) -> np.ndarray:
    if limit is None or len(centres) <= limit:
        return centres
    keep = np.sort(np.random.default_rng(seed).choice(len(centres), size=limit, replace=False))
    return centres[keep]


class _FieldTasks(Dataset):
    """One field per item, run in DataLoader workers.

    job 'survey': nuclei centres and pixel samples; job 'crop': the field's crops, written by the worker
    itself into rows starts[i]:starts[i+1] of the .npy at `array_path` (its own r+ memmap).
    """

    def __init__(self, job: str, rows: list[dict], illum_dir: Path, plate: str, segment: bool = False,
                 sampled: frozenset[int] = frozenset(), centres: list[np.ndarray] | None = None,
                 low: np.ndarray | None = None, high: np.ndarray | None = None, crop_size: int = 0, seed: int = 0,
                 min_nucleus_area: int = MIN_NUCLEUS_AREA, array_path: Path | None = None,
                 starts: np.ndarray | None = None):
        self.job, self.rows, self.illum_dir, self.plate = job, rows, Path(illum_dir), plate
        self.segment, self.sampled, self.centres = segment, sampled, centres
        self.low, self.high, self.crop_size, self.seed = low, high, crop_size, seed
        self.min_nucleus_area, self.array_path, self.starts = min_nucleus_area, array_path, starts
        self._functions: dict[str, np.ndarray] = {}  # per worker, loaded on first use
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __len__(self) -> int:
        return len(self.rows)

    def _corrected(self, row: dict, channels: list[str]) -> np.ndarray:
        field = read_field(pd.Series(row), channels).astype(np.float32)
        for c, name in enumerate(channels):
            if name not in self._functions:
                self._functions[name] = np.load(self.illum_dir / illum_filename(self.plate, name)).astype(np.float32)
            if field[c].shape != self._functions[name].shape:
                raise BadFieldError(f"{FieldId.of(pd.Series(row))}: field is {field[c].shape[0]}x{field[c].shape[1]}, "
                                    f"the illumination function of {name} is {self._functions[name].shape}")
            field[c] /= self._functions[name]
        return field

    def _survey(self, i: int, row: dict) -> dict:
        sampled = i in self.sampled
        field = self._corrected(row, list(CHANNELS) if sampled else ["DNA"])
        result = {"task": i, "centres": np.zeros((0, 2), np.int64), "pixels": np.zeros((0, 0), np.float32)}
        if self.segment:
            result["centres"] = find_nuclei(field[DNA if sampled else 0], min_area=self.min_nucleus_area)
        if sampled:
            flat = field.reshape(field.shape[0], -1)
            n = min(flat.shape[1], NORM_PIXELS_PER_FIELD)
            positions = np.random.default_rng(_field_seed(self.seed, row)).choice(flat.shape[1], size=n, replace=False)
            result["pixels"] = flat[:, np.sort(positions)]
        return result

    def _crop(self, i: int, row: dict) -> dict:
        field = self._corrected(row, list(CHANNELS))
        field -= self.low[:, None, None]
        field /= (self.high - self.low)[:, None, None]
        np.clip(field, *CLIP, out=field)
        if len(self.centres[i]):
            if self._array is None:
                self._array = np.load(self.array_path, mmap_mode="r+")
            extract_crops(field, self.centres[i], self.crop_size, out=self._array[self.starts[i] : self.starts[i + 1]])
        return {"task": i, "crops": len(self.centres[i])}

    def __getitem__(self, i: int) -> dict:
        try:
            return self._survey(i, self.rows[i]) if self.job == "survey" else self._crop(i, self.rows[i])
        except BadFieldError as err:  # returned, not raised: torch would wrap the message in a traceback
            return {"task": i, "error": str(err)}


def _run(tasks: _FieldTasks, indices: list[int], num_workers: int, desc: str):
    """Yield each task's result in order, decoded in `num_workers` worker processes."""
    subset = torch.utils.data.Subset(tasks, indices)
    loader = DataLoader(subset, batch_size=None, shuffle=False, num_workers=num_workers,
                        prefetch_factor=2 if num_workers > 0 else None)
    for item in tqdm(loader, total=len(indices), desc=desc, unit="field", mininterval=2):
        if "error" in item:
            raise BadFieldError(item["error"])
        yield item


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


def build_crop_cache(load_data: pd.DataFrame, illum_dir: str | Path, out_prefix: str | Path, mode: str = "tiles",
                     crop_size: int = 96, num_workers: int = 2, norm_percentiles: tuple[float, float] = (1.0, 99.9),
                     norm_fields: int = 32, seed: int = 0, max_crops_per_field: int | None = None,
                     nuclei_centres: pd.DataFrame | None = None, centre_columns: tuple[str, str] = CENTRE_COLUMNS,
                     min_nucleus_area: int = MIN_NUCLEUS_AREA) -> pd.DataFrame:
    """Write one plate's crop cache (see the module docstring); returns its index table.

    mode 'tiles': a centred grid of non-overlapping crop_size tiles per field. mode 'nuclei': crops centred
    on nuclei found in the DNA channel, or on `nuclei_centres` (columns Metadata_Plate/Well/Site and
    `centre_columns`, y then x, in px) when given. `max_crops_per_field` keeps a seeded random subset.
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
    survey = _FieldTasks("survey", rows, illum_dir, plate, segment=segment, sampled=frozenset(sampled), seed=seed,
                         min_nucleus_area=min_nucleus_area)
    centres: list[np.ndarray] = [np.zeros((0, 2), np.int64)] * len(rows)
    pixels = []
    for item in _run(survey, list(range(len(rows))) if segment else sampled, num_workers, f"{plate}: survey"):
        centres[item["task"]] = item["centres"].numpy()
        if item["pixels"].numel():
            pixels.append(item["pixels"].numpy())
    if mode == "tiles":
        centres = [tile_centres(shape, crop_size)] * len(rows)
    elif nuclei_centres is not None:
        centres = _external_centres(nuclei_centres, rows, shape, centre_columns)
    centres = [_cap(c, max_crops_per_field, _field_seed(seed, row)) for c, row in zip(centres, rows)]

    pooled = np.concatenate(pixels, axis=1)
    low, high = (np.percentile(pooled, q, axis=1) for q in norm_percentiles)
    flat = high <= low
    if flat.any():
        log.warning("plate %s: channel(s) %s have no spread in the sample; scale set to 1",
                    plate, [CHANNELS[c] for c in np.flatnonzero(flat)])
        high = np.where(flat, low + 1.0, high)
    norm = {"plate": plate, "channels": list(CHANNELS), "percentiles": list(norm_percentiles),
            "low": low.tolist(), "high": high.tolist(), "clip": list(CLIP), "fields": len(sampled),
            "pixels": int(pooled.shape[1]), "mode": mode, "crop_size": crop_size}
    with atomic_path(files["norm"]) as tmp:
        tmp.write_text(json.dumps(norm, indent=1) + "\n")

    counts = np.array([len(c) for c in centres], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    with atomic_path(files["array"]) as tmp:
        # Allocated at its final size; each worker writes its fields' rows through its own mapping.
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(total, len(CHANNELS), crop_size, crop_size))
        crop = _FieldTasks("crop", rows, illum_dir, plate, centres=centres, low=low.astype(np.float32),
                           high=high.astype(np.float32), crop_size=crop_size, seed=seed, array_path=tmp, starts=starts)
        for _ in _run(crop, list(range(len(rows))), num_workers, f"{plate}: crops"):
            pass
        del crop  # num_workers=0: the main process's own mapping

    yx = np.concatenate([np.zeros((0, 2), np.int64), *centres]).astype(np.int64)
    index = pd.DataFrame({
        "Metadata_Plate": np.repeat([str(r["Metadata_Plate"]) for r in rows], counts),
        "Metadata_Well": np.repeat([str(r["Metadata_Well"]) for r in rows], counts),
        "Metadata_Site": np.repeat([int(r["Metadata_Site"]) for r in rows], counts).astype(np.int64),
        "Metadata_Crop": np.arange(total, dtype=np.int64), "Metadata_Y": yx[:, 0], "Metadata_X": yx[:, 1],
    })
    write_table(index, files["index"])
    empty = sorted({str(r["Metadata_Well"]) for r in rows} - set(index["Metadata_Well"]))
    if empty:
        log.warning("plate %s: %d well(s) without any crop, missing from the cache: %s", plate, len(empty), empty)
    log.info("plate %s: %d crops (%s, %d px) from %d fields; %d field(s) without crops", plate, total, mode,
             crop_size, len(rows), int((counts == 0).sum()))
    return index


class CropDataset(Dataset):
    """Crops of one or several plates' caches as float32 (5, S, S) tensors; `.index` is their index, concatenated."""

    def __init__(self, prefixes: list[str | Path]):
        self.prefixes = [Path(p) for p in prefixes]
        if not self.prefixes:
            raise ValueError("no crop caches given")
        indexes, lengths, sizes = [], [], set()
        for prefix in self.prefixes:
            files = cache_files(prefix)
            array = np.load(files["array"], mmap_mode="r")
            index = pd.read_parquet(files["index"])
            if len(index) != len(array):
                raise ValueError(f"{files['index']}: {len(index)} rows, but {files['array']} holds {len(array)} crops")
            indexes.append(index)
            lengths.append(len(array))
            sizes.add(array.shape[1:])
        if len(sizes) != 1:
            raise ValueError(f"crop caches differ in crop shape: {sorted(sizes)}")
        self.shape = sizes.pop()
        self.index = pd.concat(indexes, ignore_index=True)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        self._arrays: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}  # each process maps the files itself (a memmap pickles as a copy)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self._arrays is None:
            self._arrays = [np.load(cache_files(p)["array"], mmap_mode="r") for p in self.prefixes]
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return torch.from_numpy(self._arrays[k][i - self._starts[k]].astype(np.float32))
