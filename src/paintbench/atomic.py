"""Atomic file output: write to a temporary name beside the target, rename when complete.

A killed job therefore leaves either the old file, no file, or a `.tmp-*` file that no rule
ever treats as an output: never a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pandas as pd

PARQUET_ROW_GROUP = 50_000
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes 0600 files; outputs should carry the usual permissions on shared clusters.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically; the format follows the suffix (.parquet, .csv, .tsv)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if target.suffix == ".parquet":
            # Bounded row groups keep streaming readers (aggregation) at one group's worth of memory.
            frame.to_parquet(tmp, index=False, row_group_size=PARQUET_ROW_GROUP)
        elif target.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        elif target.suffix == ".tsv":
            frame.to_csv(tmp, index=False, sep="\t")
        else:
            raise ValueError(f"{target}: unknown table format {target.suffix!r} (use .parquet, .csv or .tsv)")
    return target


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a table written by `write_table` (or a user's .csv/.csv.gz/.tsv/.parquet)."""
    name = str(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    if name.endswith((".tsv", ".tsv.gz", ".txt")):
        return pd.read_csv(path, sep="\t")
    return pd.read_csv(path)


def concat_parquet(paths: list[str | os.PathLike], output: str | os.PathLike) -> int:
    """Stream row groups of several Parquet files with one schema into one file; returns the row count.

    Files without rows (e.g. a shard whose fields were all skipped) are passed over; a file whose
    columns differ from the others is an error naming it.
    """
    import pyarrow.parquet as pq

    files = [pq.ParquetFile(p) for p in paths]
    non_empty = [(p, f) for p, f in zip(paths, files) if f.metadata.num_rows > 0]
    rows = 0
    with atomic_path(output) as tmp:
        if not non_empty:
            pd.DataFrame().to_parquet(tmp)
            return 0
        schema = non_empty[0][1].schema_arrow
        with pq.ParquetWriter(tmp, schema) as writer:
            for path, handle in non_empty:
                if handle.schema_arrow.names != schema.names:
                    raise ValueError(f"{path}: columns differ from {non_empty[0][0]}")
                for group in range(handle.num_row_groups):
                    table = handle.read_row_group(group).cast(schema)
                    writer.write_table(table)
                    rows += table.num_rows
    return rows
