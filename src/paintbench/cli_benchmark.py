"""`paintbench profiles | retrieval`: the benchmark half of the CLI (registered by paintbench.cli)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from paintbench.cli_format import METADATA_HELP, add_command, add_s3_options

log = logging.getLogger("paintbench")


def cmd_profiles(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.profiles import build_profiles

    tables = [pd.read_parquet(p) for p in args.wells]
    normalized, selected = build_profiles(tables, args.metadata_dir, args.feature_selection, args.spherize)
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

    batches = [plate_info(p, args.metadata_dir).batch for p in args.plates]
    build_published(args.plates, batches, Path(args.output), args.bucket, args.gallery_prefix, args.endpoint_url,
                    not args.signed, args.metadata_dir, Path(args.cache_dir) if args.cache_dir else None)


def user_table(table: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """Map a user's profile table onto the column names the tasks use; missing condition columns = one condition."""
    from paintbench.retrieval import PERT, with_condition_columns

    out = table.rename(columns={args.pert_col: PERT, args.plate_col: "Metadata_Plate"}).copy()
    is_control = out[PERT].astype(str) == args.control_value if not args.control_col else \
        out[args.control_col].astype(str) == args.control_value
    out["Metadata_control_type"] = is_control.map({True: "negcon", False: None})
    if "Metadata_pert_type" not in table.columns or not args.control_col:
        out["Metadata_pert_type"] = is_control.map({True: "control", False: "trt"})
    if args.labels_col:
        out["Metadata_target_list"] = out[args.labels_col]
    return with_condition_columns(out)


def cmd_retrieval(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.retrieval import run_task, scorable_features

    profiles = read_table(args.profiles)
    if args.pert_col != "Metadata_broad_sample" or args.control_value != "negcon" or args.labels_col:
        profiles = user_table(profiles, args)
    features = scorable_features(profiles)
    replicate = read_table(args.replicate_results) if args.replicate_results else None
    ap, scored = run_task(args.task, profiles, features, args.protocol, args.null_size, args.seed, replicate,
                          args.compound_gene_negatives)
    write_table(ap, args.ap_output or str(Path(args.output).with_name(Path(args.output).stem + "_ap.parquet")))
    write_table(scored, args.output)
    retrieved = scored["below_corrected_p"].mean() if len(scored) else float("nan")
    log.info("%s (%s protocol): %d scored, mean mAP %.3f, fraction retrieved %.3f -> %s", args.task, args.protocol,
             len(scored), scored["mean_average_precision"].mean() if len(scored) else float("nan"), retrieved,
             args.output)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "profiles", "annotate, normalize (and feature-select) the well profiles of one feature set",
                    ["paintbench profiles --wells results/profiles/cellprofiler/BR00116991.parquet "
                     "results/profiles/cellprofiler/BR00116992.parquet --feature-selection "
                     "--output results/profiles/cellprofiler/normalized.parquet "
                     "--scored-output results/profiles/cellprofiler/scored.parquet"])
    p.add_argument("--wells", nargs="+", required=True, help="well-level Parquet files (one per plate)")
    p.add_argument("--metadata-dir", default=None, help=METADATA_HELP)
    p.add_argument("--feature-selection", action="store_true", help="variance, correlation 0.9, NA, blocklist")
    p.add_argument("--spherize", action="store_true", help="ZCA whitening on the negative controls")
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
    p.add_argument("--metadata-dir", default=None, help=METADATA_HELP)
    add_s3_options(p)
    p.add_argument("--cache-dir", default=None, help="where the downloaded csv.gz files are kept")
    p.add_argument("--output", required=True, help="scored.parquet of the published_cellprofiler feature set")
    p.set_defaults(func=cmd_published_profiles)

    from paintbench.retrieval import COMPOUND_GENE_NEGATIVES, TASKS
    from paintbench.significance import PROTOCOLS

    p = add_command(sub, "retrieval", "mAP, p, q and fraction retrieved for one task, on any well-level table",
                    ["paintbench retrieval --profiles results/profiles/cellprofiler/scored.parquet "
                     "--task replicate_retrieval --output results/retrieval/cellprofiler/replicate_retrieval.parquet "
                     "--ap-output results/retrieval/cellprofiler/replicate_retrieval_ap.parquet",
                     "paintbench retrieval --profiles results/profiles/cellprofiler/scored.parquet "
                     "--task compound_gene_matching "
                     "--replicate-results results/retrieval/cellprofiler/replicate_retrieval.parquet "
                     "--output results/retrieval/cellprofiler/compound_gene_matching.parquet"])
    p.add_argument("--profiles", required=True, help="Parquet, CSV or CSV.GZ with Metadata_ columns and features")
    p.add_argument("--task", choices=TASKS, required=True, help="the retrieval task")
    p.add_argument("--output", required=True, help="per-perturbation table (Parquet)")
    p.add_argument("--ap-output", default=None, help="per-query AP table (default: <output>_ap.parquet)")
    p.add_argument("--replicate-results", default=None, help="sister_matching and compound_gene_matching: the replicate_retrieval table "
                        "(replicate_retrieval.parquet)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="cpjump1",
                   help="cpjump1: per-query p-values, geometric mean per perturbation (the paper's); copairs: mAP null")
    p.add_argument("--compound-gene-negatives", choices=COMPOUND_GENE_NEGATIVES, default="disjoint",
                   help="disjoint: the other modality's profiles sharing no target (the paper's definition); "
                        "paper_code: all of them, true matches included (what the paper's code computed)")
    p.add_argument("--null-size", type=int, default=100_000, help="random rank lists per null distribution")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation nulls")
    p.add_argument("--pert-col", default="Metadata_broad_sample", help="column naming the perturbation")
    p.add_argument("--plate-col", default="Metadata_Plate", help="column naming the plate")
    p.add_argument("--control-col", default="Metadata_control_type",
                   help="column marking negative controls (with --control-value); empty: compare --pert-col")
    p.add_argument("--control-value", default="negcon", help="e.g. DMSO")
    p.add_argument("--labels-col", default=None, help="multilabel column for matching (e.g. Metadata_moa)")
    p.set_defaults(func=cmd_retrieval)
