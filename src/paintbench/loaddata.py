"""CellProfiler LoadData tables: one row per field, FileName_Orig<Channel>/PathName_Orig<Channel> columns.

Every image source (s3, local, synthetic) ends in the same table, so both feature branches read
images the same way whatever their origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from paintbench.layout import image_filename

FileIndex = Mapping[tuple[str, int, int], str]  # (well, site, channel) -> file name (paintbench.image_pattern)


class MissingImageError(FileNotFoundError):
    """A field lacks a channel file; the message names plate, well, site and file."""


def file_name(files: FileIndex | None, well: str, site: int, channel: int) -> str | None:
    """The file of one channel of one field: from the folder's index, or its Phenix name when there is no index
    (None when the index has no such file)."""
    return image_filename(well, site, channel) if files is None else files.get((well, site, channel))


def load_data_table(
    plate: str,
    image_dir: str | Path,
    wells: list[str],
    sites: list[int],
    channels: dict[str, int],
    check_files: bool = True,
    exclude: set[tuple[str, int]] = frozenset(),
    files: FileIndex | None = None,
) -> pd.DataFrame:
    """The LoadData table of the selected fields of one plate, less the (well, site) fields in `exclude`.

    `channels` maps Cell Painting names (DNA, ER, ...) to file channel numbers. Paths are absolute
    so the table works from any working directory (CellProfiler resolves PathName_ as given). `files` is the
    folder's index under the run's image pattern; without it, files have Phenix names.
    """
    folder = Path(image_dir).resolve()
    rows = []
    for well in wells:
        for site in sites:
            if (well, site) in exclude:
                continue
            row: dict[str, object] = {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site}
            for name, number in channels.items():
                filename = file_name(files, well, site, number)
                if filename is None or (check_files and not (folder / filename).is_file()):
                    raise MissingImageError(
                        f"plate {plate}, well {well}, site {site}: channel {name} (ch{number}) missing: "
                        f"{folder / filename if filename else f'no file in {folder} matches the image pattern'}"
                    )
                row[f"FileName_Orig{name}"] = filename
                row[f"PathName_Orig{name}"] = str(folder)
            rows.append(row)
    if not rows:
        raise ValueError(f"plate {plate}: no fields selected (wells={wells!r}, sites={sites!r})")
    return pd.DataFrame(rows)


def channel_names(table: pd.DataFrame) -> list[str]:
    """Channel names present in a LoadData table, in column order."""
    return [c.removeprefix("FileName_Orig") for c in table.columns if c.startswith("FileName_Orig")]


def field_paths(row: pd.Series, channels: list[str]) -> list[Path]:
    """The file of each channel of one LoadData row, in `channels` order."""
    return [Path(row[f"PathName_Orig{c}"]) / row[f"FileName_Orig{c}"] for c in channels]


def select_channels(table: pd.DataFrame, channels: list[str]) -> pd.DataFrame:
    """The Metadata_ columns plus the FileName_/PathName_ columns of `channels` only."""
    wanted = {f"{kind}_Orig{c}" for c in channels for kind in ("FileName", "PathName")}
    return table[[c for c in table.columns if c.startswith("Metadata_") or c in wanted]]
