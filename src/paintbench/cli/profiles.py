"""`paintbench profiles | published-profiles`: the commands of workflow/rules/profiles.smk."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, ConfigOption, add_command, add_config_options, add_s3_options,
                                    resolved_metadata_dir)

log = logging.getLogger("paintbench")

PROFILE_OPTIONS = [ConfigOption("--spherize", "profiles.spherize", "ZCA whitening on the negative controls"), METADATA_DIR]


def cmd_profiles(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.profiles import build_profiles

    tables = [pd.read_parquet(p) for p in args.wells]
    normalized, selected = build_profiles(tables, resolved_metadata_dir(args), args.feature_selection, args.spherize)
    write_table(normalized, args.output)
    log.info("%d wells x %d features -> %s", len(normalized), normalized.shape[1], args.output)
    if args.scored_output:
        # The table retrieval scores: feature-selected where selection applies, else the normalized one.
        scored = normalized if selected is None else selected
        write_table(scored, args.scored_output)
        log.info("scored profiles: %d columns -> %s", scored.shape[1], args.scored_output)


def cmd_published_profiles(args: argparse.Namespace) -> None:
    from paintbench.metadata import plate_info
    from paintbench.published import build_published

    metadata_dir = resolved_metadata_dir(args)
    batches = [plate_info(p, metadata_dir).batch for p in args.plates]
    build_published(args.plates, batches, Path(args.output), args.bucket, args.gallery_prefix, args.endpoint_url,
                    args.anonymous, metadata_dir, Path(args.cache_dir) if args.cache_dir else None)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profiles", "annotate, normalize (and feature-select) the well profiles of one feature set",
                    ["paintbench profiles --wells results/profiles/cellprofiler/BR00116991.parquet "
                     "results/profiles/cellprofiler/BR00116992.parquet --feature-selection "
                     "--output results/profiles/cellprofiler/normalized.parquet "
                     "--scored-output results/profiles/cellprofiler/scored.parquet"])
    p.add_argument("--wells", nargs="+", required=True, help="well-level Parquet files (one per plate)")
    p.add_argument("--feature-selection", action="store_true", help="variance, correlation 0.9, NA, blocklist")
    add_config_options(p, PROFILE_OPTIONS)
    p.add_argument("--output", required=True, help="normalized.parquet: annotated, normalized per plate")
    p.add_argument("--scored-output", default=None,
                   help="scored.parquet: the table the retrieval tasks score (feature-selected with --feature-selection)")
    # 0.1's name of --scored-output, kept working for old command lines but not shown.
    p.add_argument("--selected-output", dest="scored_output", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_profiles)

    p = add_command(sub, "published-profiles", "the consortium's published CellProfiler profiles as a feature set",
                    ["paintbench published-profiles --plates BR00116991 BR00116992 "
                     "--cache-dir data/published_profiles --output results/profiles/published_cellprofiler/scored.parquet"])
    p.add_argument("--plates", nargs="+", required=True, help="plate barcodes")
    add_config_options(p, [METADATA_DIR])
    add_s3_options(p)
    p.add_argument("--cache-dir", default=None, help="where the downloaded csv.gz files are kept")
    p.add_argument("--output", required=True, help="scored.parquet of the published_cellprofiler feature set")
    p.set_defaults(func=cmd_published_profiles)
