"""`paintbench retrieval | layout-controls`: the commands of workflow/rules/retrieval.smk, on any well-level table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import ConfigOption, add_command, add_config_options

log = logging.getLogger("paintbench")

RETRIEVAL_OPTIONS = [
    ConfigOption("--protocol", "retrieval.protocol",
                 "cpjump1: per-query p-values, geometric mean per perturbation (the paper's); copairs: mAP null"),
    ConfigOption("--compound-gene-negatives", "retrieval.compound_gene_negatives",
                 "disjoint: the other modality's profiles sharing no target (the paper's definition); "
                 "paper_code: all of them, true matches included (what the paper's code computed)"),
    ConfigOption("--null-size", "retrieval.null_size", "random rank lists per null distribution"),
    ConfigOption("--seed", "retrieval.seed", "seed of the permutation nulls"),
    ConfigOption("--precision", "retrieval.precision", "the profiles' arithmetic: float32 halves their memory "
                                                       "(APs within 1e-3 of float64's)"),
]
LAYOUT_CONTROL_OPTIONS = [option for option in RETRIEVAL_OPTIONS
                          if option.flag not in ("--compound-gene-negatives", "--precision")]


def own_profiles(args: argparse.Namespace, profiles):
    """A user's own table in the columns the tasks read (the --pert-col ... options), else as given."""
    from paintbench.retrieval import user_profiles

    if args.pert_col != "Metadata_broad_sample" or args.control_value != "negcon" or args.labels_col:
        return user_profiles(profiles, args.pert_col, args.plate_col, args.control_col or None, args.control_value,
                             args.labels_col)
    return profiles


def add_own_columns(p: argparse.ArgumentParser) -> None:
    own = p.add_argument_group("your own table's columns")
    own.add_argument("--pert-col", default="Metadata_broad_sample", help="column naming the perturbation")
    own.add_argument("--plate-col", default="Metadata_Plate", help="column naming the plate")
    own.add_argument("--control-col", default="Metadata_control_type",
                     help="column marking negative controls (with --control-value); empty: compare --pert-col")
    own.add_argument("--control-value", default="negcon", help="e.g. DMSO")
    own.add_argument("--labels-col", default=None, help="multilabel column for matching (e.g. Metadata_moa)")


def cmd_retrieval(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.retrieval import run_task, scorable_features

    profiles = own_profiles(args, read_table(args.profiles))
    features = scorable_features(profiles)
    replicate = read_table(args.replicate_results) if args.replicate_results else None
    ap, scored = run_task(args.task, profiles, features, args.protocol, args.null_size, args.seed, replicate,
                          args.compound_gene_negatives, args.precision)
    write_table(ap, args.ap_output or str(Path(args.output).with_name(Path(args.output).stem + "_ap.parquet")))
    write_table(scored, args.output)
    retrieved = scored["below_corrected_p"].mean() if len(scored) else float("nan")
    log.info("%s (%s protocol): %d scored, mean mAP %.3f, fraction retrieved %.3f -> %s", args.task, args.protocol,
             len(scored), scored["mean_average_precision"].mean() if len(scored) else float("nan"), retrieved,
             args.output)


def cmd_layout_controls(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.controls import layout_controls
    from paintbench.retrieval import scorable_features

    profiles = own_profiles(args, read_table(args.profiles))
    controls = layout_controls(profiles, scorable_features(profiles), args.protocol, args.null_size, args.seed,
                               args.nn_draws)
    write_table(controls, args.output)
    log.info("%d layout and batch control rows -> %s", len(controls), args.output)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from paintbench.registry import TASKS

    p = add_command(sub, "retrieval", "mAP, p, q and fraction retrieved for one task, on any well-level table",
                    ["paintbench retrieval --profiles results/profiles/cellprofiler/mad_featselect.parquet "
                     "--task replicate_retrieval --output results/retrieval/cellprofiler/mad_featselect/replicate_retrieval.parquet "
                     "--ap-output results/retrieval/cellprofiler/mad_featselect/replicate_retrieval_ap.parquet",
                     "paintbench retrieval --profiles results/profiles/cellprofiler/mad_featselect.parquet "
                     "--task compound_gene_matching "
                     "--replicate-results results/retrieval/cellprofiler/mad_featselect/replicate_retrieval.parquet "
                     "--output results/retrieval/cellprofiler/mad_featselect/compound_gene_matching.parquet"])
    p.add_argument("--profiles", required=True, help="Parquet, CSV or CSV.GZ with Metadata_ columns and features")
    p.add_argument("--task", choices=TASKS, required=True, help="the retrieval task")
    p.add_argument("--output", required=True, help="per-perturbation table (Parquet)")
    p.add_argument("--ap-output", default=None, help="per-query AP table (default: <output>_ap.parquet)")
    p.add_argument("--replicate-results", default=None, help="sister_matching and compound_gene_matching: the "
                   "replicate_retrieval table (replicate_retrieval.parquet)")
    add_config_options(p, RETRIEVAL_OPTIONS)
    add_own_columns(p)
    p.set_defaults(func=cmd_retrieval)

    p = add_command(sub, "layout-controls", "what well position, plate and chance alone retrieve, on any well-level table",
                    ["paintbench layout-controls --profiles results/profiles/cellprofiler/mad_featselect.parquet "
                     "--output results/retrieval/cellprofiler/mad_featselect/layout_controls.parquet"])
    p.add_argument("--profiles", required=True, help="Parquet, CSV or CSV.GZ with Metadata_ columns and features")
    add_config_options(p, LAYOUT_CONTROL_OPTIONS)
    p.add_argument("--nn-draws", type=int, default=1000,
                   help="target-list permutations behind the 1-NN target accuracy's chance")
    p.add_argument("--output", required=True, help="one row per control and condition (Parquet)")
    add_own_columns(p)
    p.set_defaults(func=cmd_layout_controls)
