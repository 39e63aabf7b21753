"""`paintbench report-summary | report-figures | report-html | query`: the commands of workflow/rules/report.smk,
and the target look-up on a finished run.

The report commands take every file they read as an argument, NAME=FILE where a file belongs to a feature set (or a
profile set FS/CHAIN), a plate or a method (e.g. `--replicate-retrieval
cellprofiler/mad_featselect=results/retrieval/cellprofiler/mad_featselect/replicate_retrieval.parquet`). report-summary
takes every profile set by its own name; report-figures and report-html each feature set's headline chain under the
feature set's name.
The 0.2 form, `--results-dir DIR` (with --feature-sets), still works: it reads the same files from a results folder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli.options import add_command, tagged, tagged_files
from paintbench.registry import DATASETS, TASKS

log = logging.getLogger("paintbench")

# RunFiles field -> (option, what NAME is, help): the files the report commands read.
KEYED_FILES = {
    "replicate_ap": ("--replicate-ap", "feature set", "per-query replicate-retrieval APs (retrieval/FS/CHAIN/replicate_retrieval_ap.parquet)"),
    "shortlists": ("--shortlists", "feature set", "target-identification summaries (target_id/FS/CHAIN.parquet)"),
    "polypharmacology": ("--polypharmacology", "feature set", "polypharmacology calls (target_id/FS/CHAIN_polypharmacology.parquet)"),
    "pairs": ("--pairs", "feature set", "compound-gene pair cosines of the look-up (target_id/FS/CHAIN_pairs.parquet)"),
    "profiles": ("--profiles", "feature set", "scored well profiles of the feature set's headline chain (profiles/FS/CHAIN.parquet)"),
    "layout_controls": ("--layout-controls", "profile set", "layout and batch controls (retrieval/FS/CHAIN/layout_controls.parquet)"),
    "chain_steps": ("--chain-steps", "profile set", "what each chain step did (profiles/FS/CHAIN.steps.tsv)"),
    "cell_counts": ("--cell-counts", "plate", "CellProfiler well profiles, for cells per well (profiles/cellprofiler/PLATE.parquet)"),
    "qc": ("--qc", "plate", "the plate's QC table (qc/PLATE.tsv)"),
    "crops": ("--crops", "plate", "the plate's pretraining crop sample (vit/crops/PLATE.npy, its index .parquet beside it)"),
    "crop_centres": ("--crop-centres", "plate", "the plate's crop centres (vit/crops/PLATE.centres.parquet)"),
    "train_logs": ("--train-log", "method", "a pretraining log (vit/METHOD/train_log.tsv)"),
}


OWNER_METAVAR = {"feature set": "FS", "profile set": "FS/CHAIN", "plate": "PLATE", "method": "METHOD"}


def _dest(field: str) -> str:
    return f"files_{field}"


def _task_option(task: str) -> str:
    return "--" + task.replace("_", "-")


def _add_files(p: argparse.ArgumentParser, fields: list[str], tasks: bool = True) -> None:
    group = p.add_argument_group("the run's files (NAME=FILE: NAME a feature set, plate or method)")
    if tasks:
        for task in TASKS:
            group.add_argument(_task_option(task), dest=_dest(task), nargs="+", type=tagged, metavar="FS=FILE",
                               help=f"per-unit {task} results of each feature set (retrieval/FS/{task}.parquet), "
                                    "feature sets in report order")
    for field in fields:
        if field in KEYED_FILES:
            flag, name, help_text = KEYED_FILES[field]
            group.add_argument(flag, dest=_dest(field), nargs="+", type=tagged, metavar=f"{OWNER_METAVAR[name]}=FILE",
                               help=help_text)
    if "illum" in fields:
        group.add_argument("--illum", dest=_dest("illum"), nargs="+", metavar="NPY",
                           help="illumination functions (illum/PLATE/PLATE_Illum<Channel>.npy)")
    if "mae_checkpoint" in fields:
        group.add_argument("--mae-checkpoint", dest=_dest("mae_checkpoint"), metavar="PT", help="the MAE's checkpoint.pt "
                                                                                "(reconstructions)")
    if "ground_truth" in fields:
        group.add_argument("--ground-truth", dest=_dest("ground_truth"), metavar="PARQUET", help="synthetic runs: the planted answer "
                                                                            "(synthetic/ground_truth.parquet)")
    # 0.2's form: the run's folder and feature sets, the files read from it (see RunFiles.from_results_dir).
    p.add_argument("--results-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--feature-sets", nargs="+", default=None, help=argparse.SUPPRESS)


def run_files(args: argparse.Namespace, plates: list[str], feature_sets: list[str] | None = None):
    """The RunFiles of a command line: its explicit files, over those of --results-dir when given."""
    from paintbench.report.inputs import RunFiles, illum_by_plate, merge

    retrieval = {task: tagged_files(getattr(args, _dest(task), None), _task_option(task)) for task in TASKS
                 if hasattr(args, _dest(task))}
    order = list(next((sets for sets in retrieval.values() if sets), {})) or args.feature_sets or feature_sets or []
    given: dict[str, object] = {"retrieval": {t: {k: Path(v) for k, v in f.items()} for t, f in retrieval.items()}}
    for field, (flag, _, _) in KEYED_FILES.items():
        if hasattr(args, _dest(field)):
            given[field] = {k: Path(v) for k, v in tagged_files(getattr(args, _dest(field)), flag).items()}
    if hasattr(args, _dest("illum")):
        given["illum"] = illum_by_plate(getattr(args, _dest("illum")))
    for field in ("mae_checkpoint", "ground_truth"):
        value = getattr(args, _dest(field), None)
        given[field] = Path(value) if value else None
    given["retrieval"] = {t: f for t, f in given["retrieval"].items() if f}
    if args.results_dir:
        methods = [Path(d).name for d in getattr(args, "train_dirs", None) or []] or None
        base = RunFiles.from_results_dir(args.results_dir, order, plates, methods)
    else:
        if not order:
            raise ValueError(f"{_task_option(TASKS[0])}: the feature sets' results are required")
        base = RunFiles(order, plates)
    return merge(base, given).check()


def cmd_report_summary(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.report.summary import build_summary, read_published

    files = run_files(args, [])
    if args.results_dir and not args.target_id:
        files.shortlists = {}
    summary, paired = build_summary(files, published=read_published(args.published), dataset=args.dataset)
    if args.comparisons_output:
        write_table(paired, args.comparisons_output)
        log.info("%d paired comparisons -> %s", len(paired), args.comparisons_output)
    write_table(summary, args.output)
    log.info("%d summary rows (%d reference rows) -> %s", len(summary),
             int((summary["row_kind"] == "paper").sum()), args.output)


def cmd_report_figures(args: argparse.Namespace) -> None:
    from paintbench.report.build import make_figures
    from paintbench.report.summary import read_summary

    formats = None
    if args.metadata_dir:  # 96- or 384-well plate maps
        from paintbench.metadata import plate_info

        formats = {plate: plate_info(plate, args.metadata_dir).format for plate in args.plates}
    files = run_files(args, args.plates)
    figures = make_figures(files, read_summary(args.summary), args.figures_dir, plate_formats=formats)
    log.info("%d figures -> %s", len(figures), args.figures_dir)


def cmd_report_html(args: argparse.Namespace) -> None:
    from paintbench.report.build import read_manifest
    from paintbench.report.html import write_report
    from paintbench.report.bakeoff import headline_view
    from paintbench.report.summary import read_summary

    summary = headline_view(read_summary(args.summary))
    scored = list(dict.fromkeys(summary.loc[summary["row_kind"] != "paper", "feature_set"].dropna()))
    files = run_files(args, args.plates, scored)
    figures_dir = Path(args.figures_dir)
    write_report(Path(args.summary), figures_dir, read_manifest(figures_dir), files, args.config_text or "(not recorded)",
                 Path(args.output), args.cellprofiler)
    log.info("report -> %s", args.output)


def cmd_query(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.paths import RunPaths
    from paintbench.report.query import load_run, query, query_figure, with_matching_scores

    profiles, matching = load_run(args.results_dir, args.feature_set)
    name, ranked = query(profiles, compound=args.compound, gene=args.gene)
    ranked = with_matching_scores(ranked, matching)
    label = args.compound or args.gene
    stem = Path(args.output) if args.output else Path(RunPaths(args.results_dir).query_stem(label, args.feature_set))
    write_table(ranked, stem.with_suffix(".tsv"))
    query_figure(ranked, "compound" if args.compound else "gene", label, args.feature_set, stem, top=args.top)
    shown = ranked[ranked["rank"] <= args.top]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3g}".format):
        print(f"{label} ({name}), feature set {args.feature_set}: top {args.top} per condition")
        print(shown.drop(columns=[c for c in ("Metadata_cell_type",) if shown[c].nunique() == 1]).to_string(index=False))
    log.info("table -> %s, figure -> %s", stem.with_suffix(".tsv"), stem.with_suffix(".png"))


def add_commands(sub: argparse._SubParsersAction) -> None:
    example = "results/retrieval/{fs}/mad/{task}.parquet"
    tasks = " ".join(f"{_task_option(t)} " + " ".join(f"{fs}={example.format(fs=fs, task=t)}" for fs in ("cellprofiler", "vitmae"))
                     for t in TASKS)
    p = add_command(sub, "report-summary", "summary.tsv: profile set x task x condition, with published values",
                    [f"paintbench report-summary {tasks} --shortlists cellprofiler/mad=results/target_id/cellprofiler/mad.parquet "
                     "vitmae/mad=results/target_id/vitmae/mad.parquet "
                     "--published config/metadata/cpjump1_published_cellprofiler.tsv --output results/reports/summary.tsv"])
    _add_files(p, ["shortlists", "layout_controls", "chain_steps"])
    p.add_argument("--published", required=True, help="TSV of the CPJUMP1 paper's CellProfiler values per task and condition")
    p.add_argument("--dataset", choices=DATASETS, default=DATASETS[0],
                   help="whose plates the run scored: only a cpjump1 run is comparable with the paper's values")
    p.add_argument("--synthetic", dest="dataset", action="store_const", const="synthetic", help=argparse.SUPPRESS)
    # 0.2: with --results-dir, read the shortlist tables too.
    p.add_argument("--target-id", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--comparisons-output", default=None,
                   help="paired comparisons of the profile sets (TSV: reports/comparisons.tsv)")
    p.add_argument("--output", required=True, help="summary table (TSV)")
    p.set_defaults(func=cmd_report_summary)

    p = add_command(sub, "report-figures", "the report's figures (PNG + SVG) and their manifest",
                    [f"paintbench report-figures --summary results/reports/summary.tsv --plates BR00116991 {tasks} "
                     "--replicate-ap cellprofiler=results/retrieval/cellprofiler/mad_featselect/replicate_retrieval_ap.parquet "
                     "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy "
                     "--train-log mae=results/vit/mae/train_log.tsv --mae-checkpoint results/vit/mae/checkpoint.pt "
                     "--figures-dir results/reports/figures"])
    p.add_argument("--summary", required=True, help="the run's reports/summary.tsv")
    p.add_argument("--plates", nargs="+", required=True, help="the run's plate barcodes")
    _add_files(p, ["replicate_ap", "polypharmacology", "profiles", "illum", "cell_counts", "crops", "train_logs",
                   "mae_checkpoint"])
    p.add_argument("--metadata-dir", default=None,
                   help="plate metadata, for each plate's format (96 or 384 wells) in the plate maps; unset: 384")
    p.add_argument("--train-dirs", nargs="*", default=[], help=argparse.SUPPRESS)  # 0.2, with --results-dir
    figures_dir = p.add_mutually_exclusive_group(required=True)
    figures_dir.add_argument("--figures-dir", help="folder of the figures and their manifest (read by report-html)")
    # 0.1's name of --figures-dir, kept working for old command lines but not shown.
    figures_dir.add_argument("--out-dir", dest="figures_dir", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_report_figures)

    p = add_command(sub, "report-html", "self-contained reports/index.html",
                    [f"paintbench report-html --summary results/reports/summary.tsv --figures-dir results/reports/figures "
                     f"--plates BR00116991 {tasks} --qc BR00116991=results/qc/BR00116991.tsv "
                     "--pairs cellprofiler=results/target_id/cellprofiler/mad_featselect_pairs.parquet "
                     "--polypharmacology cellprofiler=results/target_id/cellprofiler/mad_featselect_polypharmacology.parquet "
                     "--output results/reports/index.html"])
    p.add_argument("--summary", required=True, help="the run's reports/summary.tsv")
    p.add_argument("--figures-dir", required=True, help="the folder report-figures wrote")
    p.add_argument("--plates", nargs="+", required=True, help="the run's plate barcodes")
    _add_files(p, ["polypharmacology", "pairs", "qc", "cell_counts", "crop_centres", "ground_truth"])
    p.add_argument("--config-text", default=None, help="the run's configuration (YAML text) to show")
    p.add_argument("--cellprofiler", default=None, help="CellProfiler executable (for its version)")
    p.add_argument("--output", required=True, help="the HTML report")
    p.set_defaults(func=cmd_report_html)

    p = add_command(sub, "query", "genes like a compound (--compound) or compounds like a gene (--gene)",
                    ["paintbench query --results-dir results --compound BI-2536",
                     "paintbench query --results-dir results --feature-set vitdino --gene PLK1 --top 20"])
    p.add_argument("--results-dir", required=True, help="a finished run's results_dir")
    p.add_argument("--feature-set", default="cellprofiler", help="the feature set whose profiles are compared")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--compound", help="broad_sample or compound name")
    what.add_argument("--gene", help="gene symbol")
    p.add_argument("--top", type=int, default=10, help="rows per condition shown and plotted")
    p.add_argument("--output", default=None, help="output stem (default results_dir/reports/query/<name>_<feature set>)")
    p.set_defaults(func=cmd_query)
