"""Names of wells (96- and 384-well plates) and image files in the Cell Painting Gallery / Phenix layout used by CPJUMP1.

Other file layouts are read through the `image_pattern` setting (paintbench.image_pattern); `image_filename` stays
what writes Phenix names (the synthetic source, tests).
"""

from __future__ import annotations

import re
from functools import lru_cache

ROWS = "ABCDEFGHIJKLMNOP"
N_COLUMNS = 24
WELL_PATTERN = re.compile(r"^([A-P])(0[1-9]|1[0-9]|2[0-4])$")
PLATE_FORMATS = {96: (8, 12), 384: (16, 24)}  # wells per plate -> (rows, columns)


def all_wells(plate_format: int = 384) -> list[str]:
    """Every well of a plate, row-major: A01 ... P24 (384), A01 ... H12 (96)."""
    rows, columns = PLATE_FORMATS[plate_format]
    return [f"{row}{col:02d}" for row in ROWS[:rows] for col in range(1, columns + 1)]


def in_plate_format(well: str, plate_format: int) -> bool:
    """Whether `well` (A01 form) is a position of a plate of that many wells."""
    return well in _well_sets()[plate_format]


def infer_plate_format(wells: list[str]) -> int:
    """96 when every well lies within A01 ... H12, else 384."""
    return 96 if all(in_plate_format(w, 96) for w in wells) else 384


@lru_cache(maxsize=1)
def _well_sets() -> dict[int, frozenset[str]]:
    return {n: frozenset(all_wells(n)) for n in PLATE_FORMATS}


def parse_well(well: str) -> tuple[int, int]:
    """'C03' -> (3, 3): 1-based row and column."""
    match = WELL_PATTERN.match(well)
    if not match:
        raise ValueError(f"bad well name {well!r}: expected a 384-well name A01 ... P24")
    return ROWS.index(match.group(1)) + 1, int(match.group(2))


def well_name(row: int, column: int) -> str:
    return f"{ROWS[row - 1]}{column:02d}"


def image_filename(well: str, site: int, channel: int, plane: int = 1) -> str:
    """The Phenix file name of one channel of one field, e.g. r01c01f01p01-ch1sk1fk1fl1.tiff."""
    row, column = parse_well(well)
    return f"r{row:02d}c{column:02d}f{site:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff"

