"""Holes in the data: the fields a plate lacks or that cannot be read, recorded per stage and per plate.

Every stage that reads images records what it left out in one table format (QC_COLUMNS): the download (fields
or channels the bucket or folder does not have, truncated objects), illumination, CellProfiler and the ViT crops
(fields that cannot be decoded, when `qc.skip_bad_fields` allows skipping). Each stage writes its own fragment,
since a Snakemake output belongs to one rule; `paintbench plate-qc` joins a plate's fragments into
`results_dir/qc/<plate>.tsv`, with one more row per requested well left without any usable field (dropped from
the profiles), and the report reads those tables.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

QC_COLUMNS = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "channel", "stage", "reason"]
WELL_DROPPED = "no usable field: well dropped from the profiles"


class TooManyMissingError(RuntimeError):
    """A plate misses more of its requested fields than `qc.max_missing_fraction` allows (or all of them)."""


def qc_table(rows: list[dict] | None = None) -> pd.DataFrame:
    """A QC table with the standard columns (missing keys are empty)."""
    table = pd.DataFrame(rows or [], columns=QC_COLUMNS)
    table["Metadata_Site"] = pd.to_numeric(table["Metadata_Site"], errors="coerce").astype("Int64")
    return table


def record(plate: str, well: str, site: int | None, stage: str, reason: str, channel: str | None = None) -> dict:
    return {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site, "channel": channel,
            "stage": stage, "reason": reason}


def check_missing_fraction(plate: str, n_requested: int, n_missing: int, max_fraction: float) -> None:
    """Raise when nothing is left of a plate or more than `max_fraction` of its requested fields are missing."""
    if n_requested and n_missing >= n_requested:
        raise TooManyMissingError(f"plate {plate}: none of its {n_requested} requested field(s) is complete; "
                                  "nothing to process.")
    if n_requested and n_missing / n_requested > max_fraction:
        raise TooManyMissingError(
            f"plate {plate}: {n_missing} of {n_requested} requested fields ({n_missing / n_requested:.1%}) are missing "
            f"or unreadable, more than qc.max_missing_fraction {max_fraction:g} allows.")
    if n_missing:
        log.warning("plate %s: %d of %d requested field(s) missing or unreadable: left out and recorded",
                    plate, n_missing, n_requested)


def read_fragment(path: str | Path) -> pd.DataFrame:
    """One stage's QC table (TSV or Parquet; an older table without `channel` gets an empty one)."""
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, sep="\t", dtype={"channel": str})
    return qc_table(table.reindex(columns=QC_COLUMNS).to_dict("records"))


def concat_fragments(fragments: list[str | Path]) -> pd.DataFrame:
    """The records of several QC tables in one (every fragment must exist: each is some stage's declared output)."""
    parts = [read_fragment(p) for p in fragments if Path(p).stat().st_size]
    return pd.concat(parts, ignore_index=True) if parts else qc_table()


def plate_qc(fragments: list[str | Path], requested_wells: list[str], load_data: pd.DataFrame) -> pd.DataFrame:
    """One plate's QC table: every stage's records, then the requested wells left without a usable field."""
    table = concat_fragments(fragments)
    plate = str(load_data["Metadata_Plate"].iloc[0]) if len(load_data) else (str(table["Metadata_Plate"].iloc[0])
                                                                             if len(table) else "")
    fields = load_data[["Metadata_Well", "Metadata_Site"]].astype({"Metadata_Site": int})
    skipped = table.loc[table["stage"] != "download", ["Metadata_Well", "Metadata_Site"]].dropna()
    skipped = set(zip(skipped["Metadata_Well"], skipped["Metadata_Site"].astype(int)))
    usable = {w for w, s in zip(fields["Metadata_Well"], fields["Metadata_Site"]) if (w, s) not in skipped}
    dropped = [w for w in requested_wells if w not in usable]
    if dropped:
        log.warning("plate %s: %d well(s) without any usable field, dropped from the profiles: %s",
                    plate, len(dropped), dropped[:10])
    rows = [record(plate, well, None, "wells", WELL_DROPPED) for well in dropped]
    return pd.concat([table, qc_table(rows)], ignore_index=True) if rows else table


def summarize(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per plate: missing images, skipped fields per stage, wells dropped (the report's QC section)."""
    rows = []
    for plate, table in tables.items():
        downloaded = table[table["stage"] == "download"]
        rows.append({"plate": plate,
                     "missing or truncated images": int(len(downloaded)),
                     "fields left out at download": int(downloaded[["Metadata_Well", "Metadata_Site"]]
                                                        .drop_duplicates().shape[0]),
                     **{f"fields skipped ({stage})": int((table["stage"] == stage).sum())
                        for stage in ("illum", "cellprofiler", "vit_crops")},
                     "wells dropped": int((table["stage"] == "wells").sum())})
    return pd.DataFrame(rows)
