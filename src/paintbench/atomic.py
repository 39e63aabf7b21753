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
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically; the format follows the suffix (.parquet, .csv, .tsv)."""
    target = Path(path)
    with atomic_path(target) as tmp:
        if target.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
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
