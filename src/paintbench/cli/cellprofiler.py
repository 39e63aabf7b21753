"""`paintbench cellprofiler | well-profiles`: the commands of workflow/rules/cellprofiler.smk."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import (SKIP_BAD_FIELDS, ConfigOption, add_command, add_config_options, add_illum,
                                    add_load_data, add_qc_output, csv_list, illum_folder)

log = logging.getLogger("paintbench")

CELLPROFILER_OPTIONS = [
    ConfigOption("--pipeline", "cellprofiler.pipeline", "analysis .cppipe (a relative path absent here is the "
                                                        "workflow's)"),
    ConfigOption("--executable", "cellprofiler.executable", "CellProfiler 5 command or path (a bare name is looked "
                                                            "up on PATH)"),
    SKIP_BAD_FIELDS,
]


def cmd_cellprofiler(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table
    from paintbench.cellprofiler import run_shard
    from paintbench.config import resolve_command, resolve_input_path
    from paintbench.registry import CHANNELS

    load_data = read_table(args.load_data)
    plate = str(load_data["Metadata_Plate"].iloc[0]) if len(load_data) else ""
    channels = [c for c in CHANNELS if f"FileName_Orig{c}" in load_data.columns]
    run_shard(load_data, args.wells, illum_folder(args, plate, channels), resolve_command(args.executable),
              resolve_input_path(args.pipeline), Path(args.output), Path(args.qc_output), args.skip_bad_fields)


def cmd_well_profiles(args: argparse.Namespace) -> None:
    from paintbench.aggregate import well_profiles
    from paintbench.atomic import concat_parquet, write_table
    from paintbench.qc import concat_fragments

    source = args.single_cells
    if args.merged_single_cells:
        rows = concat_parquet(args.single_cells, args.merged_single_cells)
        log.info("%d single cells -> %s", rows, args.merged_single_cells)
        source = [args.merged_single_cells]
    profiles = well_profiles([Path(p) for p in source], Path(args.output), operation=args.operation)
    log.info("%d well profiles -> %s", 0 if profiles is None else len(profiles), args.output)
    if args.qc_output:
        skipped = concat_fragments(args.qc)
        write_table(skipped, args.qc_output)
        log.info("%d skipped fields recorded in %s", len(skipped), args.qc_output)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from paintbench.registry import AGGREGATIONS

    p = add_command(sub, "cellprofiler", "run CellProfiler on one shard (plate x wells) -> single-cell Parquet",
                    ["paintbench cellprofiler --load-data results/load_data/BR00116991.csv --wells A01,A02 "
                     "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy "
                     "--pipeline config/cellprofiler/analysis.cppipe "
                     "--executable .venvs/cellprofiler/bin/cellprofiler "
                     "--output results/cellprofiler/BR00116991/shards/s000.parquet "
                     "--qc-output results/cellprofiler/BR00116991/shards/s000.qc.parquet"])
    add_load_data(p)
    p.add_argument("--wells", type=csv_list, required=True, help="comma-separated wells of the shard")
    add_illum(p)
    add_config_options(p, CELLPROFILER_OPTIONS)
    p.add_argument("--output", required=True, help="single-cell Parquet of the shard")
    add_qc_output(p, "Parquet of the fields skipped", required=True)
    p.set_defaults(func=cmd_cellprofiler)

    p = add_command(sub, "well-profiles", "aggregate single cells (or crops) to well profiles, streaming",
                    ["paintbench well-profiles --single-cells results/cellprofiler/BR00116991/shards/s000.parquet "
                     "--qc results/cellprofiler/BR00116991/shards/s000.qc.parquet "
                     "--merged-single-cells results/cellprofiler/BR00116991/single_cells.parquet "
                     "--qc-output results/cellprofiler/BR00116991/skipped_fields.tsv "
                     "--output results/profiles/cellprofiler/BR00116991.parquet"])
    p.add_argument("--single-cells", nargs="+", required=True, help="Parquet files, wells consecutive")
    p.add_argument("--operation", choices=AGGREGATIONS, default="median", help="aggregation of a well's rows")
    p.add_argument("--merged-single-cells", default=None, help="also write all single cells into one Parquet")
    p.add_argument("--qc", nargs="*", default=[], help="QC Parquet files of the shards")
    add_qc_output(p, "TSV of every skipped field")
    p.add_argument("--output", required=True, help="well profiles (Parquet)")
    p.set_defaults(func=cmd_well_profiles)
