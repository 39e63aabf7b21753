"""Target identification / virtual screening shortlists and polypharmacology calls on hand-built profiles whose
answers are known, and the random expectations against simulation."""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from paintbench.target_id import (KS, Cosines, Shortlist, _random_best_ranks, annotated_pairs, background_p_values,
                                  candidate_ranks, condition_summary, comparisons, polypharmacology,
                                  similarity_pairs, random_best_rank, random_precision, random_recall,
                                  shortlists)

DIM = 50


def test_ranks_put_ties_at_their_worst():
    assert candidate_ranks(np.array([0.9, 0.5, 0.5, 0.1])).tolist() == [1, 3, 3, 4]
    assert candidate_ranks(np.array([0.2, 0.2])).tolist() == [2, 2]


def test_shortlist_metrics_by_hand():
    # 12 candidates, annotated partners at ranks 2, 7 and 11.
    shortlist = Shortlist(np.array([2, 7, 11]), 12)
    assert [shortlist.hits(k) for k in KS] == [0, 1, 2]
    assert [shortlist.recall(k) for k in KS] == pytest.approx([0, 1 / 3, 2 / 3])
    assert [shortlist.precision(k) for k in KS] == pytest.approx([0, 1 / 5, 2 / 10])
    # A list shorter than k: precision over the whole list.
    assert Shortlist(np.array([1, 3]), 4).precision(10) == pytest.approx(2 / 4)


def test_random_expectations_match_simulation():
    """Closed forms against shuffled scores (G = 12 candidates, T = 3 annotated), and the sampled best rank."""
    rng = np.random.default_rng(1)
    g, t, draws = 12, 3, 20_000
    annotated = np.zeros(g, bool)
    annotated[:t] = True
    recall = {k: [] for k in KS}
    precision = {k: [] for k in KS}
    best = []
    for _ in range(draws):
        shortlist = Shortlist(candidate_ranks(rng.random(g))[annotated], g)
        best.append(shortlist.target_ranks.min())
        for k in KS:
            recall[k].append(shortlist.recall(k))
            precision[k].append(shortlist.precision(k))
    for k in KS:
        assert np.mean(recall[k]) == pytest.approx(random_recall(g, k), abs=0.01)
        assert np.mean(precision[k]) == pytest.approx(random_precision(g, t), abs=0.01)
    assert np.mean(best) == pytest.approx(random_best_rank(g, t), abs=0.03)
    sampled = _random_best_ranks(np.array([g]), np.array([t]), draws, rng)[0]
    assert sampled.mean() == pytest.approx(random_best_rank(g, t), abs=0.03)
    # P(best = r) = C(G - r, T - 1) / C(G, T): both the shuffles and the sampler follow it (4 standard errors).
    exact = np.array([comb(g - r, t - 1) / comb(g, t) for r in range(1, g + 1)])
    for observed in (np.array(best), sampled):
        assert np.bincount(observed, minlength=g + 1)[1:] / draws == pytest.approx(exact, abs=0.012)


def test_condition_p_values():
    perfect = [Shortlist(np.array([1]), 20) for _ in range(6)]
    rows = {row["k"]: row for row in condition_summary(perfect, draws=2000)}
    assert rows[1]["recall_at_k"] == 1 and rows[1]["random_recall_at_k"] == pytest.approx(0.05)
    assert rows[1]["recall_p"] == pytest.approx(1 / 2001) and rows[1]["best_rank_p"] == pytest.approx(1 / 2001)
    assert rows[1]["mean_best_rank"] == 1 and rows[1]["random_best_rank"] == pytest.approx(10.5)
    # Random shortlists: p is uniform, so below 0.05 about 5% of the time.
    rng = np.random.default_rng(0)
    ps = [condition_summary([Shortlist(rng.choice(np.arange(1, 21), 2, replace=False), 20) for _ in range(6)],
                            draws=500, seed=s)[1]["recall_p"] for s in range(200)]
    assert 0.01 < np.mean(np.array(ps) < 0.05) < 0.12


def _profiles() -> pd.DataFrame:
    """CRISPR genes G1..G4 along axes e1..e4 (3 replicate wells each); compounds:
    C_one -> G2 (annotated G2), C_poly follows G4 only (annotated G3|G4), C_both = e1 + e2 (annotated G1|G2),
    C_none random (annotated G1|G3), and 24 unannotated random compounds (the background of unrelated pairs)."""
    rng = np.random.default_rng(3)
    axis = np.eye(DIM)
    rows = []

    def wells(modality, sample, name, gene, targets, profile):
        for replicate in range(3):
            values = profile + rng.normal(0, 0.02, DIM)
            rows.append({"Metadata_cell_type": "A549", "Metadata_timepoint": 24 if modality == "compound" else 144,
                         "Metadata_plate_group": "benchmark", "Metadata_modality": modality,
                         "Metadata_broad_sample": sample, "Metadata_pert_iname": name, "Metadata_gene": gene,
                         "Metadata_target_list": targets, "Metadata_control_type": None, "Metadata_pert_type": "trt",
                         **{f"f{j}": v for j, v in enumerate(values)}})

    for g in range(4):
        wells("crispr", f"guide{g + 1}", f"G{g + 1}", f"G{g + 1}", None, axis[g])
    wells("compound", "BRD-one", "C_one", None, "G2", axis[1])
    wells("compound", "BRD-poly", "C_poly", None, "G3|G4", axis[3] + 0.05 * axis[0])
    wells("compound", "BRD-both", "C_both", None, "G1|G2", axis[0] + axis[1])
    wells("compound", "BRD-none", "C_none", None, "G1|G3", rng.normal(0, 1, DIM))
    for c in range(24):
        wells("compound", f"BRD-x{c}", f"X{c}", None, "OTHER", rng.normal(0, 1, DIM))
    return pd.DataFrame(rows)


def test_shortlists_on_known_profiles():
    profiles = _profiles()
    features = [f"f{j}" for j in range(DIM)]
    summary, queries = shortlists(comparisons(profiles, features), draws=2000)
    ti = queries[queries["task"] == "target_identification"].set_index("query_name")
    assert set(ti.index) == {"C_one", "C_poly", "C_both", "C_none"}
    assert ti.loc["C_one", "best_rank"] == 1 and ti.loc["C_one", "recall_at_1"] == 1
    assert ti.loc["C_poly", "best_partner"] == "G4" and ti.loc["C_poly", "best_rank"] == 1
    assert ti.loc["C_poly", "recall_at_1"] == 0.5 and ti.loc["C_poly", "precision_at_1"] == 1
    assert ti.loc["C_both", "hits_at_5"] == 2 and ti.loc["C_both", "precision_at_5"] == pytest.approx(2 / 4)
    assert ti["n_candidates"].eq(4).all() and ti.loc["C_poly", "random_best_rank"] == pytest.approx(5 / 3)
    vs = queries[queries["task"] == "virtual_screening"].set_index("query")
    assert set(vs.index) == {"G1", "G2", "G3", "G4"}
    assert vs.loc["G4", "best_partner"] == "C_poly" and vs.loc["G4", "best_rank"] == 1
    assert vs["n_candidates"].eq(28).all()
    row = summary[(summary["task"] == "target_identification") & (summary["k"] == 1)].iloc[0]
    assert row["n_queries"] == 4 and row["Metadata_matched_modality"] == "crispr"
    assert row["recall_at_k"] == pytest.approx(np.mean([1, 0.5, 0.5, ti.loc["C_none", "recall_at_1"]]))
    assert row["random_recall_at_k"] == pytest.approx(0.25)


def test_polypharmacology_calls():
    profiles = _profiles()
    table = polypharmacology(comparisons(profiles, [f"f{j}" for j in range(DIM)]))
    calls = table.groupby("Metadata_pert_iname")["call"].first().to_dict()
    assert calls == {"C_poly": "G4", "C_both": "several", "C_none": "none"}
    poly = table[table["Metadata_pert_iname"] == "C_poly"].set_index("target")
    assert poly.loc["G4", "rank"] == 1 and poly.loc["G4", "passes"] and not poly.loc["G3", "passes"]
    # 28 compounds x 4 genes, 7 annotated pairs: the best p is 1 / (1 + 105), q over the compound's 2 targets.
    assert poly.loc["G4", "p_value"] == pytest.approx(1 / 106)
    assert poly.loc["G4", "q_value"] == pytest.approx(2 / 106)


def pair_p_values(scores: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The reference: (1 + background values >= each score) / (1 + background size), from the sorted background."""
    ordered = np.sort(background)
    return (1.0 + len(ordered) - np.searchsorted(ordered, scores, side="left")) / (1.0 + len(ordered))


def test_background_counted_in_blocks_equals_the_sorted_background(monkeypatch):
    """The polypharmacology p-values count the background a block of rows at a time (JUMP's ~10^9 pairs are never
    sorted): the same p as sorting every unannotated pair, ties included, for any block size."""
    from paintbench import target_id

    rng = np.random.default_rng(3)
    compounds, genes = rng.normal(size=(37, 5)), rng.normal(size=(11, 5))
    genes[3] = compounds[4]  # ties: a background pair with cosine exactly 1
    cosine = Cosines.of(compounds, genes)
    annotated = rng.random(cosine.shape) < 0.2
    annotated[4, 3] = False
    matrix = cosine.matrix()
    scores = np.concatenate([np.abs(matrix[annotated]), np.abs(matrix[~annotated][:5]), [0.0, 1.0, 2.0]])
    expected = pair_p_values(scores, np.abs(matrix[~annotated]))
    assert np.array_equal(background_p_values(scores, cosine, annotated), expected)
    monkeypatch.setattr(target_id, "KEEP_PAIRS", 0)
    for block in (1, 5 * 11, 1000):
        monkeypatch.setattr(target_id, "BLOCK_PAIRS", block)
        blocked = background_p_values(scores, Cosines.of(compounds, genes), annotated)
        np.testing.assert_allclose(blocked, expected, rtol=0, atol=2 / (~annotated).sum())
    assert expected[-3] == 1.0 and expected[-1] == pytest.approx(1 / (1 + (~annotated).sum()))
    assert expected[-2] == pytest.approx(2 / (1 + (~annotated).sum()))  # the tie counts as at least as similar


def test_target_id_in_blocks_equals_the_whole_matrix(monkeypatch):
    """A JUMP-scale condition is never held whole: shortlists, calls and the look-up are the same when every
    compound-gene cosine is computed a few rows or columns at a time."""
    from paintbench import target_id
    from paintbench.report.query import query

    profiles, features = _profiles(), [f"f{j}" for j in range(DIM)]
    whole = comparisons(profiles, features)
    expected = (*shortlists(whole, draws=500), polypharmacology(whole), query(profiles, compound="C_poly")[1],
                query(profiles, gene="G2")[1])
    monkeypatch.setattr(target_id, "KEEP_PAIRS", 0)
    monkeypatch.setattr(target_id, "BLOCK_PAIRS", 9)  # 2 compounds or 1 gene per block
    blocked = comparisons(profiles, features)
    assert all(c[3].whole is None for c in blocked)
    found = (*shortlists(blocked, draws=500), polypharmacology(blocked), query(profiles, compound="C_poly")[1],
             query(profiles, gene="G2")[1])
    for a, b in zip(found, expected):
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12, atol=1e-12)
    assert np.allclose(similarity_pairs(blocked)["cosine"], similarity_pairs(whole)["cosine"])


def test_annotated_pairs_by_lookup():
    mask = annotated_pairs(pd.Series(["G1|G3", None, "G9", "G2"]), pd.Series(["G1", "G2", "G3"]))
    assert mask.tolist() == [[True, False, True], [False, False, False], [False, False, False], [False, True, False]]


def test_pairs_table_over_the_lookup_limit_is_written_empty(tmp_path, caplog):
    """28 compounds x 4 genes = 112 pairs: at the default limit every pair is written; over a limit of 100 the
    command writes an empty pairs table, says so naming the config key, and the report leaves its look-up out."""
    from paintbench.atomic import read_table
    from paintbench.cli import main as paintbench
    from paintbench.report.targets import lookup_html

    profiles = tmp_path / "profiles.parquet"
    _profiles().to_parquet(profiles)

    def run(*limit: str) -> pd.DataFrame:
        out = {name: tmp_path / f"{name}{len(limit)}.parquet" for name in ("summary", "queries", "poly", "pairs")}
        assert paintbench(["target-id", "--profiles", str(profiles), "--draws", "100", *limit, "--output",
                           str(out["summary"]), "--queries-output", str(out["queries"]), "--polypharmacology-output",
                           str(out["poly"]), "--pairs-output", str(out["pairs"])]) == 0
        assert len(read_table(out["poly"])) == 6  # the calls do not depend on the limit
        return out["pairs"]

    full = run()
    assert len(read_table(full)) == 112 and "lookup-data" in lookup_html({"cellprofiler": full}, ["cellprofiler"])
    with caplog.at_level("WARNING", logger="paintbench"):
        empty = run("--lookup-max-pairs", "100")
    assert read_table(empty).empty and list(read_table(empty).columns) == list(read_table(full).columns)
    assert "112 compound-gene pairs" in caplog.text and "target_id.lookup_max_pairs" in caplog.text
    page = lookup_html({"cellprofiler": empty}, ["cellprofiler"])
    assert "Left out" in page and "target_id.lookup_max_pairs" in page and "lookup-data" not in page
