"""`paintbench illum`: the command of workflow/rules/illum.smk."""

from __future__ import annotations

import argparse
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, SKIP_BAD_FIELDS, ConfigOption, add_command, add_config_options,
                                    add_load_data, add_qc_output, add_s3_options, resolved_metadata_dir)

ILLUM_OPTIONS = [
    ConfigOption("--source", "illum.source", "compute from the plate's images, or fetch the Gallery's precomputed "
                                             "functions"),
    ConfigOption("--smoothing-fraction", "illum.smoothing_fraction",
                 "median filter size / field width (the consortium's 500 px at 1080 px)"),
    SKIP_BAD_FIELDS,
]


def cmd_illum(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.illum import compute_plate_illum
    from paintbench.loaddata import channel_names
    from paintbench.qc import qc_table
    from paintbench.registry import CHANNELS

    load_data = read_table(args.load_data)
    channels = [c for c in channel_names(load_data) if c in CHANNELS]
    plate = str(load_data["Metadata_Plate"].iloc[0])
    if args.source == "gallery":
        from paintbench.metadata import plate_info
        from paintbench.s3 import fetch_gallery_illum

        batch = plate_info(plate, resolved_metadata_dir(args)).batch
        fetch_gallery_illum(plate, batch, channels, Path(args.output_dir), args.bucket, args.gallery_prefix,
                            args.endpoint_url, args.anonymous)
        skipped: list[dict] = []
    else:
        _, skipped = compute_plate_illum(load_data, Path(args.output_dir), channels, args.threads,
                                         args.smoothing_fraction, args.skip_bad_fields)
    if args.qc_output:
        write_table(qc_table(skipped), args.qc_output)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "illum", "illumination function per channel of one plate (<plate>_Illum<Channel>.npy)",
                    ["paintbench illum --load-data results/load_data/BR00116991.csv --output-dir results/illum/BR00116991 "
                     "--qc-output results/qc/BR00116991/illum.tsv"])
    add_load_data(p)
    p.add_argument("--output-dir", required=True, help="folder of the <plate>_Illum<Channel>.npy files")
    add_config_options(p, ILLUM_OPTIONS)
    p.add_argument("--threads", type=int, default=2, help="threads reading the images")
    add_qc_output(p)
    add_config_options(p, [METADATA_DIR])
    add_s3_options(p.add_argument_group("gallery source"))
    p.set_defaults(func=cmd_illum)
