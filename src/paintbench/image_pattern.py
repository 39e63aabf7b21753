"""File names of a plate's images as a user-set regular expression (config key `image_pattern`).

The pattern is matched against whole file names (`re.fullmatch`) and names, with named groups, where a file
belongs: `well` (A01 or A1) or `row` (A-P or 1-16) with `column` (1-24); `site` and `channel` (the N that the
`channels` map refers to); optionally `plane` (only plane 1 is used) and `plate` (files of other plates are
ignored, so one folder may hold many plates). The default is the Phenix layout of the Cell Painting Gallery.

A local plate folder is listed once (`index_image_folder`) into (well, site, channel) -> file name; the LoadData
table and the QC of missing files are built from that index. A TIFF in the folder that matches nothing is an
error naming the file and the pattern, because a wrong pattern would otherwise look like a plate of missing
fields. Skipped instead: hidden files ('.tmp-' leftovers of killed downloads, macOS '._' files), and unmatched
TIFFs whose name says they are not fields but images derived from them (logged): thumbnails ('thumb', written
by ImageXpress and Harmony exports beside the fields), segmentation outlines, overlays and masks, illumination
functions (what CellProfiler's SaveImages commonly writes back into the image folder).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from paintbench import schema
from paintbench.layout import ROWS, well_name

log = logging.getLogger(__name__)

DEFAULT_IMAGE_PATTERN: str = schema.default("image_pattern")  # the Phenix names of the Gallery
IMAGE_SUFFIXES = (".tif", ".tiff")
DERIVED_IMAGE_MARKS = ("thumb", "outline", "overlay", "mask", "illum")  # case-insensitive parts of a file name
MAX_COLUMN = 24
FieldKey = tuple[str, int, int]  # (well, site, channel)


class ImagePatternError(ValueError):
    """A bad pattern, or a folder whose files the pattern does not describe; the message names file and pattern."""


@dataclass(frozen=True)
class ImageName:
    well: str
    site: int
    channel: int
    plane: int | None = None
    plate: str | None = None


def pattern_problem(pattern: str) -> str | None:
    """What is wrong with an image pattern (does not compile, lacks a required group), or None."""
    try:
        groups = set(re.compile(pattern).groupindex)
    except re.error as err:
        return f"'{pattern}' is not a regular expression: {err}"
    missing = [g for g in ("site", "channel") if g not in groups]
    if "well" not in groups and not {"row", "column"} <= groups:
        missing.append("well (or row and column)")
    if "well" in groups and groups & {"row", "column"}:
        return f"'{pattern}' has a 'well' group and a 'row'/'column' group: use one or the other"
    if missing:
        return f"'{pattern}' lacks the named group(s) {', '.join(missing)} (e.g. (?P<site>\\d+))"
    return None


def compile_pattern(pattern: str) -> re.Pattern[str]:
    problem = pattern_problem(pattern)
    if problem:
        raise ImagePatternError(f"image pattern {problem}")
    return re.compile(pattern)


def _row_number(text: str) -> int:
    """'C' or 'c' or '3' or '03' -> 3; 0 for anything else."""
    if text.isdigit():
        return int(text)
    return ROWS.index(text.upper()) + 1 if len(text) == 1 and text.upper() in ROWS else 0


def _well(groups: dict[str, str | None]) -> str:
    """The normalized well (A01) of a match; ValueError when it is not a plate position."""
    if groups.get("well") is not None:
        shown = groups["well"]
        row_text, column_text = shown[:1], shown[1:]
    else:
        row_text, column_text = groups["row"] or "", groups["column"] or ""
        shown = f"row {row_text}, column {column_text}"
    row = _row_number(row_text)
    column = int(column_text) if column_text.isdigit() else 0
    if not (1 <= row <= len(ROWS) and 1 <= column <= MAX_COLUMN):
        raise ValueError(f"well {shown!r} is not a plate position (rows A-P or 1-16, columns 1-24)")
    return well_name(row, column)


def parse_image_name(name: str, pattern: re.Pattern[str]) -> ImageName | None:
    """The field a file name holds; None when the pattern does not match; ValueError for matched, impossible values."""
    match = pattern.fullmatch(name)
    if match is None:
        return None
    groups = match.groupdict()
    numbers = {}
    for key in ("site", "channel", "plane"):
        value = groups.get(key)
        if value is not None and not value.isdigit():
            raise ValueError(f"group {key!r} is {value!r}, not a number")
        numbers[key] = int(value) if value is not None else None
    return ImageName(_well(groups), numbers["site"], numbers["channel"], numbers["plane"], groups.get("plate"))


def is_image_file(name: str) -> bool:
    """A TIFF that is not hidden (hidden: '.tmp-' leftovers of killed downloads, macOS '._' files)."""
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def is_derived_image(name: str) -> bool:
    """A thumbnail, outline, overlay, mask or illumination image: not a field, even when it is a TIFF."""
    return any(mark in name.lower() for mark in DERIVED_IMAGE_MARKS)


def is_field_image(image: ImageName, plate: str) -> bool:
    """Plane 1 (or no plane) of this plate (or of any plate when the pattern has no plate group)."""
    return image.plane in (None, 1) and image.plate in (None, plate)


def index_names(names: list[str], pattern: str, plate: str, where: str) -> dict[FieldKey, str]:
    """(well, site, channel) -> file name of the plate's field images among `names` (the entries of `where`).

    Raises ImagePatternError for a TIFF that matches nothing (naming the file and the pattern), a match with an
    impossible well or number, or two files of the same (well, site, channel)."""
    regex = compile_pattern(pattern)
    index: dict[FieldKey, str] = {}
    skipped = 0
    for name in sorted(names):
        if not is_image_file(name):
            continue
        try:
            image = parse_image_name(name, regex)
        except ValueError as err:
            raise ImagePatternError(f"plate {plate}: {where}/{name}: {err} (image_pattern '{pattern}')") from err
        if image is None and is_derived_image(name):
            skipped += 1
            continue
        if image is None:
            raise ImagePatternError(
                f"plate {plate}: {where}/{name} does not match the image pattern '{pattern}': set the config key "
                "'image_pattern' (paintbench download --image-pattern) to a regular expression that matches "
                "your file names, or move the file out of the folder")
        if not is_field_image(image, plate):
            continue
        key = (image.well, image.site, image.channel)
        if key in index:
            raise ImagePatternError(
                f"plate {plate}: {where}/{index[key]} and {where}/{name} are both well {image.well}, site {image.site}, "
                f"channel {image.channel} under the image pattern '{pattern}'")
        index[key] = name
    if skipped:
        log.info("plate %s: %d thumbnail or other derived TIFF(s) in %s skipped", plate, skipped, where)
    return index


def index_image_folder(folder: str | Path, pattern: str, plate: str) -> dict[FieldKey, str]:
    """One listing of a plate's folder, indexed with `index_names`; empty when the folder does not exist."""
    path = Path(folder)
    names = [p.name for p in path.iterdir() if p.is_file()] if path.is_dir() else []
    return index_names(names, pattern, plate, str(path))


def folder_digest(folder: str | Path) -> str:
    """A digest of a folder's image files (name, size, modification time in ns); '' when it does not exist."""
    import hashlib

    path = Path(folder)
    if not path.is_dir():
        return ""
    entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(path)
                     if e.is_file() and is_image_file(e.name))
    return hashlib.sha1(repr(entries).encode()).hexdigest()[:16]
