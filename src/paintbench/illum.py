"""Illumination functions per plate and channel, used by both feature branches.

The recipe is CellProfiler's CorrectIlluminationCalculate as the JUMP consortium configures it
(Regular intensity, all images of the plate, median filter, rescaled by a robust minimum), computed
the way CellProfiler 5 computes it so the functions agree with its own to float32 rounding:

1. the mean image of every field of the plate;
2. quantised to integer 16-bit levels by truncation (CellProfiler multiplies its 0-1 image by 65535
   and casts to uint16);
3. a rank median (skimage.filters.rank.median, which counts only the pixels inside the image at its
   borders) over a disk of radius int(size / 2.35 + 0.5) px, CellProfiler's reading of its "smoothing
   filter size" as a full width at half maximum: 213 px for the consortium's 500 px at 1080 px fields;
4. divided by its robust minimum, the value at index int(0.02 n) of the n positive pixels sorted,
   after clipping below it: every value is >= 1 and corrected = image / function keeps the scale.

The filter size is SMOOTHING_FRACTION of the field width (500 px at 1080 px). The rank median keeps
a histogram of the window and scans it for each pixel, so its cost grows with the number of distinct
levels: it runs on the ranks of the levels (exact), and only a mean image with more than MAX_LEVELS
distinct levels is binned into MAX_LEVELS groups of neighbouring levels, within ~0.03% of exact. One
1080 px channel takes 1.2-1.5 s on one core exact (synthetic plates, < 600 levels) and 2.6 s binned,
where the plain uint16 rank median takes 15 s at 44,000 levels. Files are named like the Gallery's:
<plate>_Illum<Channel>.npy (its precomputed functions are fetched by paintbench.s3.fetch_gallery_illum).
"""

from __future__ import annotations

import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from skimage.filters.rank import median as rank_median
from tqdm import tqdm

from paintbench import schema
from paintbench.atomic import atomic_path
from paintbench.images import BadFieldError, FieldId, read_field
from paintbench.loaddata import channel_names
from paintbench.paths import illum_filename
from paintbench.qc import record

log = logging.getLogger(__name__)

SMOOTHING_FRACTION: float = schema.default("illum.smoothing_fraction")  # the consortium's 500 px at 1080 px
ROBUST_MIN_PERCENTILE = 2.0  # CellProfiler's ROBUST_FACTOR 0.02
MAX_LEVELS = 4096  # distinct levels the rank median histograms exactly (see smooth_median)


def _field_or_error(row: pd.Series, channels: list[str]) -> np.ndarray | BadFieldError:
    try:
        return read_field(row, channels)
    except BadFieldError as err:
        return err


def mean_image(table: pd.DataFrame, channels: list[str], threads: int = 2,
               skip_bad_fields: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Per-channel mean over every readable field of the table, as (C, H, W) float64, decoding in threads, and the
    QC records of the fields left out (unreadable or of another size; only with skip_bad_fields, else raised)."""
    rows = [row for _, row in table.iterrows()]
    total: np.ndarray | None = None
    used, skipped = 0, []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        fields = pool.map(lambda row: _field_or_error(row, channels), rows)
        for row, field in tqdm(zip(rows, fields), total=len(rows), desc="illum: reading fields", unit="field",
                               mininterval=2):
            if not isinstance(field, BadFieldError) and total is not None and total.shape != field.shape:
                field = BadFieldError(f"{FieldId.of(row)}: field is {field.shape}, the plate's are {total.shape}")
            if isinstance(field, BadFieldError):
                if not skip_bad_fields:
                    raise field
                log.warning("skipping %s", field)
                fid = FieldId.of(row)
                skipped.append(record(fid.plate, fid.well, fid.site, "illum", str(field)))
                continue
            total = field.astype(np.float64) if total is None else total + field
            used += 1
    if total is None:
        raise ValueError("no readable field to compute an illumination function from")
    return total / used, skipped


def filter_size(width: int, smoothing_fraction: float = SMOOTHING_FRACTION) -> int:
    """The median filter size in px for fields `width` px wide (CellProfiler's "Smoothing filter size")."""
    return max(3, int(round(smoothing_fraction * width)))


def median_disk(size: int) -> np.ndarray:
    """CellProfiler's median footprint for a filter size: a disk of radius int(size / 2.35 + 0.5), x^2 + y^2 <= r^2."""
    radius = max(1, int(size / 2.35 + 0.5))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (x * x + y * y <= radius * radius).astype(np.uint8)


def smooth_median(image: np.ndarray, size: int, max_levels: int = MAX_LEVELS) -> np.ndarray:
    """CellProfiler's median smoothing: rank median over median_disk(size) of the image truncated to uint16 levels.

    The median only compares levels, so it runs on their ranks (0 ... distinct levels - 1) and maps back:
    the same result with a histogram as short as the image has levels. Above `max_levels` levels,
    neighbouring levels are merged into groups of about equal pixel count, each standing for its middle
    pixel's level; the error is then at most the spread of one group, a small fraction of a percent.
    """
    levels = np.clip(image, 0, 65535).astype(np.uint16)  # truncates, as CellProfiler's astype(uint16)
    values, ranks = np.unique(levels, return_inverse=True)
    ranks = ranks.reshape(levels.shape)
    if values.size > max_levels:
        counts = np.bincount(ranks.ravel(), minlength=values.size)
        below = np.cumsum(counts) - counts
        _, group = np.unique(below * max_levels // levels.size, return_inverse=True)  # nondecreasing group per level
        first = np.searchsorted(group, np.arange(group.max() + 1))  # first level of each group
        last = np.append(first[1:], values.size) - 1
        middle = (below[first] + below[last] + counts[last]) / 2  # the middle pixel of each group
        values = values[np.searchsorted(np.cumsum(counts), middle, side="right").clip(max=values.size - 1)]
        ranks = group[ranks]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Bad rank filter performance")  # > 1024 histogram bins
        smoothed = rank_median(ranks.astype(np.uint16), median_disk(size))
    return values[smoothed].astype(np.float64)


def illumination_function(mean: np.ndarray, smoothing_fraction: float = SMOOTHING_FRACTION,
                          robust_min_percentile: float = ROBUST_MIN_PERCENTILE) -> np.ndarray:
    """One channel: smoothed mean image, clipped below at its robust minimum and divided by it (values >= 1)."""
    smoothed = smooth_median(mean, filter_size(mean.shape[1], smoothing_fraction))
    positive = smoothed[smoothed > 0]
    if positive.size == 0:
        raise ValueError("illumination function: the plate's smoothed mean image is zero everywhere")
    index = int(positive.size * robust_min_percentile / 100)
    robust_min = np.partition(positive, index)[index]
    return (np.maximum(smoothed, robust_min) / robust_min).astype(np.float32)


def compute_plate_illum(load_data: pd.DataFrame, out_dir: Path, channels: list[str] | None = None, threads: int = 2,
                        smoothing_fraction: float = SMOOTHING_FRACTION,
                        skip_bad_fields: bool = False) -> tuple[dict[str, Path], list[dict]]:
    """Compute and write the illumination function of each channel (default: all) of one plate's LoadData table;
    returns the written paths and the QC records of the fields left out."""
    plates = load_data["Metadata_Plate"].unique()
    if len(plates) != 1:
        raise ValueError(f"one plate per LoadData table expected, found {list(plates)}")
    plate = str(plates[0])
    channels = channels or channel_names(load_data)
    mean, skipped = mean_image(load_data, channels, threads, skip_bad_fields)
    written = {}
    for channel, channel_mean in zip(channels, mean):
        function = illumination_function(channel_mean, smoothing_fraction)
        written[channel] = save_function(function, out_dir / illum_filename(plate, channel))
        log.info("%s %s: range %.3f-%.3f over %d fields", plate, channel, function.min(), function.max(),
                 len(load_data) - len(skipped))
    return written, skipped


def save_function(function: np.ndarray, path: Path) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, function)
    return path


def load_functions(illum_dir: Path, plate: str, channels: list[str]) -> np.ndarray:
    """(C, H, W) float32 illumination functions of a plate, in `channels` order."""
    return np.stack([np.load(illum_dir / illum_filename(plate, c)).astype(np.float32) for c in channels])


def correct(field: np.ndarray, functions: np.ndarray) -> np.ndarray:
    """Illumination-corrected field (C, H, W) float32: image / function, as CorrectIlluminationApply divides."""
    if field.shape != functions.shape:
        raise BadFieldError(f"field shape {field.shape} does not match the illumination functions {functions.shape}")
    return field.astype(np.float32) / functions
