"""The three CPJUMP1 retrieval tasks on normalized well profiles, for any feature set, as the paper's code runs
them (benchmark/1.0.calculate-map-cp.ipynb of jump-cellpainting/2024_Chandrasekaran_NatureMethods).

A condition is one experiment: cell type, modality, time point and plate group (density, antibiotics, cell line
and time delay: plates that differ in them are never pooled). Matching tasks add the matched genetic condition.

1. replicate_retrieval: every well that is neither a negative control nor empty is a query (positive controls
   included); positives: the other wells of the same perturbation on any plate of the condition; negatives: the
   negative-control wells of the query's plate; cosine. Scored per perturbation; BH within the condition.
2. sister_matching: median consensus per perturbation of those that passed task 1 (q < 0.05). Compounds: one query
   per (compound, target) pair; positives: the other compounds with that target; negatives: compounds sharing no
   target; |cosine|; scored per target gene. CRISPR: guides whose sister guide did not pass are removed; positives:
   the other guide(s) of the gene, negatives: guides of other genes; cosine; scored per gene. ORFs have no sisters.
3. compound_gene_matching: passed compound consensus profiles (targets restricted to genes with a passed reagent
   in the genetic condition) and passed per-reagent genetic consensus profiles (each guide or ORF on its own);
   both are queries: (compound, target) against the genetic reagents, (reagent, gene) against the compounds;
   positives: the same gene in the other modality; negatives: the other modality's profiles sharing no target;
   |cosine|; scored per gene over both directions; every compound time point against every genetic time point
   of the same cell type.
Significance follows `protocol` (paintbench.significance): cpjump1 or copairs; the pair definitions are the same.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np
import pandas as pd

from paintbench.metadata import EMPTY, NEGCON
from paintbench.metrics import retrieval_ap
from paintbench.profiles import feature_columns
from paintbench.registry import COMPOUND_GENE_NEGATIVES, PROTOCOLS, TASKS
from paintbench.significance import (Protocol, expected_min_p, perfect_ranking_probability,
                                     query_p_values, score_groups)

log = logging.getLogger(__name__)

CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_plate_group"]
PERT = "Metadata_broad_sample"
TARGETS = "Metadata_target_list"
GENE = "Metadata_gene"
ANNOTATION = ["Metadata_pert_iname", GENE, TARGETS, "Metadata_control_type"]
GENETIC = ("crispr", "orf")


def with_condition_columns(profiles: pd.DataFrame) -> pd.DataFrame:
    """A table lacking some condition columns (a user's own profiles) is one condition in those."""
    missing = {column: "all" for column in CONDITION if column not in profiles.columns}
    return profiles.assign(**missing) if missing else profiles


def is_negcon(profiles: pd.DataFrame) -> np.ndarray:
    return (profiles["Metadata_control_type"] == NEGCON).to_numpy()


def is_query(profiles: pd.DataFrame) -> np.ndarray:
    """Every well that is neither a negative control nor empty: treatments and positive controls."""
    empty = profiles["Metadata_pert_type"].eq(EMPTY) | profiles["Metadata_control_type"].eq(EMPTY) | profiles[PERT].isna()
    return ~is_negcon(profiles) & ~empty.to_numpy()


def score_condition(ap: pd.DataFrame, group: list[str], condition: dict, protocol: Protocol, null_size: int, seed: int,
            names: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-query p-values (cpjump1) and the per-group table of one condition, both carrying the condition."""
    ap = ap[ap["n_pos_pairs"] > 0].reset_index(drop=True)
    if protocol == "cpjump1":
        ap = ap.assign(p_value=query_p_values(ap, null_size, seed))
    # A query whose list is too short for a perfect ranking to reach p < 0.05 is flagged, never silently counted.
    chance = perfect_ranking_probability(ap["n_pos_pairs"].to_numpy(), ap["n_total_pairs"].to_numpy())
    ap = ap.assign(testable=expected_min_p(chance, null_size) < 0.05)
    ap = ap.assign(**condition)  # matching: a reagent query's own modality stays in Metadata_query_modality
    if ap.empty:
        return ap, pd.DataFrame()
    scored = score_groups(ap, group, protocol, null_size, seed)
    # The other protocol's verdict on the same APs, so a report can show what the choice of statistic changes.
    other = next(p for p in PROTOCOLS if p != protocol)
    alt = score_groups(ap.drop(columns=["p_value"], errors="ignore"), group, other, null_size, seed)
    scored = scored.assign(alt_protocol=other, alt_p_value=alt["p_value"].to_numpy(),
                           alt_corrected_p_value=alt["corrected_p_value"].to_numpy(),
                           alt_below_corrected_p=alt["below_corrected_p"].to_numpy())
    keep = [c for c in ANNOTATION if c in ap.columns and c not in group]
    if group == [PERT]:
        scored = scored.join(ap.drop_duplicates(PERT).set_index(PERT)[keep], on=PERT)
    if names is not None:  # the perturbations whose queries a gene's row pools
        members = ap.groupby(group, sort=True)[names].agg(lambda v: "|".join(sorted(set(map(str, v)))))
        scored = scored.join(members.rename("Metadata_perturbations"), on=group)
    for key, value in reversed(list(condition.items())):
        scored.insert(0, key, value)
    return ap, scored


def conditions(profiles: pd.DataFrame) -> Iterator[tuple[tuple, pd.DataFrame]]:
    """(condition key, its wells re-indexed from 0) in key order; a table that is one condition is not copied."""
    grouped = profiles.groupby(CONDITION, sort=True)
    if grouped.ngroups == 1 and len(next(iter(grouped.indices.values()))) == len(profiles):
        yield next(iter(grouped.groups)), profiles.reset_index(drop=True)
        return
    for key, sub in grouped:
        yield key, sub.reset_index(drop=True)


def replicate_retrieval(profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
                        null_size: int = 100_000, seed: int = 0,
                        dtype: type = np.float64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-query AP, per-perturbation mAP/p/q) for every condition."""
    profiles = with_condition_columns(profiles)
    aps, maps = [], []
    for key, sub in conditions(profiles):
        query, negcon = is_query(sub), is_negcon(sub)
        if not query.any() or not negcon.any():
            log.warning("replicate retrieval %s: %d queries, %d controls: skipped", key, query.sum(), negcon.sum())
            continue
        ap = retrieval_ap(sub, features, query_mask=query, pos_same=[PERT], neg_mask=negcon, neg_same=["Metadata_Plate"],
                          dtype=dtype)
        ap, scored = score_condition(ap, [PERT], dict(zip(CONDITION, key)), protocol, null_size, seed)
        aps.append(ap)
        maps.append(scored)
    return _concat(aps), _concat(maps)


def consensus(profiles: pd.DataFrame, features: list[str], by: list[str]) -> pd.DataFrame:
    """Median profile per group (the paper's consensus) of the query wells, carrying their annotation."""
    treated = profiles[is_query(profiles)]
    medians = treated.groupby(by, sort=True)[features].median()
    annotation = treated.drop_duplicates(by).set_index(by)[[c for c in ANNOTATION if c in treated.columns and c not in by]]
    return medians.join(annotation).reset_index()


def passed_consensus(profiles: pd.DataFrame, features: list[str],
                     replicate_scored: pd.DataFrame) -> Iterator[tuple[dict, pd.DataFrame]]:
    """(condition, consensus of the perturbations that passed replicate retrieval there) per condition."""
    profiles = with_condition_columns(profiles)
    if replicate_scored.empty:
        return
    passed = replicate_scored.loc[replicate_scored["below_corrected_p"], CONDITION + [PERT]]
    active = profiles.merge(passed, on=CONDITION + [PERT], how="inner")
    for key, sub in active.groupby(CONDITION, sort=True):
        yield dict(zip(CONDITION, key)), consensus(sub, features, CONDITION + [PERT])


def sister_matching(profiles: pd.DataFrame, features: list[str], replicate_scored: pd.DataFrame,
                    protocol: Protocol = "cpjump1", null_size: int = 100_000,
                    seed: int = 0, dtype: type = np.float64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-query AP, per-gene mAP/p/q): compounds per target gene, CRISPR guides per gene."""
    aps, maps = [], []
    for condition, table in passed_consensus(profiles, features, replicate_scored):
        modality = condition["Metadata_modality"]
        if modality == "compound":
            table = table[table[TARGETS].notna()].reset_index(drop=True)
            if table.empty:
                continue
            ap = retrieval_ap(table, features, multilabel=TARGETS, multilabel_mode="per_label", abs_similarity=True,
                              dtype=dtype)
            ap = ap.assign(**{GENE: ap[TARGETS]})
        elif modality == "crispr":
            guides = table[GENE].map(table[GENE].value_counts())
            table = table[guides > 1].reset_index(drop=True)  # a guide whose sister did not pass is removed
            if table.empty:
                continue
            ap = retrieval_ap(table, features, pos_same=[GENE], neg_diff=[GENE], dtype=dtype)
        else:
            continue  # ORF plates carry one ORF per gene: no sisters
        ap, scored = score_condition(ap, [GENE], condition, protocol, null_size, seed, names=PERT)
        aps.append(ap)
        maps.append(scored)
    return _concat(aps), _concat(maps)


def _restricted_targets(target_list: object, genes: set[str]) -> str | None:
    kept = sorted({t for t in str(target_list).split("|") if t} & genes) if isinstance(target_list, str) else []
    return "|".join(kept) or None


def compound_gene_matching(profiles: pd.DataFrame, features: list[str], replicate_scored: pd.DataFrame,
                           protocol: Protocol = "cpjump1", null_size: int = 100_000, seed: int = 0,
                           negatives: str = "disjoint", dtype: type = np.float64) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-query AP in both directions, per-gene mAP/p/q) for every compound x genetic condition of a cell type.

    negatives: 'disjoint' (the paper's definition: the other modality's profiles sharing no target) or
    'paper_code' (what the paper's code computed: every profile of the other modality, true matches included).
    """
    if negatives not in COMPOUND_GENE_NEGATIVES:
        raise ValueError(f"compound-gene negatives must be one of {COMPOUND_GENE_NEGATIVES}, not {negatives!r}")
    tables = list(passed_consensus(profiles, features, replicate_scored))
    compounds = [(c, t) for c, t in tables if c["Metadata_modality"] == "compound"]
    genetic = [(c, t) for c, t in tables if c["Metadata_modality"] in GENETIC]
    aps, maps = [], []
    for compound_condition, compound_table in compounds:
        for genetic_condition, reagents in genetic:
            if genetic_condition["Metadata_cell_type"] != compound_condition["Metadata_cell_type"]:
                continue
            reagents = reagents[reagents[GENE].notna()]
            queries = compound_table.assign(**{TARGETS: compound_table[TARGETS].map(
                lambda t: _restricted_targets(t, set(reagents[GENE])))})
            queries = queries[queries[TARGETS].notna()]
            if queries.empty or reagents.empty:
                continue
            both = pd.concat([queries, reagents.assign(**{TARGETS: reagents[GENE]})], ignore_index=True)
            ap = retrieval_ap(both, features, pos_diff=["Metadata_modality"], neg_diff=["Metadata_modality"],
                              multilabel=TARGETS, multilabel_mode="per_label", abs_similarity=True,
                              paper_code_negatives=negatives == "paper_code", dtype=dtype)
            ap = ap.assign(**{GENE: ap[TARGETS], "Metadata_query_modality": ap["Metadata_modality"]})
            matched = {f"Metadata_matched_{k[len('Metadata_'):]}": genetic_condition[k]
                       for k in ("Metadata_modality", "Metadata_timepoint", "Metadata_plate_group")}
            ap, scored = score_condition(ap, [GENE], {**compound_condition, **matched}, protocol, null_size, seed, names=PERT)
            aps.append(ap)
            maps.append(scored.assign(compound_gene_negatives=negatives))
    return _concat(aps), _concat(maps)


def run_task(task: str, profiles: pd.DataFrame, features: list[str], protocol: Protocol = "cpjump1",
             null_size: int = 100_000, seed: int = 0, replicate_scored: pd.DataFrame | None = None,
             compound_gene_negatives: str = "disjoint",
             precision: str = "float64") -> tuple[pd.DataFrame, pd.DataFrame]:
    """One task by name; the matching tasks compute replicate retrieval first when it is not given. `precision`:
    the profiles' arithmetic, float64 or float32 (half the memory; APs within 1e-3, docs/methods.md)."""
    dtype = {"float64": np.float64, "float32": np.float32}[precision]
    if task == "replicate_retrieval":
        return replicate_retrieval(profiles, features, protocol, null_size, seed, dtype)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if replicate_scored is None:
        replicate_scored = replicate_retrieval(profiles, features, protocol, null_size, seed, dtype)[1]
    if task == "sister_matching":
        return sister_matching(profiles, features, replicate_scored, protocol, null_size, seed, dtype)
    return compound_gene_matching(profiles, features, replicate_scored, protocol, null_size, seed,
                                  compound_gene_negatives, dtype)


def _concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def user_profiles(table: pd.DataFrame, pert_col: str = PERT, plate_col: str = "Metadata_Plate",
                  control_col: str | None = "Metadata_control_type", control_value: str = NEGCON,
                  labels_col: str | None = None) -> pd.DataFrame:
    """A user's own well-level table in the columns the tasks read: `pert_col` names the perturbation, negative
    controls are the rows whose `control_col` (else `pert_col`) equals `control_value`, `labels_col` holds the
    matching labels (e.g. a MoA column); missing condition columns make one condition."""
    out = table.rename(columns={pert_col: PERT, plate_col: "Metadata_Plate"}).copy()
    marks = out[control_col] if control_col else out[PERT]
    is_control = marks.astype(str) == control_value
    out["Metadata_control_type"] = is_control.map({True: NEGCON, False: None})
    if "Metadata_pert_type" not in table.columns or not control_col:
        out["Metadata_pert_type"] = is_control.map({True: "control", False: "trt"})
    if labels_col:
        out[TARGETS] = out[labels_col]
    return with_condition_columns(out)


def scorable_features(profiles: pd.DataFrame) -> list[str]:
    """Numeric non-Metadata columns without missing or infinite values (cosine similarity needs them all)."""
    features = feature_columns(profiles)
    finite = profiles[features].replace([np.inf, -np.inf], np.nan).notna().all()
    dropped = [c for c in features if not finite[c]]
    if dropped:
        log.warning("%d feature(s) with missing values left out of retrieval: %s", len(dropped), dropped[:5])
    return [c for c in features if finite[c]]
