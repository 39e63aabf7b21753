"""The download stage: one plate's images from its source (s3: fetched from the Gallery; local: found in a folder;
synthetic: generated with a known answer), then the LoadData table of its complete fields and the QC records of
every image that is missing or damaged.

A field with a missing or damaged channel is left out of the LoadData table and recorded; a plate missing more
than `qc.max_missing_fraction` of its requested fields (or all of them) fails, naming the plate and the count.
Damage is judged from each TIFF's structure (~1 ms a file), so no pixel is decoded here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from paintbench.atomic import read_table, write_table
from paintbench.image_pattern import index_image_folder
from paintbench.images import tiff_problem
from paintbench.layout import all_wells
from paintbench.loaddata import FileIndex, file_name, load_data_table
from paintbench.metadata import Plate
from paintbench.qc import TooManyMissingError, check_missing_fraction, qc_table, record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Source:
    """Where the Gallery (or another S3 endpoint) is, and how to fetch from it."""

    bucket: str
    gallery_prefix: str
    endpoint_url: str | None
    anonymous: bool
    workers: int
    max_attempts: int


@dataclass(frozen=True)
class SyntheticSource:
    """The generator's settings (synthetic.*) and the ground truth whose phenotypes it plants."""

    ground_truth: Path
    seed: int
    field_size: int
    cells_per_field: int
    metadata_dir: str | None = None
    position_sd: float = 0.0


def field_problems(plate: str, image_dir: str | Path, wells: list[str], sites: list[int], channels: dict[str, int],
                   known: set[tuple[str, int]] = frozenset(), files: FileIndex | None = None) -> list[dict]:
    """QC records of every channel file of the selected fields that is missing or damaged (TIFF structure only);
    fields in `known` (already recorded, e.g. not in the bucket) are not looked at again. `files` is the folder's
    index under the run's image pattern; without it, files have Phenix names."""
    folder = Path(image_dir)
    problems = []
    for well in wells:
        for site in sites:
            if (well, site) in known:
                continue
            for name, number in channels.items():
                filename = file_name(files, well, site, number)
                if filename is None:
                    problems.append(record(plate, well, site, "download", f"missing file: no file of channel {number} "
                                           f"in {folder} matches the image pattern", channel=name))
                    continue
                path = folder / filename
                problem = "missing file" if not path.is_file() else tiff_problem(path)
                if problem:
                    problems.append(record(plate, well, site, "download", f"{problem}: {path}", channel=name))
    return problems


def fetch_images(plate: Plate, wells: list[str], sites: list[int], channels: dict[str, int], image_dir: Path,
                 image_pattern: str, source: S3Source | SyntheticSource | None) -> list[dict]:
    """Fetch (S3Source) or generate (SyntheticSource) the plate's images into image_dir; a local source (None) has
    them already. Returns the QC records of the images the source does not have."""
    if isinstance(source, S3Source):
        from paintbench.s3 import download_plate

        summary = download_plate(plate.barcode, plate.batch, wells, sites, sorted(channels.values()), image_dir,
                                 bucket=source.bucket, gallery_prefix=source.gallery_prefix,
                                 endpoint_url=source.endpoint_url, workers=source.workers,
                                 max_attempts=source.max_attempts, anonymous=source.anonymous,
                                 image_pattern=image_pattern)
        names = {f"ch{number}": name for name, number in channels.items()}
        log.info("plate %s: %d listed, %d fetched, %d already complete, %.1f MB", plate.barcode, summary.n_listed,
                 summary.n_downloaded, summary.n_skipped_complete, summary.bytes_downloaded / 1e6)
        return [{**r, "channel": names.get(r["channel"], r["channel"])} for r in summary.missing]
    if isinstance(source, SyntheticSource):
        from paintbench.synthetic import generate_plate

        fields = generate_plate(plate.barcode, wells, sites, channels, read_table(source.ground_truth), image_dir,
                                field_size=source.field_size, cells_per_field=source.cells_per_field,
                                seed=source.seed, metadata_dir=source.metadata_dir,
                                position_sd=source.position_sd)
        write_table(fields, image_dir / "synthetic_fields.parquet")
        log.info("plate %s: generated %d fields, %d cells", plate.barcode, len(fields), fields["n_cells"].sum())
    return []


def missing_summary(records: list[dict], files: FileIndex, sites: list[int], channels: dict[str, int]) -> str:
    """What is missing, by site and channel, beside what the plate's images have: which key to change."""
    found_sites = sorted({site for _, site, _ in files})
    found_channels = sorted({channel for _, _, channel in files})
    absent_sites = [s for s in sites if s not in found_sites]
    absent_channels = [f"{name} (ch{number})" for name, number in channels.items() if number not in found_channels]
    parts = []
    if absent_sites:
        parts.append(f"site(s) {', '.join(map(str, absent_sites))} are in no file (config key 'sites')")
    if absent_channels:
        parts.append(f"channel(s) {', '.join(absent_channels)} are in no file (config key 'channels')")
    if not parts:
        parts.append(f"{len(records)} image(s) missing or damaged in the requested fields")
    have = (f"the plate's images have sites {', '.join(map(str, found_sites)) or 'none'} and channels "
            f"{', '.join(map(str, found_channels)) or 'none'}")
    return f"Missing: {'; '.join(parts)}; {have}."


def prepare_plate(plate: Plate, wells: list[str] | str, sites: list[int] | str, channels: dict[str, int],
                  image_dir: str | Path, image_pattern: str, source: S3Source | SyntheticSource | None,
                  max_missing_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(LoadData table of the plate's complete fields, QC table of what is missing or damaged); wells and sites
    may be 'all' (every position of the plate's format, every field of its Sites_per_well)."""
    wells = all_wells(plate.format) if wells in ("all", ["all"]) else list(wells)
    sites = list(range(1, plate.sites_per_well + 1)) if sites == "all" else list(sites)
    image_dir = Path(image_dir)
    records = fetch_images(plate, wells, sites, channels, image_dir, image_pattern, source)
    known = {(r["Metadata_Well"], int(r["Metadata_Site"])) for r in records}
    files: FileIndex = index_image_folder(image_dir, image_pattern, plate.barcode)  # one listing of the folder
    records += field_problems(plate.barcode, image_dir, wells, sites, channels, known, files)
    incomplete = {(r["Metadata_Well"], int(r["Metadata_Site"])) for r in records}
    try:
        check_missing_fraction(plate.barcode, len(wells) * len(sites), len(incomplete), max_missing_fraction)
    except TooManyMissingError as error:
        error.records = qc_table(records)  # what the job found, kept by the command although the job fails
        raise TooManyMissingError(f"{error} {missing_summary(records, files, sites, channels)}") from error
    table = load_data_table(plate.barcode, image_dir, wells, sites, channels, exclude=incomplete, files=files)
    log.info("plate %s: LoadData table with %d fields (%d field(s) left out)", plate.barcode, len(table),
             len(incomplete))
    return table, qc_table(records)
