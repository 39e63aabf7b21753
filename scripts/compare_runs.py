"""Compare two runs' results, table by table: are they the same run?

Every Parquet, TSV and CSV file under the two results folders (logs and benchmarks excepted) is read and compared
exactly (columns, dtypes and values), and every NumPy array (illumination functions, crop caches) and JSON file
(normalization, figure manifest) likewise; the run folders' own paths inside the tables (LoadData PathName columns,
summary sources) are replaced by a placeholder first, so two runs in different folders can be identical. Timings
that no two runs share (train_log.tsv `seconds`) are left out with --ignore-column.

    python scripts/compare_runs.py RUN_A/results RUN_B/results [--ignore-column seconds]

Prints one line per file that differs or exists on one side only and a count of the identical ones; exits 1 when
anything differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SKIPPED_FOLDERS = {"logs", "benchmarks"}
SUFFIXES = (".parquet", ".tsv", ".csv", ".npy", ".json")


def tables(results: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(results.rglob("*")):
        relative = path.relative_to(results)
        if path.is_file() and path.name.endswith(SUFFIXES) and not SKIPPED_FOLDERS & set(relative.parts[:1]):
            found[str(relative)] = path
    return found


def read(path: Path, roots: list[str]) -> pd.DataFrame:
    if path.suffix == ".npy":
        array = np.load(path)
        return pd.DataFrame({"shape": [str(array.shape)], "dtype": [str(array.dtype)], "sha256": [hashlib.sha256(array.tobytes()).hexdigest()]})
    if path.suffix == ".json":
        text = path.read_text()
        for root in roots:
            text = text.replace(root, "<run>")
        return pd.DataFrame({"json": [json.dumps(json.loads(text), sort_keys=True)]})
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", keep_default_na=False)
    for column in table.columns:
        if table[column].dtype == object or pd.api.types.is_string_dtype(table[column]):
            values = table[column].astype("string")
            for root in roots:
                values = values.str.replace(root, "<run>", regex=False)
            table[column] = values
    return table


def difference(a: pd.DataFrame, b: pd.DataFrame, ignored: set[str]) -> str | None:
    a, b = a.drop(columns=[c for c in ignored if c in a]), b.drop(columns=[c for c in ignored if c in b])
    if list(a.columns) != list(b.columns):
        return f"columns differ: {sorted(set(a.columns) ^ set(b.columns))[:5] or 'order'}"
    if a.shape != b.shape:
        return f"shape {a.shape} vs {b.shape}"
    for column in a.columns:
        if a[column].dtype != b[column].dtype:
            return f"column {column}: dtype {a[column].dtype} vs {b[column].dtype}"
        try:
            pd.testing.assert_series_equal(a[column], b[column], check_exact=True, check_names=False)
        except AssertionError:
            left, right = a[column].astype("string"), b[column].astype("string")
            row = int((left.fillna("<NA>") != right.fillna("<NA>")).to_numpy().argmax())
            return f"column {column}, row {row}: {a[column].iloc[row]!r} vs {b[column].iloc[row]!r}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_a", type=Path)
    parser.add_argument("results_b", type=Path)
    parser.add_argument("--ignore-column", action="append", default=[], help="a column left out of every comparison")
    args = parser.parse_args(argv)
    roots = sorted({str(p.resolve().parent) for p in (args.results_a, args.results_b)}, key=len, reverse=True)
    a, b = tables(args.results_a), tables(args.results_b)
    problems, same = [], 0
    for name in sorted(set(a) | set(b)):
        if name not in b or name not in a:
            problems.append(f"{name}: only in {args.results_a if name in a else args.results_b}")
            continue
        found = difference(read(a[name], roots), read(b[name], roots), set(args.ignore_column))
        if found:
            problems.append(f"{name}: {found}")
        else:
            same += 1
    for line in problems:
        print(line)
    print(f"{same} table(s) identical, {len(problems)} different or on one side only")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
