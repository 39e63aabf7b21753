"""Candidate blocking (paintbench.blocking): the blocked engine equals today's dense engine (tests/dense_engine.py,
every query against every candidate) to 1e-12 for every rule combination the tasks use, on hand-made plates with
holes (a perturbation on one plate only, a plate without controls, duplicate wells), on the real LINCS plate and on
the paper-scale synthetic problem; float32 profiles stay within a stated tolerance of float64."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench import metrics
from paintbench.metrics import retrieval_ap
from tests.dense_engine import dense_retrieval_ap
from tests.helpers import PERT, PLATE

TARGETS = "Metadata_target_list"


def plates_with_holes(seed: int = 0, n_features: int = 12) -> tuple[pd.DataFrame, list[str]]:
    """Four plates of 24 wells (controls in 6), perturbations on 1-4 plates, one plate without controls, two wells
    listed twice, coarse features (ties), multi-target labels, two modalities."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(4):
        for w in range(24):
            control = w < 6 and p != 2  # plate 2 has no controls
            pert = "DMSO" if control else f"c{rng.integers(0, 30 if p < 3 else 45)}"  # c30-c44: on plate 3 only
            targets = None if control else "|".join(sorted({f"T{t}" for t in rng.integers(0, 8, rng.integers(1, 3))}))
            rows.append({PLATE: f"P{p}", "Metadata_Well": f"W{w:02d}", PERT: pert, "control": control,
                         TARGETS: targets, "Metadata_modality": "compound" if w % 3 else "crispr"})
    table = pd.DataFrame(rows)
    table = pd.concat([table, table.iloc[[7, 30]]], ignore_index=True)  # duplicate wells
    features = [f"f{k}" for k in range(n_features)]
    values = np.round(rng.normal(size=(len(table), n_features)), 1)
    values[-2:] = values[[7, 30]]  # a duplicate's profile too
    return pd.concat([table, pd.DataFrame(values, columns=features)], axis=1), features


def assert_same(blocked: pd.DataFrame, dense: pd.DataFrame) -> None:
    assert list(blocked.columns) == list(dense.columns) and blocked.index.equals(dense.index)
    for column in ("n_pos_pairs", "n_total_pairs"):
        assert np.array_equal(blocked[column], dense[column]), column
    np.testing.assert_allclose(blocked["average_precision"], dense["average_precision"], atol=1e-12, rtol=0)
    meta = [c for c in dense.columns if c not in ("average_precision", "n_pos_pairs", "n_total_pairs")]
    pd.testing.assert_frame_equal(blocked[meta], dense[meta])


RULES = {
    "replicate retrieval": dict(pos_same=[PERT], neg_same=[PLATE], negcon=True, query="treated"),
    "same-position controls": dict(pos_same=["Metadata_Well"], pos_diff=[PLATE], neg_same=[PLATE],
                                   neg_diff=["Metadata_Well"], query="control"),
    "replicates in other positions": dict(pos_same=[PERT], pos_diff=["Metadata_Well"], neg_same=[PLATE], negcon=True,
                                          query="treated"),
    "sister guides": dict(pos_same=[PERT], neg_diff=[PERT], query="treated"),
    "labels, per label": dict(multilabel=TARGETS, multilabel_mode="per_label", abs_similarity=True, query="treated"),
    "labels, any": dict(multilabel=TARGETS, pos_diff=[PERT], query="treated"),
    "labels, across modalities": dict(multilabel=TARGETS, multilabel_mode="per_label", pos_diff=["Metadata_modality"],
                                      neg_diff=["Metadata_modality"], abs_similarity=True, query="treated"),
    "paper code negatives": dict(multilabel=TARGETS, multilabel_mode="per_label", pos_diff=["Metadata_modality"],
                                 neg_diff=["Metadata_modality"], paper_code_negatives=True, query="treated"),
    "no positive rule": dict(neg_same=[PLATE], negcon=True, query="treated"),
}


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("block", [4_000_000, 37])
def test_blocked_equals_dense_for_every_rule_combination(name, block, monkeypatch):
    table, features = plates_with_holes()
    options = dict(RULES[name])
    query = {"treated": ~table["control"], "control": table["control"]}[options.pop("query")]
    if options.pop("negcon", False):
        options["neg_mask"] = table["control"].to_numpy()
    if "multilabel" in options:
        table = table[table[TARGETS].notna() | ~query].reset_index(drop=True)
        query = ~table["control"]
    dense = dense_retrieval_ap(table, features, query_mask=query.to_numpy(), **options)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", block)  # one chunk per group, or many chunks of one row
    blocked = retrieval_ap(table, features, query_mask=query.to_numpy(), **options)
    assert_same(blocked, dense)
    if name == "replicate retrieval":  # the holes: no positives on one plate, controls missing on another
        one_plate = blocked[PERT].map(table.loc[query, PERT].value_counts()) == 1
        assert one_plate.any() and (blocked.loc[one_plate, "n_pos_pairs"] == 0).all()
        assert blocked.loc[one_plate, "average_precision"].isna().all()
        assert (blocked.loc[blocked[PLATE] == "P2", "n_total_pairs"] == blocked.loc[blocked[PLATE] == "P2",
                                                                                     "n_pos_pairs"]).all()


def test_blocked_equals_dense_against_a_second_table():
    table, features = plates_with_holes(1)
    table = table[table[TARGETS].notna()].reset_index(drop=True)
    compounds = table[table["Metadata_modality"] == "compound"].reset_index(drop=True)
    genes = table[table["Metadata_modality"] == "crispr"].reset_index(drop=True)
    for mode in ("any", "per_label"):
        options = dict(candidates=genes, multilabel=TARGETS, multilabel_mode=mode, abs_similarity=True)
        assert_same(retrieval_ap(compounds, features, **options), dense_retrieval_ap(compounds, features, **options))


def test_blocked_equals_dense_on_the_real_lincs_plate(lincs):
    df, features = lincs
    options = dict(query_mask=~df["control"].to_numpy(), pos_same=[PERT], neg_mask=df["control"].to_numpy(),
                   neg_same=[PLATE])
    assert_same(retrieval_ap(df, features, **options), dense_retrieval_ap(df, features, **options))
    moa = df[df["Metadata_moa"].notna() & ~df["control"]].reset_index(drop=True)
    options = dict(pos_diff=[PERT], multilabel="Metadata_moa", multilabel_mode="per_label")
    assert_same(retrieval_ap(moa, features, **options), dense_retrieval_ap(moa, features, **options))


def test_float32_profiles_stay_within_the_stated_tolerance(lincs):
    """docs/methods.md states it: float32 APs within 1e-3 of float64's (rank keys are float32 either way)."""
    df, features = lincs
    options = dict(query_mask=~df["control"].to_numpy(), pos_same=[PERT], neg_mask=df["control"].to_numpy(),
                   neg_same=[PLATE])
    single = retrieval_ap(df, features, dtype=np.float32, **options)["average_precision"]
    double = retrieval_ap(df, features, **options)["average_precision"]
    assert np.nanmax(np.abs(single - double)) <= 1e-3 and abs(single.mean() - double.mean()) <= 1e-4


@pytest.mark.slow
def test_blocked_equals_dense_at_the_papers_scale():
    """40 plates x 384 wells, 64 controls per plate, every compound on 5 plates: 15,360 wells."""
    from scripts.bench_scale import jump_like_plates

    table, features = jump_like_plates(40, n_features=64, seed=3)
    control = table["Metadata_control_type"].eq("negcon").to_numpy()
    query = ~control
    options = dict(query_mask=query, pos_same=[PERT], neg_mask=control, neg_same=[PLATE])
    assert_same(retrieval_ap(table, features, **options), dense_retrieval_ap(table, features, **options))
