"""Average precision: hand-computed AP, the tie rule, pair rules, the paper code's compound-gene lists, and agreement
with copairs 0.5.5 (the reference implementation; used only in tests and scripts/bench_*.py). Significance is
tested in test_significance.py."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from paintbench import metrics
from paintbench.metrics import average_precision, retrieval_ap
from paintbench.significance import fraction_retrieved, score_groups

from tests.helpers import PERT, PLATE, replicate_ap


def ap1(sim, positive, valid=None):
    """AP of one query row."""
    sim = np.asarray([sim], dtype=float)
    valid = np.ones_like(sim, bool) if valid is None else np.asarray([valid])
    ap, _, _ = average_precision(sim, np.asarray([positive]), valid)
    return ap[0]


def test_hand_computed_average_precision():
    assert ap1([0.9, 0.8, 0.7], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    assert ap1([0.9, 0.8, 0.7], [False, False, True]) == pytest.approx(1 / 3, abs=1e-12)
    assert ap1([0.1, 0.9, 0.8, 0.2], [False, True, True, False]) == 1.0
    # Order of candidates in the row is irrelevant; only similarity ranks.
    assert ap1([0.7, 0.8, 0.9], [True, False, True]) == pytest.approx((1 + 2 / 3) / 2, abs=1e-12)
    # Invalid candidates are not in the list at all.
    assert ap1([0.99, 0.9, 0.8, 0.7], [False, True, False, True], [False, True, True, True]) == pytest.approx(
        (1 + 2 / 3) / 2, abs=1e-12
    )
    ap, n_pos, n_total = average_precision(np.array([[0.5, 0.4, 0.3]]), np.array([[True, False, True]]),
                                           np.array([[False, True, True]]))
    assert (n_pos[0], n_total[0]) == (1, 2) and ap[0] == pytest.approx(1 / 2)
    ap, n_pos, _ = average_precision(np.array([[0.5, 0.4]]), np.zeros((1, 2), bool), np.ones((1, 2), bool))
    assert np.isnan(ap[0]) and n_pos[0] == 0


def test_tie_rule_positive_first_on_float32_key():
    # Exactly equal similarity: the positive ranks first whatever its position in the row.
    assert ap1([0.5, 0.5], [False, True]) == 1.0
    # Different in float64 but equal as copairs' float32 key 1 - sim: still a tie, positive first.
    assert ap1([0.6 + 1e-10, 0.6], [False, True]) == 1.0
    # Distinct in float32: the more similar negative ranks first.
    assert ap1([0.6 + 1e-6, 0.6], [False, True]) == 0.5


def brute_force_ap(sim, positive, valid):
    """Literal definition: sort valid candidates by (float32 key, negative-after-positive)."""
    out = []
    for s, p, v in zip(sim, positive, valid):
        key = metrics.rank_key(s)
        order = sorted(np.flatnonzero(v), key=lambda j: (key[j], not p[j]))
        rel = np.array([p[j] for j in order])
        hits = np.flatnonzero(rel)
        out.append(np.mean((np.arange(len(hits)) + 1) / (hits + 1)) if len(hits) else np.nan)
    return np.array(out)


@pytest.mark.parametrize("max_pos", [3, 40])
def test_counting_and_sorting_engines_agree(monkeypatch, max_pos):
    rng = np.random.default_rng(1)
    sim = np.round(rng.uniform(-1, 1, (60, 90)), 1)  # coarse values: many ties
    positive = rng.random(sim.shape) < max_pos / 90
    valid = positive | (rng.random(sim.shape) < 0.7)
    expected = brute_force_ap(sim, positive, valid)
    fast, n_pos, n_total = average_precision(sim, positive, valid)
    np.testing.assert_allclose(fast, expected, atol=1e-12)
    assert np.array_equal(n_pos, positive.sum(1)) and np.array_equal(n_total, valid.sum(1))
    monkeypatch.setattr(metrics, "COUNTING_MAX_POS", 0)  # force the full-sort path
    np.testing.assert_allclose(average_precision(sim, positive, valid)[0], expected, atol=1e-12)
    monkeypatch.setattr(metrics, "BLOCK_ELEMENTS", 200)  # and row blocks
    np.testing.assert_allclose(average_precision(sim, positive, valid)[0], expected, atol=1e-12)


def test_paper_code_negatives_count_every_true_match_twice():
    """The paper's compound-gene lists (copairs@880f22a): each positive also stands as a negative twin with the same
    similarity, first in lists of up to 16 entries, after its positive in longer ones."""
    compound = pd.DataFrame({"Metadata_target_list": ["G1|G2"], "Metadata_modality": ["compound"], "x": [1.0], "y": [0.0]})
    genes = pd.DataFrame({"Metadata_target_list": ["G1", "G2", "G3"], "Metadata_modality": "crispr",
                          "x": [1.0, 0.0, 0.5], "y": [0.0, 1.0, 0.5]})
    kw = dict(candidates=genes, multilabel="Metadata_target_list", multilabel_mode="per_label", abs_similarity=True,
              pos_diff=["Metadata_modality"], neg_diff=["Metadata_modality"])
    ours = retrieval_ap(compound, ["x", "y"], **kw).set_index("Metadata_target_list")
    # disjoint: G1's list is g1 (+), g3; G2's is g3, g2 (+).
    assert ours["average_precision"].to_dict() == pytest.approx({"G1": 1.0, "G2": 0.5})
    paper = retrieval_ap(compound, ["x", "y"], paper_code_negatives=True, **kw).set_index("Metadata_target_list")
    # paper code, G1: negatives are g1, g2, g3 (all genes): twin(g1), g1 (+), g3, g2 -> AP 1/2; list of 4.
    # G2: twin order irrelevant below its positive's rank: g1, g3, twin(g2), g2 (+) -> AP 1/4.
    assert paper["average_precision"].to_dict() == pytest.approx({"G1": 0.5, "G2": 0.25})
    assert paper["n_total_pairs"].tolist() == [4, 4] and paper["n_pos_pairs"].tolist() == [1, 1]
    # A long list (more than 16 entries): the positive wins the tie with its twin.
    many = pd.concat([genes.iloc[:1], pd.DataFrame({"Metadata_target_list": [f"N{i}" for i in range(20)],
                                                    "Metadata_modality": "crispr", "x": 0.1, "y": 1.0})])
    long = retrieval_ap(compound.assign(Metadata_target_list="G1"), ["x", "y"], **{**kw, "candidates": many},
                        paper_code_negatives=True)
    assert long["average_precision"].item() == 1.0 and long["n_total_pairs"].item() == 22


def test_multilabel_two_tables_and_abs_similarity():
    compounds = pd.DataFrame({"Metadata_target_list": ["G1|G2"], "x": [1.0], "y": [0.0]})
    genes = pd.DataFrame({"Metadata_target_list": ["G1", "G2", "G3", "G5"],
                          "x": [-1.0, 0.0, 0.9, 0.5], "y": [0.1, 1.0, 0.1, 0.5]})
    kw = dict(candidates=genes, multilabel="Metadata_target_list")
    # |cos|: g1 (0.995, +), g3 (0.994), g5 (0.707), g2 (0, +) -> (1/1 + 2/4) / 2
    ap = retrieval_ap(compounds, ["x", "y"], abs_similarity=True, **kw)
    assert ap["average_precision"].iloc[0] == pytest.approx(0.75) and ap["n_total_pairs"].iloc[0] == 4
    # signed cosine: g3, g5, g2 (+), g1 (+, anti-correlated) -> (1/3 + 2/4) / 2
    assert retrieval_ap(compounds, ["x", "y"], **kw)["average_precision"].iloc[0] == pytest.approx(5 / 12)
    # per label: G1 ranks g1 among g3, g5 (g2 shares only G2: left out); G2 ranks g2 among g3, g5.
    per = retrieval_ap(compounds, ["x", "y"], abs_similarity=True, multilabel_mode="per_label", **kw)
    by_label = per.set_index("Metadata_target_list")["average_precision"].to_dict()
    assert by_label == pytest.approx({"G1": 1.0, "G2": 1 / 3})
    assert per["n_total_pairs"].tolist() == [3, 3]


# ---------------------------------------------------------------------------------------------
# Agreement with copairs 0.5.5
# ---------------------------------------------------------------------------------------------


def copairs_replicate_ap(df, feats):
    import copairs.map as cm
    from copairs.matching import assign_reference_index

    meta = assign_reference_index(df[[PERT, PLATE, "row_id"]], f"{PERT} == 'DMSO'")
    ref = "Metadata_Reference_Index"  # distinct per control: controls are never each other's positives
    ap = cm.average_precision(meta, df[feats].to_numpy(), pos_sameby=[PERT, ref], pos_diffby=[],
                              neg_sameby=[PLATE], neg_diffby=[PERT, ref], progress_bar=False)
    return ap[ap["n_pos_pairs"] > 0]


def test_tie_rule_equals_copairs():
    b = 0.6 + 1e-10  # equal to 0.6 once rounded to float32 (copairs' precision)
    rows = [  # plate 0: float32 tie; plate 1: exact duplicate; the negative listed first in both
        ("DMSO", 0, [b, np.sqrt(1 - b * b), 0]), ("c0", 0, [1, 0, 0]), ("c0", 0, [0.6, 0.8, 0]),
        ("DMSO", 1, [0, 0.6, 0.8]), ("c1", 1, [0, 0, 1]), ("c1", 1, [0, 0.6, 0.8]),
        ("DMSO", 1, [0.3, 0.3, -0.9]),
    ]
    df = pd.DataFrame([dict(zip([PERT, PLATE, "x", "y", "z"], [p, pl, *v])) for p, pl, v in rows])
    df["row_id"], df["control"] = np.arange(len(df)), df[PERT] == "DMSO"
    ours = replicate_ap(df, ["x", "y", "z"]).set_index("row_id")["average_precision"]
    ref = copairs_replicate_ap(df, ["x", "y", "z"]).set_index("row_id")["average_precision"]
    assert ours.to_dict() == pytest.approx({1: 1.0, 2: 0.5, 4: 1.0, 5: 0.5}, abs=1e-12)
    np.testing.assert_allclose(ours.loc[ref.index], ref, atol=1e-9)


def compare_to_copairs(ours, ref, key, group, tmp_path, null_size=10_000):
    """AP per query and mAP per group identical; p of our copairs protocol (ties count against the observation)
    within Monte Carlo error of copairs' (strictly greater only): on long lists the tie rule changes nothing beyond
    that noise. Same retrieved set except groups whose q sits within Monte Carlo error of 0.05."""
    import copairs.map as cm

    o = ours[ours["n_pos_pairs"] > 0].set_index(key).sort_index()
    r = ref.set_index(key).sort_index()
    assert o.index.equals(r.index)
    for col in ["n_pos_pairs", "n_total_pairs"]:
        assert np.array_equal(o[col].to_numpy(), r[col].to_numpy())
    np.testing.assert_allclose(o["average_precision"], r["average_precision"], rtol=0, atol=1e-9)
    om = score_groups(ours, group, "copairs", null_size=null_size, seed=0)
    rm = cm.mean_average_precision(ref, [group], null_size=null_size, threshold=0.05, seed=0,
                                   progress_bar=False, cache_dir=tmp_path)
    m = om.merge(rm, on=group, suffixes=("", "_ref"), validate="1:1")
    assert len(m) == len(om) == len(rm)
    np.testing.assert_allclose(m["mean_average_precision"], m["mean_average_precision_ref"], rtol=0, atol=1e-9)
    p_ref = m["p_value_ref"].to_numpy()
    tol = 4 * np.sqrt(p_ref * (1 - p_ref) / null_size) + 1 / null_size
    assert np.all(np.abs(m["p_value"] - p_ref) <= tol)
    flipped = (m["corrected_p_value"] < 0.05) != (m["corrected_p_value_ref"] < 0.05)
    rank = m["p_value_ref"].rank(method="max").to_numpy()
    q_tol = tol * len(m) / rank  # BH: q = p * n / rank, so p's error scales by n / rank
    assert np.all(np.abs(m["corrected_p_value_ref"] - 0.05)[flipped] <= q_tol[flipped])
    return om, flipped.sum()


def test_lincs_replicate_retrieval_matches_copairs(lincs, tmp_path):
    df, feats = lincs
    om, flipped = compare_to_copairs(replicate_ap(df, feats), copairs_replicate_ap(df, feats),
                                     "row_id", PERT, tmp_path)
    assert len(om) == 58 and flipped <= 2 and fraction_retrieved(om) > 0.3


def test_lincs_moa_matching_matches_copairs(lincs, tmp_path):
    import copairs.map as cm

    df, feats = lincs
    df = df[df["Metadata_moa"].notna() & ~df["control"]].reset_index(drop=True)
    ours = retrieval_ap(df, feats, pos_diff=[PERT], multilabel="Metadata_moa", multilabel_mode="per_label")
    meta = df[[PERT, "Metadata_moa", "row_id"]].assign(Metadata_moa=df["Metadata_moa"].str.split("|"))
    ref = cm.multilabel.average_precision(meta, df[feats].to_numpy(), pos_sameby=["Metadata_moa"],
                                          pos_diffby=[PERT], neg_sameby=[], neg_diffby=["Metadata_moa"],
                                          multilabel_col="Metadata_moa", progress_bar=False)
    om, flipped = compare_to_copairs(ours, ref, ["row_id", "Metadata_moa"], "Metadata_moa", tmp_path)
    assert len(om) == 8 and flipped == 0
    # One label per compound: "any" (one AP per query) and copairs' per-label mode coincide.
    single = ~df["Metadata_moa"].str.contains("|", regex=False).to_numpy()
    anym = retrieval_ap(df, feats, pos_diff=[PERT], multilabel="Metadata_moa")[single].set_index("row_id")
    per = ours.set_index("row_id").loc[anym.index]
    np.testing.assert_allclose(anym["average_precision"], per["average_precision"], atol=1e-12)
