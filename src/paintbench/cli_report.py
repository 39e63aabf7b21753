"""CLI of the report stage (summary, figures, HTML) and the target look-up `paintbench query`."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def cmd_report_summary(args: argparse.Namespace) -> None:
    from paintbench.atomic import write_table
    from paintbench.report.summary import build_summary, read_published

    summary = build_summary(args.results_dir, args.feature_sets, published=read_published(args.published),
                            synthetic=args.synthetic)
    write_table(summary, args.output)
    log.info("%d summary rows (%d reference rows) -> %s", len(summary),
             int((summary["row_kind"] == "paper").sum()), args.output)


def cmd_report_figures(args: argparse.Namespace) -> None:
    from paintbench.report.build import make_figures
    from paintbench.report.summary import read_summary

    figures = make_figures(args.results_dir, args.feature_sets, args.plates, read_summary(args.summary), args.out_dir,
                           args.train_dirs)
    log.info("%d figures -> %s", len(figures), args.out_dir)


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


def _finished_run_options(p: argparse.ArgumentParser) -> None:
    """What report-figures and report-html both read: the run's results, its plates and summary.tsv."""
    p.add_argument("--results-dir", required=True)
    p.add_argument("--plates", nargs="+", required=True)
    p.add_argument("--summary", required=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report-summary", help="summary.tsv: feature set x task x condition, with published values")
    p.add_argument("--results-dir", required=True)
    p.add_argument("--feature-sets", nargs="+", required=True)
    p.add_argument("--published", required=True, help="TSV of the CPJUMP1 paper's CellProfiler values per task and condition")
    p.add_argument("--synthetic", action="store_true",
                   help="the run's plates are synthetic: the paper's values are a reference for other data")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_report_summary)

    p = sub.add_parser("report-figures", help="the report's figures (PNG + SVG) and their manifest")
    _finished_run_options(p)
    p.add_argument("--feature-sets", nargs="+", required=True)
    p.add_argument("--train-dirs", nargs="*", default=[],
                   help="pretraining folders results_dir/vit/<method> (train_log.tsv; MAE: checkpoint.pt)")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_report_figures)

    p = sub.add_parser("report-html", help="self-contained reports/index.html")
    _finished_run_options(p)
    p.add_argument("--figures-dir", required=True)
    p.add_argument("--config-text", default=None, help="the run's configuration (YAML text) to show")
    p.add_argument("--cellprofiler", default=None, help="CellProfiler executable (for its version)")
    p.add_argument("--output", required=True)
    p.set_defaults(func=cmd_report_html)

    p = sub.add_parser("query", help="genes like a compound (--compound) or compounds like a gene (--gene)")
    p.add_argument("--results-dir", required=True, help="a finished run's results_dir")
    p.add_argument("--feature-set", default="cellprofiler")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--compound", help="broad_sample or compound name")
    what.add_argument("--gene", help="gene symbol")
    p.add_argument("--top", type=int, default=10, help="rows per condition shown and plotted")
    p.add_argument("--output", default=None, help="output stem (default results_dir/reports/query/<name>_<feature set>)")
    p.set_defaults(func=cmd_query)
