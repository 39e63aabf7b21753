"""The three CPJUMP1 retrieval tasks on normalized well profiles, for any feature set.

1. replicate_retrieval: every treatment well (pert_type 'trt') is a query; positives are the other wells of the
   same perturbation (any plate of the condition); negatives are the negative-control wells of the query's plate.
2. sister_matching: consensus (median) profiles of the perturbations that passed task 1. Compounds: positives
   share at least one target, |cosine|. CRISPR: the other guide(s) of the same gene, cosine. ORFs have no sisters.
3. compound_gene_matching: compound consensus profiles (all compounds with a target) against per-gene consensus
   profiles of CRISPR and of ORF plates of the same cell type; positives are genes in the compound's target list;
   |cosine| (a knockout or overexpression can mirror an inhibitor); multilabel.
A condition is (cell type, modality, time point), as in the paper; matching adds the matched modality and time.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from paintbench.metadata import NEGCON
from paintbench.metrics import mean_average_precision, retrieval_ap
from paintbench.profiles import feature_columns

log = logging.getLogger(__name__)

TASKS = ("replicate_retrieval", "sister_matching", "compound_gene_matching")
CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint"]
PERT = "Metadata_broad_sample"
ANNOTATION = ["Metadata_gene", "Metadata_target_list", "Metadata_pert_iname"]


def _scored(ap: pd.DataFrame, group: str, condition: dict, null_size: int, seed: int) -> pd.DataFrame:
    """mAP table of one condition with its condition columns and the group's annotation."""
    if ap.empty:
        return pd.DataFrame()
    scored = mean_average_precision(ap, group, null_size=null_size, seed=seed)
    annotation = ap.drop_duplicates(group).set_index(group)[[c for c in ANNOTATION if c in ap.columns]]
    scored = scored.join(annotation, on=group)
    for key, value in reversed(list(condition.items())):
        scored.insert(0, key, value)
    return scored


def replicate_retrieval(profiles: pd.DataFrame, features: list[str], null_size: int = 100_000, seed: int = 0,
                        pert_col: str = PERT, plate_col: str = "Metadata_Plate",
                        control_col: str = "Metadata_control_type") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-query AP, per-perturbation mAP/p/q) for every condition."""
    aps, maps = [], []
    for key, sub in profiles.groupby(CONDITION, sort=True):
        sub = sub.reset_index(drop=True)
        query = (sub["Metadata_pert_type"] == "trt").to_numpy()
        negcon = (sub[control_col] == NEGCON).to_numpy()
        if not query.any() or not negcon.any():
            log.warning("replicate retrieval %s: %d queries, %d controls: skipped", key, query.sum(), negcon.sum())
            continue
        ap = retrieval_ap(sub, features, query_mask=query, pos_same=[pert_col], neg_mask=negcon, neg_same=[plate_col])
        ap = ap[ap["n_pos_pairs"] > 0]
        aps.append(ap)
        maps.append(_scored(ap, pert_col, dict(zip(CONDITION, key)), null_size, seed))
    return _concat(aps), _concat(maps)


def consensus(profiles: pd.DataFrame, features: list[str], by: list[str]) -> pd.DataFrame:
    """Median profile per group (the paper's consensus), carrying gene and target annotations."""
    treated = profiles[profiles["Metadata_pert_type"] == "trt"]
    medians = treated.groupby(by, sort=True)[features].median()
    annotation = treated.drop_duplicates(by).set_index(by)[[c for c in ANNOTATION if c in treated.columns and c not in by]]
    return medians.join(annotation).reset_index()


def sister_matching(profiles: pd.DataFrame, features: list[str], replicate_map: pd.DataFrame,
                    null_size: int = 100_000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    passed = replicate_map.loc[replicate_map["below_corrected_p"], CONDITION + [PERT]]
    active = profiles.merge(passed, on=CONDITION + [PERT], how="inner")
    aps, maps = [], []
    for key, sub in active.groupby(CONDITION, sort=True):
        condition = dict(zip(CONDITION, key))
        modality = condition["Metadata_modality"]
        table = consensus(sub, features, CONDITION + [PERT])
        if modality == "compound":
            table = table[table["Metadata_target_list"].notna()].reset_index(drop=True)
            ap = retrieval_ap(table, features, multilabel="Metadata_target_list", abs_similarity=True)
        elif modality == "crispr":
            ap = retrieval_ap(table, features, pos_same=["Metadata_gene"], neg_diff=["Metadata_gene"])
        else:
            continue  # ORF plates carry one ORF per gene: no sisters
        ap = ap[ap["n_pos_pairs"] > 0]
        aps.append(ap)
        maps.append(_scored(ap, PERT, condition, null_size, seed))
    return _concat(aps), _concat(maps)


def compound_gene_matching(profiles: pd.DataFrame, features: list[str], null_size: int = 100_000,
                           seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    compounds = profiles[profiles["Metadata_modality"] == "compound"]
    genetic = profiles[profiles["Metadata_modality"].isin(["crispr", "orf"]) & profiles["Metadata_gene"].notna()]
    aps, maps = [], []
    for (cell, ctime), comp in compounds.groupby(["Metadata_cell_type", "Metadata_timepoint"], sort=True):
        queries = consensus(comp, features, ["Metadata_cell_type", "Metadata_timepoint", PERT])
        queries = queries[queries["Metadata_target_list"].notna()].reset_index(drop=True)
        for (modality, gtime), gen in genetic[genetic["Metadata_cell_type"] == cell].groupby(
                ["Metadata_modality", "Metadata_timepoint"], sort=True):
            genes = consensus(gen, features, ["Metadata_gene"])
            genes = genes.assign(Metadata_target_list=genes["Metadata_gene"])
            known = set(genes["Metadata_gene"])
            hits = queries["Metadata_target_list"].map(lambda t: bool(set(str(t).split("|")) & known))
            if not hits.any():
                continue
            ap = retrieval_ap(queries, features, query_mask=hits.to_numpy(), candidates=genes,
                              multilabel="Metadata_target_list", abs_similarity=True)
            ap = ap[ap["n_pos_pairs"] > 0]
            condition = {"Metadata_cell_type": cell, "Metadata_modality": "compound", "Metadata_timepoint": ctime,
                         "Metadata_matched_modality": modality, "Metadata_matched_timepoint": gtime}
            aps.append(ap.assign(**{k: v for k, v in condition.items() if k not in ap.columns}))
            maps.append(_scored(ap, PERT, condition, null_size, seed))
    return _concat(aps), _concat(maps)


def _concat(tables: list[pd.DataFrame]) -> pd.DataFrame:
    tables = [t for t in tables if not t.empty]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def scorable_features(profiles: pd.DataFrame) -> list[str]:
    """Numeric non-Metadata columns without missing or infinite values (cosine similarity needs them all)."""
    features = feature_columns(profiles)
    finite = profiles[features].replace([np.inf, -np.inf], np.nan).notna().all()
    dropped = [c for c in features if not finite[c]]
    if dropped:
        log.warning("%d feature(s) with missing values left out of retrieval: %s", len(dropped), dropped[:5])
    return [c for c in features if finite[c]]
