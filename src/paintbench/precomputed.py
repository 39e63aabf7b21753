"""Precomputed embeddings (config key `precomputed.<name>`): a user's own table as a feature set, scored beside the
others.

The table: Parquet, CSV or CSV.GZ with `Metadata_Plate`, `Metadata_Well`, optionally `Metadata_Site`, and its
features in every other numeric column (other `Metadata_` columns are ignored). Rows may be wells, fields or single
cells: they become well profiles the way paintbench's own embeddings do, the mean of each field's rows, then the mean
of the well's fields (fields weigh equally); without `Metadata_Site` the mean of the well's rows.
`Metadata_Object_Count` counts the rows behind a well, `Metadata_Field_Count` its fields.

Checked against the run, for each plate: the plate must be in the table, every well the run selects must be in it
(the error lists the missing ones), and every well of the table must be on the plate's platemap (the error lists
those that are not); wells the run does not select are left out, and said so in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.profiles import feature_columns

log = logging.getLogger(__name__)

PLATE, WELL, SITE = "Metadata_Plate", "Metadata_Well", "Metadata_Site"
SHOWN = 8  # names listed in an error


def _listed(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" ... ({len(names)} in all)" if len(names) > SHOWN else "")


def read_plate(path: str | Path, plate: str) -> pd.DataFrame:
    """The table's rows of one plate (a Parquet file is filtered while read)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file (precomputed embeddings)")
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if PLATE not in names:
            raise ValueError(f"{path}: no {PLATE} column (columns: {_listed(names)})")
        table = pd.read_parquet(path, filters=[(PLATE, "==", plate)])
    elif path.name.endswith((".csv", ".csv.gz", ".tsv")):
        table = pd.read_csv(path, sep="\t" if path.name.endswith(".tsv") else ",", dtype={PLATE: str, WELL: str})
        if PLATE not in table.columns:
            raise ValueError(f"{path}: no {PLATE} column (columns: {_listed(list(table.columns))})")
        table = table[table[PLATE].astype(str) == plate]
    else:
        raise ValueError(f"{path}: precomputed embeddings must be .parquet, .csv, .csv.gz or .tsv")
    if table.empty:
        raise ValueError(f"{path}: no row of plate {plate} (is the run's plate list the table's?)")
    if WELL not in table.columns:
        raise ValueError(f"{path}: no {WELL} column")
    return table.reset_index(drop=True)


def well_profiles(table: pd.DataFrame, plate: str, wells: list[str], platemap_wells: set[str],
                  source: str = "table") -> pd.DataFrame:
    """One plate's rows as well profiles (see the module docstring), checked against the run's wells."""
    features = [c for c in feature_columns(table) if c not in (SITE,)]
    if not features:
        raise ValueError(f"{source}: no numeric feature column besides the Metadata_ columns")
    table = table.assign(**{WELL: table[WELL].astype(str)})
    present = set(table[WELL])
    off_map = sorted(present - platemap_wells)
    if off_map:
        raise ValueError(f"{source}: plate {plate}: well(s) not on the plate's platemap: {_listed(off_map)}")
    missing = sorted(set(wells) - present)
    if missing:
        raise ValueError(f"{source}: plate {plate}: {len(missing)} well(s) of the run have no row: {_listed(missing)}")
    unused = sorted(present - set(wells))
    if unused:
        log.info("%s: plate %s: %d well(s) the run does not select left out (%s)", source, plate, len(unused),
                 _listed(unused))
    table = table[table[WELL].isin(wells)]
    if SITE not in table.columns:
        table = table.assign(**{SITE: 1})
    values = table[features].astype(np.float64)
    fields = pd.concat([table[[WELL, SITE]], values], axis=1).groupby([WELL, SITE], sort=True)
    field_means, rows = fields[features].mean(), fields.size()
    by_well = field_means.groupby(level=WELL)
    out = by_well.mean().astype(np.float32)
    out.insert(0, "Metadata_Field_Count", by_well.size().astype(np.int64))
    out.insert(0, "Metadata_Object_Count", rows.groupby(level=WELL).sum().astype(np.int64))
    out.insert(0, PLATE, plate)
    return out.reset_index()[[PLATE, WELL, "Metadata_Object_Count", "Metadata_Field_Count", *features]]
