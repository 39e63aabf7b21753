"""Illumination functions per plate and channel, used by both feature branches.

The recipe is CellProfiler's CorrectIlluminationCalculate as the JUMP consortium configures it
(all images of the plate, median-filter smoothing, rescaled by a robust minimum): the mean image of
every field of the plate, smoothed by a median filter about half a field wide (500 px at 1080 px),
divided by its 2nd percentile so corrected = image / function keeps the image's scale. The median
filter runs on a block-averaged copy (a function this smooth loses nothing to a 4x4 block mean), which
makes it seconds instead of minutes. Files are named like the Gallery's: <plate>_Illum<Channel>.npy.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from paintbench.atomic import atomic_path
from paintbench.images import BadFieldError, read_field
from paintbench.loaddata import channel_names

log = logging.getLogger(__name__)

SMOOTHING_FRACTION = 500 / 1080  # the consortium's median filter size relative to a CPJUMP1 field
ROBUST_MIN_PERCENTILE = 2.0


def illum_filename(plate: str, channel: str) -> str:
    return f"{plate}_Illum{channel}.npy"


def mean_image(table: pd.DataFrame, channels: list[str], threads: int = 2, skip: set[int] | None = None) -> np.ndarray:
    """Per-channel mean over every field of the table, as (C, H, W) float64, decoding in threads."""
    rows = [row for i, row in table.iterrows() if not skip or i not in skip]
    total: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=threads) as pool:
        fields = pool.map(lambda row: read_field(row, channels), rows)
        for field in tqdm(fields, total=len(rows), desc="illum: reading fields", unit="field", mininterval=2):
            total = field.astype(np.float64) if total is None else total + field
            if total.shape != field.shape:
                raise BadFieldError(f"field shapes differ within the plate: {total.shape} vs {field.shape}")
    if total is None:
        raise ValueError("no fields to compute an illumination function from")
    return total / len(rows)


def smooth_median(image: np.ndarray, size: int, block: int = 4) -> np.ndarray:
    """Median filter of `size` px, computed on a `block`-averaged copy and interpolated back."""
    height, width = image.shape
    block = max(1, min(block, size // 8 or 1))
    cropped = image[: height - height % block, : width - width % block]
    small = cropped.reshape(cropped.shape[0] // block, block, cropped.shape[1] // block, block).mean(axis=(1, 3))
    smoothed = ndimage.median_filter(small, size=max(1, size // block), mode="reflect")
    zoom = (height / smoothed.shape[0], width / smoothed.shape[1])
    return ndimage.zoom(smoothed, zoom, order=1, mode="nearest", grid_mode=True)[:height, :width]


def illumination_function(mean: np.ndarray, smoothing_fraction: float = SMOOTHING_FRACTION,
                          robust_min_percentile: float = ROBUST_MIN_PERCENTILE) -> np.ndarray:
    """One channel: smoothed mean image divided by its robust minimum (values mostly >= 1)."""
    size = max(3, int(round(smoothing_fraction * mean.shape[1])))
    smoothed = smooth_median(mean, size)
    robust_min = np.percentile(smoothed, robust_min_percentile)
    if not robust_min > 0:
        raise ValueError("illumination function: the plate's mean image is zero at its robust minimum")
    return np.maximum(smoothed / robust_min, 1.0).astype(np.float32)


def compute_plate_illum(load_data: pd.DataFrame, out_dir: Path, channels: list[str] | None = None, threads: int = 2,
                        smoothing_fraction: float = SMOOTHING_FRACTION) -> dict[str, Path]:
    """Compute and write the illumination function of each channel (default: all) of one plate's LoadData table."""
    plates = load_data["Metadata_Plate"].unique()
    if len(plates) != 1:
        raise ValueError(f"one plate per LoadData table expected, found {list(plates)}")
    plate = str(plates[0])
    channels = channels or channel_names(load_data)
    mean = mean_image(load_data, channels, threads)
    written = {}
    for channel, channel_mean in zip(channels, mean):
        function = illumination_function(channel_mean, smoothing_fraction)
        written[channel] = save_function(function, out_dir / illum_filename(plate, channel))
        log.info("%s %s: range %.3f-%.3f over %d fields", plate, channel, function.min(), function.max(), len(load_data))
    return written


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


def fetch_gallery_illum(plate: str, batch: str, channels: list[str], out_dir: Path, bucket: str, gallery_prefix: str,
                        endpoint_url: str | None = None, anonymous: bool = True, max_attempts: int = 6) -> dict[str, Path]:
    """The consortium's precomputed functions: images/<batch>/illum/<plate>/<plate>_Illum<Channel>.npy."""
    from paintbench.download import DownloadError, RemoteObject, download_file, list_objects, make_client

    client = make_client(endpoint_url, anonymous, max_attempts, workers=2)
    prefix = f"{gallery_prefix}/images/{batch}/illum/{plate}/"
    listed = {obj.key.rsplit("/", 1)[-1]: obj for obj in list_objects(client, bucket, prefix)}
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for channel in channels:
        name = illum_filename(plate, channel)
        if name not in listed:
            raise DownloadError(f"plate {plate}: no precomputed illumination function s3://{bucket}/{prefix}{name} "
                                f"(found: {sorted(listed) or 'nothing'})")
        obj: RemoteObject = listed[name]
        download_file(client, bucket, obj, out_dir / name, max_attempts)
        written[channel] = out_dir / name
    return written
