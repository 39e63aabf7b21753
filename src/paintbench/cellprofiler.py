"""The CellProfiler branch: run real CellProfiler (headless) on one shard of a plate, to Parquet single cells.

A shard is a plate x a group of wells. Before CellProfiler starts, every field of the shard is decoded
once (a few tens of ms per field against ~a minute of CellProfiler per 1080x1080 field): a corrupt,
truncated, missing or wrongly sized image fails the shard with a message naming plate, well, site and
file, or is skipped and recorded in the shard's QC table when the configuration says so.

Single-cell tables are written with pyarrow, not CytoTable: a shard's CSVs are small, pandas/pyarrow
already are dependencies, and the merge rule (Cells + Cytoplasm + Nuclei by parent object, the way the
consortium's profiles are built) is a few lines; CytoTable would add a second heavy environment.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.registry import CHANNELS
from paintbench.atomic import write_table
from paintbench.paths import illum_filename
from paintbench.images import BadFieldError, FieldId, read_field
from paintbench.loaddata import select_channels
from paintbench.qc import qc_table, record

log = logging.getLogger(__name__)

OBJECTS = ("Cells", "Cytoplasm", "Nuclei")  # the compartment prefixes of the single-cell table


class CellProfilerError(RuntimeError):
    """CellProfiler exited with an error; the message carries the end of its log."""


def shard_wells(wells: list[str], wells_per_shard: int) -> list[list[str]]:
    """Consecutive groups of at most `wells_per_shard` wells, as even as possible (12 wells by 10 -> 6 + 6,
    not 10 + 2: each CellProfiler start costs ~10 s). Every well lives in exactly one shard, which the
    streaming aggregation relies on."""
    n_shards = -(-len(wells) // wells_per_shard)
    bounds = [round(i * len(wells) / n_shards) for i in range(n_shards + 1)]
    return [wells[start:stop] for start, stop in zip(bounds, bounds[1:])]


def with_illum_columns(load_data: pd.DataFrame, illum_dir: Path, channels: list[str]) -> pd.DataFrame:
    """Add FileName_Illum<Ch>/PathName_Illum<Ch> so LoadData hands CellProfiler the plate's functions."""
    table = load_data.copy()
    for channel in channels:
        plate = str(table["Metadata_Plate"].iloc[0])
        path = illum_dir / illum_filename(plate, channel)
        if not path.is_file():
            raise FileNotFoundError(f"plate {plate}: illumination function missing: {path}")
        table[f"FileName_Illum{channel}"] = path.name
        table[f"PathName_Illum{channel}"] = str(path.parent.resolve())
    return table


def preflight(load_data: pd.DataFrame, channels: list[str], skip_bad_fields: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every field; return (usable fields, QC records of skipped ones) or raise BadFieldError."""
    shape: tuple[int, int] | None = None
    keep, skipped = [], []
    for index, row in load_data.iterrows():
        try:
            field = read_field(row, channels, shape)
            shape = shape or field.shape[1:]
            keep.append(index)
        except BadFieldError as err:
            if not skip_bad_fields:
                raise
            log.warning("skipping %s", err)
            fid = FieldId.of(row)
            skipped.append(record(fid.plate, fid.well, fid.site, "cellprofiler", str(err)))
    return load_data.loc[keep], qc_table(skipped)


def run_cellprofiler(executable: str, pipeline: Path, load_data_csv: Path, out_dir: Path, log_path: Path) -> float:
    """One headless CellProfiler run over a LoadData CSV; returns its wall time in seconds."""
    scratch = Path(tempfile.mkdtemp(prefix="paintbench-cp-"))
    command = [executable, "-c", "-r", "-p", str(pipeline), "--data-file", str(load_data_csv),
               "-o", str(out_dir), "-t", str(scratch), "-e", "imageio_reader"]
    env = {**os.environ, "MPLCONFIGDIR": str(scratch / "mpl")}
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("running: %s", " ".join(command))
    started = time.perf_counter()
    try:
        with open(log_path, "w") as handle:
            status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    if status != 0 or not (out_dir / "Image.csv").is_file():
        tail = Path(log_path).read_text()[-3000:]
        raise CellProfilerError(f"CellProfiler failed (exit {status}) on {load_data_csv}; end of its log:\n{tail}")
    return elapsed


def _object_table(out_dir: Path, name: str) -> pd.DataFrame:
    table = pd.read_csv(out_dir / f"{name}.csv", engine="pyarrow")
    keep_as_is = {"ImageNumber", "ObjectNumber"}
    renamed = {c: f"{name}_{c}" for c in table.columns if c not in keep_as_is and not c.startswith("Metadata_")}
    return table.drop(columns=[c for c in table.columns if c.startswith("Metadata_")]).rename(columns=renamed)


def single_cell_table(out_dir: Path) -> pd.DataFrame:
    """Cells, their Cytoplasm and their Nuclei side by side, one row per cell, with Metadata_ keys.

    Cells are grown from nuclei (same object number as their parent nucleus) and cytoplasm is cells
    minus nuclei (same number as its cell): we still join on the recorded parent columns.
    """
    image = pd.read_csv(out_dir / "Image.csv", engine="pyarrow")
    metadata = image[["ImageNumber", "Metadata_Plate", "Metadata_Well", "Metadata_Site"]]
    cells = _object_table(out_dir, "Cells")
    cytoplasm = _object_table(out_dir, "Cytoplasm")
    nuclei = _object_table(out_dir, "Nuclei")
    merged = cells.merge(
        cytoplasm.drop(columns="ObjectNumber"), left_on=["ImageNumber", "ObjectNumber"],
        right_on=["ImageNumber", "Cytoplasm_Parent_Cells"], how="inner", validate="one_to_one",
    ).merge(
        nuclei.rename(columns={"ObjectNumber": "Nuclei_ObjectNumber"}),
        left_on=["ImageNumber", "Cells_Parent_Nuclei"], right_on=["ImageNumber", "Nuclei_ObjectNumber"],
        how="inner", validate="one_to_one",
    )
    merged = metadata.merge(merged, on="ImageNumber", how="inner").rename(columns={"ObjectNumber": "Metadata_ObjectNumber"})
    merged["Metadata_Site"] = merged["Metadata_Site"].astype(int)
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    features = [c for c in merged.columns if c.split("_", 1)[0] in OBJECTS and c not in keys
                and not c.endswith(("_ObjectNumber", "_Parent_Cells", "_Parent_Nuclei", "_Children_Cells_Count",
                                    "_Children_Cytoplasm_Count"))]
    numeric = merged[features].apply(pd.to_numeric, errors="coerce").astype(np.float32)
    return pd.concat([merged[keys].reset_index(drop=True), numeric.reset_index(drop=True)], axis=1).sort_values(keys)


def run_shard(load_data: pd.DataFrame, wells: list[str], illum_dir: Path, executable: str, pipeline: Path,
              output: Path, qc_output: Path, skip_bad_fields: bool = False, work_dir: Path | None = None) -> pd.DataFrame:
    """Run CellProfiler on the `wells` of one plate's LoadData table; write single cells and QC atomically."""
    shard = load_data[load_data["Metadata_Well"].isin(wells)]
    if shard.empty:
        raise ValueError(f"none of the wells {wells} is in the LoadData table")
    channels = [c for c in CHANNELS if f"FileName_Orig{c}" in shard.columns]
    usable, qc = preflight(shard, channels, skip_bad_fields)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".cp-", dir=work_dir or output.parent))
    try:
        if usable.empty:
            cells = pd.DataFrame(columns=["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"])
        else:
            csv = work / "load_data.csv"
            with_illum_columns(select_channels(usable, channels), illum_dir, channels).to_csv(csv, index=False)
            seconds = run_cellprofiler(executable, pipeline, csv, work / "out", output.with_suffix(".cellprofiler.log"))
            cells = single_cell_table(work / "out")
            log.info("CellProfiler: %d fields, %d cells, %d features in %.1f s (%.1f s/field)", len(usable), len(cells),
                     cells.shape[1] - 4, seconds, seconds / len(usable))
        write_table(qc, qc_output)
        write_table(cells, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return cells
