"""One field as the ViT branch sees it: decoded, illumination-corrected, normalized per plate, cut into crops.

Shared by the crop cache (paintbench.vit.crops: pretraining sample) and the embedding stream
(paintbench.vit.stream: every crop, straight from the images), so both see identical crops.

- Normalization per plate and channel: x' = (x - low) / (high - low), low/high from the plate's norm.json
  (percentiles of corrected pixels, see crops.py), then clipped to CLIP = [-0.5, 3]: below -0.5 is only camera
  noise under the background; 3x the 99.9th percentile leaves headroom for genuinely bright objects (mitotic
  chromatin, Golgi puncta) while rare debris or saturated spots at 10-100x cannot dominate the MAE's squared
  reconstruction loss. In [-0.5, 3] float16 steps are at most 2^-9 ~ 0.002.
- Nuclei: Gaussian smoothing (sigma 2 px) of the corrected DNA, Otsu threshold, scipy.ndimage.label, objects
  under `min_nucleus_area` px dropped, objects touching the field border dropped (cut nuclei, as CellProfiler
  discards them), centroid of each mask. Touching nuclei merge (no watershed): a fast pass for crop centres, not
  a measurement. Crops are centred on each nucleus and reflect-padded where they pass the field border, so
  border cells keep their centring instead of being lost.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.filters import threshold_otsu

from paintbench.paths import illum_filename
from paintbench.registry import CHANNELS
from paintbench.images import BadFieldError, FieldId, read_field

CLIP = (-0.5, 3.0)
SMOOTH_SIGMA = 2.0
MIN_NUCLEUS_AREA = 30
FIELD_KEY = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
DNA = CHANNELS.index("DNA")


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


def corner_tiles(shape: tuple[int, int], crop_size: int) -> np.ndarray:
    """(n, 2) centres of non-overlapping tiles laid from the top-left corner, the remainder dropped (the tiling of
    torch's unfold with stride = size, as CellPaintSSL tiles a field)."""
    (h, w), s = shape, crop_size
    ys, xs = np.meshgrid(s * np.arange(h // s) + s // 2, s * np.arange(w // s) + s // 2, indexing="ij")
    return np.stack([ys.ravel(), xs.ravel()], axis=1).astype(np.int64)


def foreground_tiles(dna: np.ndarray, centres: np.ndarray, crop_size: int, fraction: float,
                     otsu_factor: float) -> np.ndarray:
    """The tiles (centres) with at least `fraction` of their pixels above `otsu_factor` x the Otsu threshold of
    the field's DNA channel; the middle tile when none is (a field is never left without an embedding)."""
    if not len(centres):
        return centres
    if dna.max() <= dna.min():
        return centres[[len(centres) // 2]]
    mask = dna > otsu_factor * threshold_otsu(dna)
    p = crop_size // 2
    share = np.array([mask[y - p : y - p + crop_size, x - p : x - p + crop_size].mean() for y, x in centres])
    keep = share >= fraction
    return centres[keep] if keep.any() else centres[[len(centres) // 2]]


def _reflect(i: np.ndarray, n: int) -> np.ndarray:
    """Indices past either end of 0 ... n-1 mirrored about the edge pixel (numpy's 'reflect' padding)."""
    i = np.abs(i)
    return np.where(i >= n, 2 * (n - 1) - i, i)


def extract_crops(field: np.ndarray, centres: np.ndarray, crop_size: int, out: np.ndarray | None = None,
                  dtype: type = np.float16) -> np.ndarray:
    """(n, C, S, S) crops covering [c - S//2, c - S//2 + S) around each centre, reflected past the border.

    Written into `out` when given (e.g. the rows of a memmap). The field is cast to `dtype` once (crops of
    nuclei overlap): float16 for normalized fields, float32 for camera units (float16 ends at 65504).
    """
    s, p = crop_size, crop_size // 2
    field = field.astype(dtype, copy=False)
    if out is None:
        out = np.empty((len(centres), field.shape[0], s, s), dtype=dtype)
    h, w = field.shape[1:]
    for k, (y, x) in enumerate(centres):
        y0, x0 = y - p, x - p
        if y0 >= 0 and x0 >= 0 and y0 + s <= h and x0 + s <= w:
            out[k] = field[:, y0 : y0 + s, x0 : x0 + s]
        else:
            rows, cols = _reflect(np.arange(y0, y0 + s), h), _reflect(np.arange(x0, x0 + s), w)
            out[k] = field[:, rows[:, None], cols[None, :]]
    return out


def field_seed(seed: int, row: dict) -> list[int]:
    """A seed per field from its identity, so a field's draws do not depend on which other fields are listed."""
    return [seed, zlib.crc32(f"{row['Metadata_Plate']}/{row['Metadata_Well']}/{row['Metadata_Site']}".encode())]


def subsample(centres: np.ndarray, limit: int | None, seed: list[int]) -> np.ndarray:
    """At most `limit` of a field's centres, a seeded random subset in their original order."""
    if limit is None or len(centres) <= limit:
        return centres
    keep = np.sort(np.random.default_rng(seed).choice(len(centres), size=limit, replace=False))
    return centres[keep]


class FieldReader:
    """Reads one plate's fields corrected by its illumination functions (loaded once per process) and, given the
    plate's normalization, normalized and clipped. Picklable for DataLoader workers."""

    def __init__(self, illum_dir: str | Path, plate: str, low: np.ndarray | None = None,
                 high: np.ndarray | None = None):
        self.illum_dir, self.plate = Path(illum_dir), plate
        self.low = None if low is None else np.asarray(low, np.float32)
        self.high = None if high is None else np.asarray(high, np.float32)
        self._functions: dict[str, np.ndarray] = {}

    def corrected(self, row: dict, channels: list[str]) -> np.ndarray:
        """(C, H, W) float32 field divided by its plate's illumination functions; BadFieldError names the field."""
        field = read_field(pd.Series(row), channels).astype(np.float32)
        for c, name in enumerate(channels):
            if name not in self._functions:
                self._functions[name] = np.load(self.illum_dir / illum_filename(self.plate, name)).astype(np.float32)
            if field[c].shape != self._functions[name].shape:
                raise BadFieldError(f"{FieldId.of(pd.Series(row))}: field is {field[c].shape[0]}x{field[c].shape[1]}, "
                                    f"the illumination function of {name} is {self._functions[name].shape}")
            field[c] /= self._functions[name]
        return field

    def normalized(self, row: dict) -> np.ndarray:
        """All CHANNELS, corrected, normalized per plate and clipped to CLIP."""
        if self.low is None or self.high is None:
            raise ValueError("FieldReader.normalized needs the plate's normalization (low, high)")
        field = self.corrected(row, list(CHANNELS))
        field -= self.low[:, None, None]
        field /= (self.high - self.low)[:, None, None]
        return np.clip(field, *CLIP, out=field)

    def crops(self, row: dict, centres: np.ndarray, crop_size: int, out: np.ndarray | None = None) -> np.ndarray:
        """The field's (n, C, S, S) float16 crops at `centres` (into `out` when given)."""
        return extract_crops(self.normalized(row), centres, crop_size, out=out)
