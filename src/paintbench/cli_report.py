"""CLI of the report stage (summary, figures, HTML) and the target look-up `paintbench query`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from paintbench.cli_format import add_command

log = logging.getLogger(__name__)


def cmd_report_summary(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.report.summary import build_summary, read_published

    summary = build_summary(args.results_dir, args.feature_sets, published=read_published(args.published),
                            dataset=args.dataset, target_id=args.target_id)
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
    figures = make_figures(args.results_dir, args.feature_sets, args.plates, read_summary(args.summary),
                           args.figures_dir, args.train_dirs, plate_formats=formats)
    log.info("%d figures -> %s", len(figures), args.figures_dir)


def cmd_report_html(args: argparse.Namespace) -> None:
    from paintbench.report.build import read_manifest
    from paintbench.report.html import write_report

    figures_dir = Path(args.figures_dir)
    config_text = args.config_text or "(not recorded)"
    write_report(Path(args.summary), figures_dir, read_manifest(figures_dir), Path(args.results_dir), args.plates,
                 config_text, Path(args.output), args.cellprofiler)
    log.info("report -> %s", args.output)


def cmd_query(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.report.query import load_run, query, query_figure, with_matching_scores

    profiles, matching = load_run(args.results_dir, args.feature_set)
    name, ranked = query(profiles, compound=args.compound, gene=args.gene)
    ranked = with_matching_scores(ranked, matching)
    label = args.compound or args.gene
    stem = Path(args.output) if args.output else Path(args.results_dir) / "reports" / "query" / f"{label}_{args.feature_set}"
    write_table(ranked, stem.with_suffix(".tsv"))
    query_figure(ranked, "compound" if args.compound else "gene", label, args.feature_set, stem, top=args.top)
    shown = ranked[ranked["rank"] <= args.top]
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.3g}".format):
        print(f"{label} ({name}), feature set {args.feature_set}: top {args.top} per condition")
        print(shown.drop(columns=[c for c in ("Metadata_cell_type",) if shown[c].nunique() == 1]).to_string(index=False))
    log.info("table -> %s, figure -> %s", stem.with_suffix(".tsv"), stem.with_suffix(".png"))


def cmd_target_id(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.retrieval import scorable_features
    from paintbench.target_id import comparisons, polypharmacology, shortlists, similarity_pairs

    profiles = read_table(args.profiles)
    features = scorable_features(profiles)
    compared = comparisons(profiles, features)
    summary, queries = shortlists(compared, draws=args.draws, seed=args.seed)
    poly = polypharmacology(compared, alpha=args.alpha)
    pairs = similarity_pairs(compared)
    for table, path in ((summary, args.output), (queries, args.queries_output), (poly, args.polypharmacology_output),
                        (pairs, args.pairs_output)):
        write_table(table, path)
    calls = poly.drop_duplicates([c for c in poly.columns if c.startswith("Metadata_") and c != "Metadata_gene"])
    log.info("%s: %d target-identification and %d virtual-screening queries; %d multi-target compound calls "
             "(%s); %d pairs", args.profiles, int((queries["task"] == "target_identification").sum()),
             int((queries["task"] == "virtual_screening").sum()), len(calls),
             ", ".join(f"{n}: {c}" for n, c in zip(calls["Metadata_pert_iname"], calls["call"])) or "none", len(pairs))


def _finished_run_options(p: argparse.ArgumentParser) -> None:
    """What report-figures and report-html both read: the run's results, its plates and summary.tsv."""
    p.add_argument("--results-dir", required=True, help="the run's results_dir")
    p.add_argument("--plates", nargs="+", required=True, help="the run's plate barcodes")
    p.add_argument("--summary", required=True, help="the run's reports/summary.tsv")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "report-summary", "summary.tsv: feature set x task x condition, with published values",
                    ["paintbench report-summary --results-dir results --feature-sets cellprofiler vitmae "
                     "--published config/metadata/cpjump1_published_cellprofiler.tsv --target-id "
                     "--output results/reports/summary.tsv"])
    p.add_argument("--results-dir", required=True, help="the run's results_dir")
    p.add_argument("--feature-sets", nargs="+", required=True, help="feature sets to summarize, in report order")
    p.add_argument("--published", required=True, help="TSV of the CPJUMP1 paper's CellProfiler values per task and condition")
    p.add_argument("--dataset", choices=["cpjump1", "synthetic", "own"], default="cpjump1",
                   help="whose plates the run scored: only a cpjump1 run is comparable with the paper's values")
    p.add_argument("--synthetic", dest="dataset", action="store_const", const="synthetic", help=argparse.SUPPRESS)
    p.add_argument("--target-id", action="store_true",
                   help="add the shortlist rows of results_dir/target_id/<feature set>.parquet")
    p.add_argument("--output", required=True, help="summary table (TSV)")
    p.set_defaults(func=cmd_report_summary)

    p = add_command(sub, "report-figures", "the report's figures (PNG + SVG) and their manifest",
                    ["paintbench report-figures --results-dir results --plates BR00116991 BR00116992 "
                     "--summary results/reports/summary.tsv --feature-sets cellprofiler vitmae "
                     "--train-dirs results/vit/mae --figures-dir results/reports/figures"])
    _finished_run_options(p)
    p.add_argument("--feature-sets", nargs="+", required=True, help="feature sets to show, in report order")
    p.add_argument("--train-dirs", nargs="*", default=[],
                   help="pretraining folders results_dir/vit/<method> (train_log.tsv; MAE: checkpoint.pt)")
    p.add_argument("--metadata-dir", default=None,
                   help="plate metadata, for each plate's format (96 or 384 wells) in the plate maps; default: 384")
    figures_dir = p.add_mutually_exclusive_group(required=True)
    figures_dir.add_argument("--figures-dir", help="folder of the figures and their manifest (read by report-html)")
    # 0.1's name of --figures-dir, kept working for old command lines but not shown.
    figures_dir.add_argument("--out-dir", dest="figures_dir", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_report_figures)

    p = add_command(sub, "report-html", "self-contained reports/index.html",
                    ["paintbench report-html --results-dir results --plates BR00116991 BR00116992 "
                     "--summary results/reports/summary.tsv --figures-dir results/reports/figures "
                     "--output results/reports/index.html"])
    _finished_run_options(p)
    p.add_argument("--figures-dir", required=True, help="the folder report-figures wrote")
    p.add_argument("--config-text", default=None, help="the run's configuration (YAML text) to show")
    p.add_argument("--cellprofiler", default=None, help="CellProfiler executable (for its version)")
    p.add_argument("--output", required=True, help="the HTML report")
    p.set_defaults(func=cmd_report_html)

    p = add_command(sub, "target-id", "shortlist quality of target identification and virtual screening, and "
                    "polypharmacology calls, for one feature set",
                    ["paintbench target-id --profiles results/profiles/cellprofiler/scored.parquet "
                     "--output results/target_id/cellprofiler.parquet "
                     "--queries-output results/target_id/cellprofiler_queries.parquet "
                     "--polypharmacology-output results/target_id/cellprofiler_polypharmacology.parquet "
                     "--pairs-output results/target_id/cellprofiler_pairs.parquet"])
    p.add_argument("--profiles", required=True, help="the feature set's scored.parquet")
    p.add_argument("--alpha", type=float, default=0.05, help="q threshold of a polypharmacology call")
    p.add_argument("--draws", type=int, default=10_000, help="random shortlists per query for the p-values")
    p.add_argument("--seed", type=int, default=0, help="seed of the random shortlists")
    p.add_argument("--output", required=True, help="per task x condition x k: recall@k, precision@k, best rank, p")
    p.add_argument("--queries-output", required=True, help="per query: best rank, hits / recall / precision @k")
    p.add_argument("--polypharmacology-output", required=True, help="per multi-target compound x target: rank, q, call")
    p.add_argument("--pairs-output", required=True, help="every compound-gene pair's cosine (the report's look-up)")
    p.set_defaults(func=cmd_target_id)

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
