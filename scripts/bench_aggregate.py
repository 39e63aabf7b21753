#!/usr/bin/env python
"""Benchmark well aggregation: paintbench.aggregate.well_profiles vs pycytominer.aggregate.

(a) both tools on the same moderate table (default 200k cells x 500 features, 200 wells);
(b) ours alone on a plate-sized table (default 1.5M cells x 3,000 float32 features, 384 wells).

Each measurement runs in its own child process; peak memory is that child's ru_maxrss (os.wait4),
so generation and the other tool never count. Data is generated in chunks straight to Parquet
(row groups of 50k rows, float32 noise rounded to 1/8 so it compresses moderately with zstd).

    python scripts/bench_aggregate.py                       # (a) and (b)
    python scripts/bench_aggregate.py --skip-reference --cells 300000   # (b) only, smaller
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROW_GROUP = 50_000
COMPARTMENTS = ("Cells", "Nuclei", "Cytoplasm")  # names pycytominer's features="infer" recognises


def feature_names(count: int) -> list[str]:
    return [f"{COMPARTMENTS[i % 3]}_Bench_Feature{i:04d}" for i in range(count)]


def generate(path: Path, cells: int, features: int, wells: int, seed: int = 0) -> float:
    """Write a single-cell Parquet file with consecutive wells; returns seconds taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    well_of_cell = np.repeat(np.arange(wells), np.diff(np.linspace(0, cells, wells + 1).astype(np.int64)))
    well_names = np.array([f"{'ABCDEFGHIJKLMNOP'[w // 24 % 16]}{w % 24 + 1:02d}" + ("" if w < 384 else f"_{w // 384}") for w in range(wells)])
    names = feature_names(features)
    schema = pa.schema(
        [("Metadata_Plate", pa.string()), ("Metadata_Well", pa.string()), ("Metadata_Site", pa.int32()),
         ("Metadata_ObjectNumber", pa.int32())] + [(n, pa.float32()) for n in names]
    )
    with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=["Metadata_Plate", "Metadata_Well"]) as writer:
        for lo in range(0, cells, ROW_GROUP):
            hi = min(lo + ROW_GROUP, cells)
            wells_here = well_of_cell[lo:hi]
            # (features, cells) so every feature column is contiguous: pa.array takes it without copying
            values = rng.standard_normal((features, hi - lo), dtype=np.float32)
            values += wells_here.astype(np.float32) / np.float32(wells)  # wells differ a little
            values *= np.float32(8)
            np.round(values, out=values)
            values /= np.float32(8)
            columns = [
                pa.array(np.full(hi - lo, "BENCH_PLATE")),
                pa.array(well_names[wells_here]),
                pa.array(rng.integers(1, 10, hi - lo, dtype=np.int32)),
                pa.array(np.arange(lo, hi, dtype=np.int32)),
                *(pa.array(values[i]) for i in range(features)),
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema), row_group_size=ROW_GROUP)
    return time.perf_counter() - start


def child(tool: str, source: Path, output: Path, operation: str, batch_rows: int) -> None:
    """The measured work; runs in a child process."""
    if tool == "paintbench":
        from paintbench.aggregate import well_profiles

        options = {"batch_rows": batch_rows} if batch_rows else {}
        well_profiles([source], output, operation=operation, **options)
    else:
        import pandas as pd
        from pycytominer import aggregate

        frame = pd.read_parquet(source)
        result = aggregate(frame, strata=["Metadata_Plate", "Metadata_Well"], features="infer", operation=operation,
                           compute_object_count=True, object_feature="Metadata_ObjectNumber", output_type=None)
        result.to_parquet(output, index=False)


def measure(tool: str, source: Path, output: Path, operation: str, batch_rows: int) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one child run."""
    command = [sys.executable, __file__, "--child", tool, "--source", str(source), "--output", str(output),
               "--operation", operation, "--batch-rows", str(batch_rows)]
    start = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{tool} failed with exit code {process.returncode}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def max_difference(a: Path, b: Path) -> float:
    import pandas as pd

    ours, theirs = pd.read_parquet(a), pd.read_parquet(b)
    keys = ["Metadata_Plate", "Metadata_Well"]
    theirs = theirs.sort_values(keys, ignore_index=True)[ours.columns]
    if not ours["Metadata_Object_Count"].equals(theirs["Metadata_Object_Count"].astype(ours["Metadata_Object_Count"].dtype)):
        return float("inf")
    features = [c for c in ours.columns if not c.startswith("Metadata_")]
    return float(np.nanmax(np.abs(ours[features].to_numpy() - theirs[features].to_numpy())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=1_500_000, help="plate-sized run (b): cells")
    parser.add_argument("--features", type=int, default=3000, help="plate-sized run (b): features")
    parser.add_argument("--wells", type=int, default=384, help="plate-sized run (b): wells")
    parser.add_argument("--ref-cells", type=int, default=200_000, help="side-by-side run (a): cells")
    parser.add_argument("--ref-features", type=int, default=500, help="side-by-side run (a): features")
    parser.add_argument("--ref-wells", type=int, default=200, help="side-by-side run (a): wells")
    parser.add_argument("--operation", default="median", choices=["median", "mean"])
    parser.add_argument("--batch-rows", type=int, default=0, help="rows per Parquet batch (default: well_profiles' own)")
    parser.add_argument("--tmpdir", type=Path, default=None, help="where the generated Parquet goes (deleted after)")
    parser.add_argument("--skip-reference", action="store_true", help="skip (a), the pycytominer comparison")
    parser.add_argument("--skip-plate", action="store_true", help="skip (b), the plate-sized run")
    parser.add_argument("--child", choices=["paintbench", "pycytominer"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.source, args.output, args.operation, args.batch_rows)
        return

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_aggregate.", dir=args.tmpdir) as folder:
        work = Path(folder)
        if not args.skip_reference:
            source = work / "reference.parquet"
            seconds = generate(source, args.ref_cells, args.ref_features, args.ref_wells, seed=1)
            print(f"(a) generated {args.ref_cells} x {args.ref_features} in {seconds:.0f} s", flush=True)
            results = {}
            for tool in ("paintbench", "pycytominer"):
                results[tool] = measure(tool, source, work / f"{tool}.parquet", args.operation, args.batch_rows)
                rows.append(("a", args.ref_cells, args.ref_features, args.ref_wells, tool, *results[tool]))
            difference = max_difference(work / "paintbench.parquet", work / "pycytominer.parquet")
            ratio_t = results["pycytominer"][0] / results["paintbench"][0]
            ratio_m = results["pycytominer"][1] / results["paintbench"][1]
            print(f"(a) max |ours - pycytominer| = {difference:.3g}; pycytominer/ours: time x{ratio_t:.2f}, peak RSS x{ratio_m:.2f}")
            source.unlink()
        if not args.skip_plate:
            source = work / "plate.parquet"
            seconds = generate(source, args.cells, args.features, args.wells)
            size = source.stat().st_size / 2**30
            print(f"(b) generated {args.cells} x {args.features} ({size:.1f} GiB Parquet) in {seconds:.0f} s", flush=True)
            rows.append(("b", args.cells, args.features, args.wells, "paintbench",
                         *measure("paintbench", source, work / "plate_wells.parquet", args.operation, args.batch_rows)))

    print(f"\n{'run':<4}{'cells':>10}{'features':>10}{'wells':>7}  {'tool':<12}{'wall s':>9}{'peak RSS MiB':>14}")
    for run, cells, features, wells, tool, wall, rss in rows:
        print(f"{run:<4}{cells:>10}{features:>10}{wells:>7}  {tool:<12}{wall:>9.1f}{rss:>14.0f}")


if __name__ == "__main__":
    main()
