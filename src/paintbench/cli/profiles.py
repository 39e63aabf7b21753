"""`paintbench profiles | profile-chain | published-profiles`: the commands of workflow/rules/profiles.smk."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, ConfigOption, add_command, add_config_options, add_s3_options,
                                    resolved_metadata_dir)

log = logging.getLogger("paintbench")

PROFILE_OPTIONS = [METADATA_DIR]
PROFILE_CHAIN_OPTIONS = [ConfigOption("--min-features", "profiles.min_features",
                                      "fewest features a chain may leave (else it fails naming the step)")]


def cmd_profiles(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.profiles import annotated_profiles

    retired = [name.removeprefix("retired_").replace("_", "-") for name, value in vars(args).items()
               if name.startswith("retired_") and value is not None]
    if retired:
        raise ValueError(f"profiles --{retired[0]}: normalization, feature selection and sphering are profile chain "
                         "steps since 0.3; run `paintbench profile-chain --profiles ANNOTATED.parquet --steps mad "
                         "featselect --output SCORED.parquet` on this command's output")
    annotated = annotated_profiles([pd.read_parquet(p) for p in args.wells], resolved_metadata_dir(args))
    write_table(annotated, args.output)
    log.info("%d wells x %d columns -> %s", len(annotated), annotated.shape[1], args.output)


def cmd_profile_chain(args: argparse.Namespace) -> None:
    import json

    from paintbench.atomic import read_table, write_table
    from paintbench.chains import apply_chain, check_chain
    from paintbench.profiles import feature_columns

    annotated = read_table(args.profiles)
    name = args.name or ",".join(args.steps)
    check_chain(args.steps, list(annotated.columns), name=name)
    processed, features, records = apply_chain(annotated, args.steps, json.loads(args.step_options), name,
                                               args.min_features)
    if args.steps_output:
        write_table(records, args.steps_output)
    write_table(processed, args.output)
    log.info("chain %s: %d wells, %d -> %d features -> %s", "+".join(args.steps), len(processed),
             len(feature_columns(annotated)), len(features), args.output)


def cmd_precomputed_profiles(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.metadata import plate_layout
    from paintbench.precomputed import read_plate, well_profiles

    table = read_plate(args.table, args.plate)
    platemap = set(plate_layout(args.plate, resolved_metadata_dir(args))["Metadata_Well"])
    wells = well_profiles(table, args.plate, args.wells.split(","), platemap, source=args.table)
    write_table(wells, args.output)
    log.info("plate %s: %d wells x %d features (from %d rows) -> %s", args.plate, len(wells), wells.shape[1] - 4,
             len(table), args.output)


def cmd_published_profiles(args: argparse.Namespace) -> None:
    from paintbench.metadata import plate_info
    from paintbench.published import build_published

    metadata_dir = resolved_metadata_dir(args)
    batches = [plate_info(p, metadata_dir).batch for p in args.plates]
    build_published(args.plates, batches, Path(args.output), args.bucket, args.gallery_prefix, args.endpoint_url,
                    args.anonymous, metadata_dir, Path(args.cache_dir) if args.cache_dir else None)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profiles", "annotate the well profiles of every plate of one feature set",
                    ["paintbench profiles --wells results/profiles/cellprofiler/BR00116991.parquet "
                     "results/profiles/cellprofiler/BR00116992.parquet "
                     "--output results/profiles/cellprofiler/annotated.parquet"])
    p.add_argument("--wells", nargs="+", required=True, help="well-level Parquet files (one per plate)")
    add_config_options(p, PROFILE_OPTIONS)
    p.add_argument("--output", required=True, help="annotated.parquet: every plate's wells with the platemap's columns")
    # 0.2's normalization options: normalization is a chain's step now; kept so an old command line fails saying so.
    for old in ("--scored-output", "--selected-output", "--feature-selection", "--spherize"):
        p.add_argument(old, dest="retired_" + old.lstrip("-").replace("-", "_"), nargs="?", const=True, default=None,
                       help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_profiles)

    from paintbench.registry import PROFILE_STEPS

    p = add_command(sub, "profile-chain", "apply a chain of post-processing steps to a feature set's annotated profiles",
                    ["paintbench profile-chain --profiles results/profiles/cellprofiler/annotated.parquet "
                     "--steps mad featselect --output results/profiles/cellprofiler/mad_featselect.parquet "
                     "--steps-output results/profiles/cellprofiler/mad_featselect.steps.tsv"])
    p.add_argument("--profiles", required=True, help="annotated.parquet (or any table with Metadata_ columns)")
    p.add_argument("--steps", nargs="+", choices=PROFILE_STEPS, required=True, help="the steps, in order")
    p.add_argument("--name", default=None, help="what the messages call the profiles: FEATURE_SET/CHAIN (the chain a name "
                                                "under the profiles.chains configuration key)")
    add_config_options(p, PROFILE_CHAIN_OPTIONS)
    p.add_argument("--step-options", default="{}",
                   help='JSON of the steps\' options (the profiles.steps configuration section), e.g. \'{"sphering": {"regularization": 0.01}}\'')
    p.add_argument("--output", required=True, help="the processed profiles (Parquet)")
    p.add_argument("--steps-output", default=None, help="what each step did (TSV: features in/out, wells fitted on)")
    p.set_defaults(func=cmd_profile_chain)

    p = add_command(sub, "precomputed-profiles", "one plate's well profiles from a table of precomputed embeddings",
                    ["paintbench precomputed-profiles --table my_embeddings.parquet --plate BR00116991 "
                     "--wells A01,A02,A03 --output results/profiles/mine/BR00116991.parquet"])
    p.add_argument("--table", required=True, help="Parquet, CSV, CSV.GZ or TSV: Metadata_Plate, Metadata_Well, "
                                                  "optional Metadata_Site, numeric features; rows per well, field or cell")
    p.add_argument("--plate", required=True, help="the plate barcode")
    p.add_argument("--wells", required=True, help="the run's wells of the plate, comma-separated")
    add_config_options(p, [METADATA_DIR])
    p.add_argument("--output", required=True, help="the plate's well profiles (Parquet)")
    p.set_defaults(func=cmd_precomputed_profiles)

    p = add_command(sub, "published-profiles", "the consortium's published CellProfiler profiles as a feature set",
                    ["paintbench published-profiles --plates BR00116991 BR00116992 "
                     "--cache-dir data/published_profiles --output results/profiles/published_cellprofiler/annotated.parquet"])
    p.add_argument("--plates", nargs="+", required=True, help="plate barcodes")
    add_config_options(p, [METADATA_DIR])
    add_s3_options(p)
    p.add_argument("--cache-dir", default=None, help="where the downloaded csv.gz files are kept")
    p.add_argument("--output", required=True, help="annotated.parquet of the published_cellprofiler feature set (normalized and feature-selected by the consortium)")
    p.set_defaults(func=cmd_published_profiles)
