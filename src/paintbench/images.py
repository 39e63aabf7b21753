"""Reading one field (all its channels) with checks that name plate, well, site and file.

Shared by illumination correction, the CellProfiler pre-flight check and the ViT data loader, so a
corrupt, truncated, missing or wrongly sized TIFF is reported the same way wherever it is met.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from paintbench.loaddata import field_paths


class BadFieldError(ValueError):
    """A field that cannot be used; the message names plate, well, site and file."""


@dataclass(frozen=True)
class FieldId:
    plate: str
    well: str
    site: int

    @classmethod
    def of(cls, row: pd.Series) -> "FieldId":
        return cls(str(row["Metadata_Plate"]), str(row["Metadata_Well"]), int(row["Metadata_Site"]))

    def __str__(self) -> str:
        return f"plate {self.plate}, well {self.well}, site {self.site}"


def tiff_problem(path: Path) -> str | None:
    """Why a TIFF cannot be used, from its structure alone (no pixel decoding, ~1 ms): None when it looks whole.

    Catches what a transfer or an upload can do to a file: cut short (image data past the end of the file), an
    unreadable header or directory, more or fewer than one 2-D image.
    """
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            pages = tif.pages
            if len(pages) != 1 or pages[0].ndim != 2:
                return f"expected one 2-D image, found {len(pages)} page(s) of shape {pages[0].shape if len(pages) else ()}"
            page = pages.first
            ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts)]
            if not ends or max(ends) > size or min(page.databytecounts) == 0:
                return f"truncated: image data ends at byte {max(ends, default=0)}, the file has {size}"
    except FileNotFoundError:
        return "missing file"
    except Exception as err:  # tifffile raises many types for damaged files
        return f"unreadable TIFF: {type(err).__name__}: {err}"
    return None


def read_image(path: Path, field: FieldId, shape: tuple[int, int] | None = None) -> np.ndarray:
    """One channel image as a 2-D array; errors name the field and the file."""
    if not path.is_file():
        raise BadFieldError(f"{field}: missing file {path}")
    try:
        image = tifffile.imread(path)
    except Exception as err:  # tifffile raises many types for truncated/corrupt data
        raise BadFieldError(f"{field}: unreadable TIFF {path}: {type(err).__name__}: {err}") from err
    if image.ndim != 2:
        raise BadFieldError(f"{field}: {path} has shape {image.shape}, expected a 2-D image")
    if shape is not None and image.shape != tuple(shape):
        raise BadFieldError(f"{field}: {path} is {image.shape[0]}x{image.shape[1]}, the plate's fields are {shape[0]}x{shape[1]}")
    return image


def read_field(row: pd.Series, channels: list[str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """All `channels` of one LoadData row as a (C, H, W) array in the images' own dtype."""
    field = FieldId.of(row)
    planes = [read_image(path, field, shape) for path in field_paths(row, channels)]
    first = planes[0].shape
    for path, plane in zip(field_paths(row, channels), planes):
        if plane.shape != first:
            raise BadFieldError(f"{field}: {path} is {plane.shape}, other channels are {first}")
    return np.stack(planes)
