#!/usr/bin/env python
"""Benchmark the CellProfiler stage on 1080x1080 fields built from the real test crop.

Fields: the 540x540 crop tests/data/real_site_BR00143976_C03_f03 is turned (one of the 8 rotations/flips
per field, rolled after the 8th) and mirror-tiled to 1080x1080, written with Phenix names as plate
BR00116991, wells A01, A02, ... site 1, with flat illumination functions (ones).

Measures, each run pinned to one core with taskset (min over --repeats):
  1. seconds per field per core of a bare `cellprofiler` call on N fields;
  2. the stage's overhead against it: run_shard (pre-flight decode + CellProfiler + merge to Parquet),
     timed inside a child Python process, and that child's whole wall time (Python start and imports too);
  3. speed-up from 1 to 2 parallel shards: 2N fields as two N-field stage runs, one after the other on
     core 0 vs at the same time on cores 0 and 1;
  4. peak memory (ru_maxrss via os.wait4) of the bare CellProfiler process and of a stage process.

With --densities 100,200,300 it measures instead seconds per field per core and peak memory of the bare
CellProfiler call against cell density: synthetic 1080x1080 fields (paintbench.synthetic, --fields per density)
and the real crop itself (540x540, as in tests/data), the table the README and `paintbench plan` use.

    .venvs/paintbench/bin/python scripts/bench_cellprofiler.py --fields 4 --repeats 1 --output bench.tsv
    .venvs/paintbench/bin/python scripts/bench_cellprofiler.py --densities 100,200,300 --fields 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

PLATE = "BR00116991"
REAL_SITE = REPO / "tests" / "data" / "real_site_BR00143976_C03_f03"
REAL_WELL, REAL_SITE_NUMBER = "C03", 3
CHANNEL_MAP = {"DNA": 5, "ER": 2, "RNA": 6, "AGP": 3, "Mito": 4}
DEFAULT_EXECUTABLE = REPO / ".venvs" / "cellprofiler" / "bin" / "cellprofiler"


def well_name(index: int) -> str:
    return f"{'ABCDEFGHIJKLMNOP'[index // 24]}{index % 24 + 1:02d}"


def field_variant(crop: np.ndarray, index: int) -> np.ndarray:
    """A 2x-sized field: the crop under the index-th of 8 rotations/flips, mirror-tiled, rolled after 8."""
    turned = np.rot90(crop, index % 4)
    turned = np.fliplr(turned) if (index // 4) % 2 else turned
    tiled = np.pad(turned, ((0, turned.shape[0]), (0, turned.shape[1])), mode="symmetric")
    shift = (index // 8) * 97
    return np.ascontiguousarray(np.roll(tiled, (shift, 2 * shift), axis=(0, 1)))


def build_plate(folder: Path, count: int) -> tuple[Path, Path, tuple[int, int]]:
    """Write `count` fields and flat illumination functions; return (image dir, illum dir, field shape)."""
    import tifffile

    from paintbench import CHANNELS
    from paintbench.illum import illum_filename
    from paintbench.layout import image_filename

    images, illum = folder / "images", folder / "illum"
    images.mkdir(parents=True, exist_ok=True)
    illum.mkdir(parents=True, exist_ok=True)
    crops = {n: tifffile.imread(REAL_SITE / image_filename(REAL_WELL, REAL_SITE_NUMBER, n)) for n in CHANNEL_MAP.values()}
    shape = (0, 0)
    for index in range(count):
        for number, crop in crops.items():
            field = field_variant(crop, index)
            shape = field.shape
            tifffile.imwrite(images / image_filename(well_name(index), 1, number), field, photometric="minisblack")
    for channel in CHANNELS:
        np.save(illum / illum_filename(PLATE, channel), np.ones(shape, dtype=np.float32))
    return images, illum, shape


def run_measured(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process (and the descendants it waited for)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text()[-3000:]
        raise SystemExit(f"failed (exit {process.returncode}): {' '.join(command)}\n{tail}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def run_bare(args, work: Path, csv: Path, tag: str, counts: dict | None = None) -> tuple[float, float, float]:
    """(wall s, peak MiB, s inside pipeline modules: the sum of the Wall_time CellProfiler logs per module);
    `counts` receives the number of cells found."""
    out, scratch = work / f"bare-{tag}", work / f"bare-{tag}.tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    command = ["taskset", "-c", "0", str(args.executable), "-c", "-r", "-p", str(args.pipeline),
               "--data-file", str(csv), "-o", str(out), "-t", str(scratch), "-e", "imageio_reader"]
    env = {**os.environ, "MPLCONFIGDIR": str(scratch / "mpl")}
    try:
        wall, peak = run_measured(command, work / f"bare-{tag}.log", env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not (out / "Image.csv").is_file():
        raise SystemExit(f"bare CellProfiler wrote no Image.csv; see {work / f'bare-{tag}.log'}")
    if counts is not None:
        counts["cells"] = sum(1 for _ in open(out / "Cells.csv")) - 1
    shutil.rmtree(out, ignore_errors=True)
    modules = sum(map(float, re.findall(r"Wall_time = ([0-9.]+) secs", (work / f"bare-{tag}.log").read_text())))
    return wall, peak, modules


def stage_command(args, load_data_csv: Path, illum: Path, wells: list[str], out: Path, core: int) -> list[str]:
    return ["taskset", "-c", str(core), sys.executable, __file__, "--child-stage", str(out),
            "--child-load-data", str(load_data_csv), "--child-illum", str(illum), "--child-wells", ",".join(wells),
            "--pipeline", str(args.pipeline), "--executable", str(args.executable)]


def child_stage(args) -> None:
    """Inside the pinned child: what `python -m paintbench cellprofiler` does, with run_shard timed."""
    from paintbench.atomic import read_table
    from paintbench.cellprofiler import run_shard

    out = Path(args.child_stage)
    out.mkdir(parents=True, exist_ok=True)
    load_data = read_table(Path(args.child_load_data))
    start = time.perf_counter()
    cells = run_shard(load_data, args.child_wells.split(","), Path(args.child_illum), str(args.executable),
                      Path(args.pipeline), out / "cells.parquet", out / "qc.parquet")
    seconds = time.perf_counter() - start
    (out / "timing.json").write_text(json.dumps({"run_shard_s": seconds, "cells": len(cells), "columns": cells.shape[1]}))


def run_stages(args, work: Path, csv: Path, illum: Path, shards: list[tuple[int, list[str]]], tag: str) -> tuple[float, list, list]:
    """Start one stage child per (core, wells) at once; (wall until all end, child results, peak MiB each)."""
    start = time.perf_counter()
    running = []
    for number, (core, wells) in enumerate(shards):
        out = work / f"stage-{tag}-{number}"
        log = open(work / f"stage-{tag}-{number}.log", "w")
        process = subprocess.Popen(stage_command(args, csv, illum, wells, out, core), stdout=log, stderr=subprocess.STDOUT)
        running.append((process, out, log))
    results, peaks = [], []
    for process, out, log in running:
        _, status, usage = os.wait4(process.pid, 0)
        log.close()
        if os.waitstatus_to_exitcode(status) != 0:
            for other, _, _ in running:
                if other is not process and other.poll() is None:
                    other.kill()  # our own children only, by their Popen handle
            raise SystemExit(f"stage child failed; see {log.name}:\n{Path(log.name).read_text()[-3000:]}")
        results.append(json.loads((out / "timing.json").read_text()))
        peaks.append(usage.ru_maxrss / 1024)
        shutil.rmtree(out, ignore_errors=True)
    return time.perf_counter() - start, results, peaks


def density_rows(args, work: Path) -> list[tuple[str, object, str]]:
    """Seconds per field per core and peak memory of bare CellProfiler against cells per field."""
    from paintbench import CHANNELS
    from paintbench.cellprofiler import with_illum_columns
    from paintbench.illum import illum_filename
    from paintbench.loaddata import load_data_table, select_channels
    from paintbench.synthetic import generate_plate, ground_truth

    cpjump1 = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=0, strong_fraction=0.4, null_fraction=0.3)
    rows = []
    cases = [(f"synthetic 1080 px, {d} cells", int(d)) for d in args.densities.split(",")] + [("real crop 540 px", 0)]
    for name, density in cases:
        folder = work / f"density-{density}"
        if density:
            wells = [well_name(i) for i in range(args.fields)]
            generate_plate(PLATE, wells, [1], cpjump1, truth, folder / "images", field_size=1080,
                           cells_per_field=density, seed=density)
            table, size = load_data_table(PLATE, folder / "images", wells, [1], cpjump1), 1080
        else:
            wells, size = [REAL_WELL], 540
            table = load_data_table(PLATE, REAL_SITE, wells, [REAL_SITE_NUMBER], CHANNEL_MAP)
        (folder / "illum").mkdir(parents=True, exist_ok=True)
        for channel in CHANNELS:
            np.save(folder / "illum" / illum_filename(PLATE, channel), np.ones((size, size), np.float32))
        csv = folder / "load_data.csv"
        with_illum_columns(select_channels(table, list(CHANNELS)), folder / "illum", list(CHANNELS)).to_csv(csv, index=False)
        counts: dict = {}
        wall, peak, modules = run_bare(args, folder, csv, "density", counts)
        n = len(table)
        print(f"{name}: {n} field(s), {counts['cells'] / n:.0f} cells/field found, {wall / n:.1f} s/field "
              f"({modules / n:.1f} s in modules), {peak:.0f} MiB", flush=True)
        rows.append((name, f"{counts['cells'] / n:.0f} cells found; {wall / n:.1f} s/field "
                           f"({modules / n:.1f} s in modules)", f"{peak:.0f} MiB peak"))
    return rows


def stage_rows(args, work: Path) -> list[tuple[str, object, str]]:
    """The stage against a bare CellProfiler call, its memory, and 1 vs 2 parallel shards (see the docstring)."""
    from paintbench import CHANNELS
    from paintbench.cellprofiler import with_illum_columns
    from paintbench.loaddata import load_data_table, select_channels

    n = args.fields
    total = n if args.skip_parallel else 2 * n
    rows: list[tuple[str, object, str]] = []
    started = time.perf_counter()
    images, illum, shape = build_plate(work, total)
    wells = [well_name(i) for i in range(total)]
    print(f"built {total} fields of {shape[0]}x{shape[1]} in {time.perf_counter() - started:.1f} s under {work}", flush=True)
    table = load_data_table(PLATE, images, wells, [1], CHANNEL_MAP, check_files=True)
    plate_csv = work / "load_data.csv"
    table.to_csv(plate_csv, index=False)
    first = wells[:n]
    bare_csv = work / "load_data_bare.csv"
    subset = select_channels(table[table["Metadata_Well"].isin(first)], list(CHANNELS))
    with_illum_columns(subset, illum, list(CHANNELS)).to_csv(bare_csv, index=False)

    bare, modules, bare_peak, stage, stage_wall, stage_peak, info = [], [], 0.0, [], [], 0.0, {}
    for repeat in range(args.repeats):
        wall, peak, in_modules = run_bare(args, work, bare_csv, str(repeat))
        bare.append(wall)
        modules.append(in_modules)
        bare_peak = max(bare_peak, peak)
        print(f"[{repeat + 1}/{args.repeats}] bare cellprofiler, {n} fields, core 0: {wall:.1f} s ({in_modules:.1f} s in modules), {peak:.0f} MiB",
              flush=True)
        wall, results, peaks = run_stages(args, work, plate_csv, illum, [(0, first)], f"single{repeat}")
        stage.append(results[0]["run_shard_s"])
        stage_wall.append(wall)
        stage_peak, info = max(stage_peak, peaks[0]), results[0]
        print(f"[{repeat + 1}/{args.repeats}] stage, {n} fields, core 0: run_shard {stage[-1]:.1f} s, process {wall:.1f} s, "
              f"{peaks[0]:.0f} MiB, {info['cells']} cells", flush=True)
    a, b, b_process = min(bare), min(stage), min(stage_wall)
    rows += [
        ("field_size", f"{shape[0]}x{shape[1]}", "px"),
        ("fields_per_shard", n, "fields"),
        ("cells_per_shard", info["cells"], "cells"),
        ("single_cell_columns", info["columns"], "columns"),
        ("bare_cellprofiler_wall", round(a, 2), "s"),
        ("bare_seconds_per_field_per_core", round(a / n, 2), "s"),
        ("bare_module_seconds_per_field", round(min(modules) / n, 2), "s (CellProfiler's per-module Wall_time)"),
        ("bare_startup_and_shutdown", round(min(w - m for w, m in zip(bare, modules)), 2), "s (wall - module time)"),
        ("stage_run_shard_wall", round(b, 2), "s"),
        ("stage_process_wall", round(b_process, 2), "s"),
        ("stage_seconds_per_field_per_core", round(b / n, 2), "s"),
        ("overhead_run_shard_vs_bare", round(100 * (b - a) / a, 1), "%"),
        ("overhead_stage_process_vs_bare", round(100 * (b_process - a) / a, 1), "%"),
        ("peak_rss_bare_cellprofiler", round(bare_peak), "MiB"),
        ("peak_rss_stage_process", round(stage_peak), "MiB"),
    ]
    if not args.skip_parallel:
        shards = [(0, wells[:n]), (1, wells[n:])]
        sequential, concurrent = [], []
        for repeat in range(args.repeats):
            wall = sum(run_stages(args, work, plate_csv, illum, [(0, w)], f"seq{repeat}-{i}")[0] for i, (_, w) in enumerate(shards))
            sequential.append(wall)
            print(f"[{repeat + 1}/{args.repeats}] 2 shards x {n} fields one after the other on core 0: {wall:.1f} s", flush=True)
            wall = run_stages(args, work, plate_csv, illum, shards, f"par{repeat}")[0]
            concurrent.append(wall)
            print(f"[{repeat + 1}/{args.repeats}] 2 shards x {n} fields at once on cores 0 and 1: {wall:.1f} s", flush=True)
        rows += [
            ("two_shards_sequential_1core_wall", round(min(sequential), 2), "s"),
            ("two_shards_concurrent_2cores_wall", round(min(concurrent), 2), "s"),
            ("speedup_1_to_2_shards", round(min(sequential) / min(concurrent), 2), "x"),
        ]
    rows += [("repeats", args.repeats, "runs (min taken)"), ("cpus_available", os.cpu_count(), "cores"),
             ("load_average_at_end", round(os.getloadavg()[0], 2), "1-min")]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=4, help="fields per shard (N); the parallel test uses 2N")
    parser.add_argument("--repeats", type=int, default=1, help="repeat each timing, keep the minimum")
    parser.add_argument("--pipeline", type=Path, default=REPO / "config" / "cellprofiler" / "analysis.cppipe")
    parser.add_argument("--executable", type=Path, default=DEFAULT_EXECUTABLE, help="the headless cellprofiler")
    parser.add_argument("--workdir", type=Path, help="where fields and outputs go (default: a temporary folder, removed)")
    parser.add_argument("--output", type=Path, help="also write the results table here (TSV)")
    parser.add_argument("--skip-parallel", action="store_true", help="skip the 1 vs 2 parallel shards test")
    parser.add_argument("--densities", default=None, help="e.g. 100,200,300: seconds per field against cell density")
    for hidden in ("--child-stage", "--child-load-data", "--child-illum", "--child-wells"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pipeline, args.executable = args.pipeline.resolve(), args.executable.resolve()
    if args.child_stage:
        child_stage(args)
        return
    needed = {0} if args.skip_parallel or args.densities else {0, 1}
    if not needed <= os.sched_getaffinity(0):
        raise SystemExit(f"needs CPU cores {sorted(needed)} (taskset); this process may use {sorted(os.sched_getaffinity(0))}")

    work = Path(tempfile.mkdtemp(prefix="bench_cellprofiler.")) if args.workdir is None else args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = density_rows(args, work) if args.densities else stage_rows(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    width = max(len(name) for name, _, _ in rows)
    print()
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value!s:>10}  {unit}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("metric\tvalue\tunit\n" + "".join(f"{n}\t{v}\t{u}\n" for n, v, u in rows))
        print(f"\nwritten {args.output}")


if __name__ == "__main__":
    main()
