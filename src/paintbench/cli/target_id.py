"""`paintbench target-id`: the command of workflow/rules/target_id.smk."""

from __future__ import annotations

import argparse
import logging

from paintbench.cli.options import ConfigOption, add_command, add_config_options

log = logging.getLogger("paintbench")

TARGET_ID_OPTIONS = [
    ConfigOption("--alpha", "target_id.alpha", "q threshold of a polypharmacology call"),
    ConfigOption("--draws", "target_id.draws", "random shortlists per query for the p-values"),
    ConfigOption("--seed", "retrieval.seed", "seed of the random shortlists"),
    ConfigOption("--lookup-max-pairs", "target_id.lookup_max_pairs", "more compound-gene pairs than this: the "
                 "pairs table (the report's look-up) is written empty"),
]


def cmd_target_id(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table, write_table
    from paintbench.retrieval import scorable_features
    from paintbench.target_id import comparisons, polypharmacology, shortlists, similarity_pairs

    profiles = read_table(args.profiles)
    compared = comparisons(profiles, scorable_features(profiles))
    summary, queries = shortlists(compared, draws=args.draws, seed=args.seed)
    poly = polypharmacology(compared, alpha=args.alpha)
    n_pairs = sum(cosine.size for *_, cosine, _ in compared)
    pairs = similarity_pairs(compared if n_pairs <= args.lookup_max_pairs else [])
    if n_pairs > args.lookup_max_pairs:
        log.warning("%s: %d compound-gene pairs, more than config key 'target_id.lookup_max_pairs' (%d): the pairs "
                    "table is written empty and the report leaves its target look-up out (paintbench query still "
                    "ranks any compound or gene)", args.profiles, n_pairs, args.lookup_max_pairs)
    for table, path in ((summary, args.output), (queries, args.queries_output), (poly, args.polypharmacology_output),
                        (pairs, args.pairs_output)):
        write_table(table, path)
    calls = poly.drop_duplicates([c for c in poly.columns if c.startswith("Metadata_") and c != "Metadata_gene"])
    log.info("%s: %d target-identification and %d virtual-screening queries; %d multi-target compound calls "
             "(%s); %d pairs", args.profiles, int((queries["task"] == "target_identification").sum()),
             int((queries["task"] == "virtual_screening").sum()), len(calls),
             ", ".join(f"{n}: {c}" for n, c in zip(calls["Metadata_pert_iname"], calls["call"])) or "none", len(pairs))


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "target-id", "shortlist quality of target identification and virtual screening, and "
                    "polypharmacology calls, for one feature set",
                    ["paintbench target-id --profiles results/profiles/cellprofiler/mad_featselect.parquet "
                     "--output results/target_id/cellprofiler/mad_featselect.parquet "
                     "--queries-output results/target_id/cellprofiler/mad_featselect_queries.parquet "
                     "--polypharmacology-output results/target_id/cellprofiler/mad_featselect_polypharmacology.parquet "
                     "--pairs-output results/target_id/cellprofiler/mad_featselect_pairs.parquet"])
    p.add_argument("--profiles", required=True, help="the feature set's scored.parquet")
    add_config_options(p, TARGET_ID_OPTIONS)
    p.add_argument("--output", required=True, help="per task x condition x k: recall@k, precision@k, best rank, p")
    p.add_argument("--queries-output", required=True, help="per query: best rank, hits / recall / precision @k")
    p.add_argument("--polypharmacology-output", required=True, help="per multi-target compound x target: rank, q, call")
    p.add_argument("--pairs-output", required=True, help="every compound-gene pair's cosine (the report's look-up)")
    p.set_defaults(func=cmd_target_id)
