"""Paired comparison of profile sets (paintbench.comparison): known answers on tiny cases, real retrieval on planted
profiles (a copy plus noise is never called better, a stronger planted set is), and the false-positive rate of
the call on null pairs and on label-shuffled data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from paintbench.comparison import (
    best_table,
    paired_best,
    paired_comparisons,
    paired_difference,
    shuffle_set_labels,
    shuffled_comparison_null,
)
from paintbench.retrieval import CONDITION, replicate_retrieval

TASK = "replicate_retrieval"
N_PERT, N_FEATURES = 48, 30


def planted_profiles(scale: float = 1.0, extra_noise: float = 0.0, noise_seed: int = 1) -> pd.DataFrame:
    """4 plates x (48 perturbations of graded planted strength + 16 negative controls), 30 features, unit well
    noise. `scale` multiplies the planted effects (same perturbations, same well noise); `extra_noise` adds
    Gaussian noise of that SD drawn from `noise_seed`."""
    rng = np.random.default_rng(0)
    effects = rng.normal(size=(N_PERT, N_FEATURES)) * np.linspace(0, 1.2, N_PERT)[:, None]
    plates = []
    for plate in range(4):
        n_ctrl = 16
        effect = np.vstack([effects, np.zeros((n_ctrl, N_FEATURES))])
        features = scale * effect + rng.normal(size=effect.shape)
        plates.append(pd.DataFrame(features).add_prefix("f").assign(
            Metadata_Plate=f"PL{plate}", Metadata_broad_sample=[f"P{i:02d}" for i in range(N_PERT)] + ["DMSO"] * n_ctrl,
            Metadata_pert_type=["trt"] * N_PERT + ["control"] * n_ctrl,
            Metadata_control_type=[None] * N_PERT + ["negcon"] * n_ctrl))
    profiles = pd.concat(plates, ignore_index=True)
    if extra_noise:
        features = [c for c in profiles if c.startswith("f")]
        noise = np.random.default_rng(noise_seed).normal(0, extra_noise, (len(profiles), len(features)))
        profiles[features] = profiles[features].to_numpy() + noise
    return profiles


def scored(profiles: pd.DataFrame) -> pd.DataFrame:
    return replicate_retrieval(profiles, [c for c in profiles if c.startswith("f")], protocol="cpjump1",
                               null_size=1000, seed=0)[1]


@pytest.fixture(scope="module")
def retrieved() -> dict[str, pd.DataFrame]:
    return {"cellprofiler/base": scored(planted_profiles()),
            "cellprofiler/noisy": scored(planted_profiles(extra_noise=0.05)),
            "vit/stronger": scored(planted_profiles(scale=1.6))}


def unit_table(maps: dict[str, float], **condition) -> pd.DataFrame:
    """A per-unit table of replicate retrieval: condition columns, perturbation, mAP."""
    base = {"Metadata_cell_type": "A549", "Metadata_modality": "compound", "Metadata_timepoint": 24,
            "Metadata_plate_group": "benchmark", **condition}
    return pd.DataFrame([{**base, "Metadata_broad_sample": unit, "mean_average_precision": value}
                         for unit, value in maps.items()])


# --- paired_difference: known answers ---------------------------------------------------------------------------

def test_exact_sign_flip_of_a_tiny_case():
    # differences [1, 2, 3]: of the 8 sign vectors only +++ and --- reach |sum| 6 -> p = 2/8
    out = paired_difference(np.zeros(3), np.array([1.0, 2.0, 3.0]))
    assert out["p_value"] == pytest.approx(2 / 8)
    assert out["difference"] == pytest.approx(2.0) and out["n_units"] == 3
    assert out["map_a"] == 0 and out["map_b"] == pytest.approx(2.0)
    assert out["wilcoxon_p_value"] == pytest.approx(0.25)
    assert out["difference_low"] <= 2.0 <= out["difference_high"]
    # the sign of the difference is b - a; the two-sided p does not change
    flipped = paired_difference(np.array([1.0, 2.0, 3.0]), np.zeros(3))
    assert flipped["difference"] == pytest.approx(-2.0) and flipped["p_value"] == pytest.approx(2 / 8)
    # [1, -1]: every sign vector reaches |sum| >= 0 -> p = 1; ties count against the observation
    assert paired_difference(np.zeros(2), np.array([1.0, -1.0]))["p_value"] == 1.0
    # [0.1, 0.2, 0.3] in floating point: the tie at |sum| = 0.6 is still counted
    assert paired_difference(np.zeros(3), np.array([0.1, 0.2, 0.3]))["p_value"] == pytest.approx(2 / 8)


def test_no_units_and_identical_sets():
    empty = paired_difference(np.array([]), np.array([]))
    assert empty["n_units"] == 0
    assert all(np.isnan(empty[k]) for k in ("map_a", "map_b", "difference", "difference_low", "difference_high",
                                            "p_value", "wilcoxon_p_value"))
    same = paired_difference(np.full(5, 0.4), np.full(5, 0.4))
    assert same["difference"] == 0 and same["p_value"] == 1.0 and np.isnan(same["wilcoxon_p_value"])
    assert same["difference_low"] == same["difference_high"] == 0
    # NaN pairs are dropped
    out = paired_difference(np.array([0.1, np.nan, 0.3]), np.array([0.2, 0.5, np.nan]))
    assert out["n_units"] == 1 and out["difference"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        paired_difference(np.zeros(2), np.zeros(3))


def test_monte_carlo_p_is_seeded_and_agrees_with_exact_enumeration():
    rng = np.random.default_rng(3)
    a, b = rng.random(14), rng.random(14) + 0.15
    exact = paired_difference(a, b, n_permutations=2**14)["p_value"]  # 2**14 sign vectors: enumerated
    assert (exact * 2**14) == pytest.approx(round(exact * 2**14))
    mc = paired_difference(a, b, n_permutations=5000, seed=7)
    assert mc == paired_difference(a, b, n_permutations=5000, seed=7)  # seeded: reproducible
    k = mc["p_value"] * 5001 - 1  # (1 + #{|perm| >= |obs|}) / (1 + n_permutations)
    assert k == pytest.approx(round(k)) and mc["p_value"] >= 1 / 5001
    assert abs(mc["p_value"] - exact) < 0.02


def test_bootstrap_interval_covers_the_mean_difference():
    rng = np.random.default_rng(4)
    a = rng.random(40)
    out = paired_difference(a, a + 0.1 + rng.normal(0, 0.05, 40), level=0.95)
    assert out["difference_low"] < out["difference"] < out["difference_high"]
    assert 0.07 < out["difference_low"] and out["difference_high"] < 0.13
    narrow = paired_difference(a, a + 0.1 + rng.normal(0, 0.05, 40), level=0.5)
    assert narrow["difference_high"] - narrow["difference_low"] < out["difference_high"] - out["difference_low"]


# --- the false-positive rate ---------------------------------------------------------------------------------------

def test_null_pairs_are_rejected_at_most_at_the_alpha_rate():
    """200 simulated pairs of per-unit mAP vectors: one true mAP per unit, two independent noisy measurements
    (the same perturbations scored by two equally good profile sets). The paired call must stay near alpha."""
    rng = np.random.default_rng(11)
    rejected, rejected_wilcoxon = [], []
    for trial in range(200):
        truth = rng.beta(2, 3, size=40)  # strongly unit-dependent mAPs: the correlation a paired test exploits
        a = np.clip(truth + rng.normal(0, 0.05, 40), 0, 1)
        b = np.clip(truth + rng.normal(0, 0.05, 40), 0, 1)
        out = paired_difference(a, b, n_permutations=2000, seed=trial)
        rejected.append(out["p_value"] < 0.05)
        rejected_wilcoxon.append(out["wilcoxon_p_value"] < 0.05)
    rate = float(np.mean(rejected))
    print(f"null false-positive rate: sign-flip {rate:.3f}, wilcoxon {np.mean(rejected_wilcoxon):.3f}")
    assert rate <= 0.08 and np.mean(rejected_wilcoxon) <= 0.08


def test_label_shuffled_comparisons_call_nothing_beyond_alpha(retrieved):
    """On real retrieval results (three profile sets, one truly stronger), permuting the set labels within every
    perturbation makes the sets exchangeable: what is still called better is a false positive."""
    null = shuffled_comparison_null(retrieved, TASK, n_shuffles=60, seed=2, n_permutations=2000)
    assert len(null) == 60 and (null["n_comparisons"] == 3).all()
    rate = null["n_called"].sum() / null["n_comparisons"].sum()
    print(f"label-shuffled false-positive rate: {rate:.3f} over {null['n_comparisons'].sum()} comparisons")
    assert rate <= 0.08


def values_of(table: pd.DataFrame, unit: str) -> list[float]:
    return sorted(table.loc[table["Metadata_broad_sample"] == unit, "mean_average_precision"])


def test_shuffling_keeps_each_units_values():
    results = {"a": unit_table({"u1": 0.1, "u2": 0.2, "u3": 0.3}), "b": unit_table({"u1": 0.9, "u2": 0.8}),
               "c": unit_table({"u1": 0.5})}
    before = pd.concat([t.assign(s=n) for n, t in results.items()])
    for seed in range(5):
        shuffled = shuffle_set_labels(results, TASK, seed=seed)
        after = pd.concat([t.assign(s=n) for n, t in shuffled.items()])
        assert {n: len(t) for n, t in shuffled.items()} == {"a": 3, "b": 2, "c": 1}
        for unit in ("u1", "u2", "u3"):  # a unit's values move only among the sets that scored it
            assert values_of(after, unit) == values_of(before, unit)
    moved = {tuple(shuffle_set_labels(results, TASK, seed=s)["a"]["mean_average_precision"]) for s in range(20)}
    assert len(moved) > 1


# --- real retrieval on planted profiles ------------------------------------------------------------------------------

def test_a_copy_plus_noise_is_never_called_better(retrieved):
    results = {k: retrieved[k] for k in ("cellprofiler/base", "cellprofiler/noisy")}
    table = paired_comparisons(results, TASK, n_permutations=5000)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["n_units"] == N_PERT and row["set_a"] == "cellprofiler/base" and row["set_b"] == "cellprofiler/noisy"
    assert row["q_value"] >= 0.05 and row["better"] == ""
    assert row["difference_low"] <= 0 <= row["difference_high"]
    # two independent noisy copies of the same profile set
    for seed in (2, 3):
        copies = {"x": scored(planted_profiles(extra_noise=0.3, noise_seed=seed)),
                  "y": scored(planted_profiles(extra_noise=0.3, noise_seed=seed + 10))}
        assert paired_comparisons(copies, TASK, n_permutations=5000)["better"].eq("").all()


def test_a_planted_stronger_set_is_called_better(retrieved):
    table = paired_comparisons(retrieved, TASK, n_permutations=5000, seed=1)
    assert list(zip(table["set_a"], table["set_b"])) == [
        ("cellprofiler/base", "cellprofiler/noisy"), ("cellprofiler/base", "vit/stronger"),
        ("cellprofiler/noisy", "vit/stronger")]
    stronger = table[table["set_b"] == "vit/stronger"]
    assert (stronger["better"] == "vit/stronger").all() and (stronger["q_value"] < 0.05).all()
    assert (stronger["difference"] > 0).all() and (stronger["difference_low"] > 0).all()
    assert (stronger["map_b"] > stronger["map_a"]).all()
    assert (stronger["wilcoxon_p_value"] < 0.05).all()
    marks = paired_best(table, list(retrieved))
    assert marks == {(TASK, "all", "all", "all", "all"): {"cellprofiler/base": "", "cellprofiler/noisy": "",
                                                          "vit/stronger": "best"}}


# --- matching, conditions, BH --------------------------------------------------------------------------------------

def test_pairs_match_only_shared_units_and_shared_conditions():
    a = pd.concat([unit_table({"u1": 0.1, "u2": 0.2, "u3": 0.3, "u4": 0.4}),
                   unit_table({"u1": 0.5}, Metadata_timepoint=48)])  # 48 h: only set a scored it
    b = unit_table({"u2": 0.6, "u3": 0.5, "u4": 0.9, "u9": 0.0})
    c = unit_table({"u1": 0.2, "u2": 0.3})
    table = paired_comparisons({"a": a, "b": b, "c": c}, TASK, n_permutations=1000)
    assert list(table.columns) == ["task", *CONDITION, "set_a", "set_b", "n_units", "map_a", "map_b", "difference",
                                   "difference_low", "difference_high", "p_value", "wilcoxon_p_value", "q_value",
                                   "better"]
    assert (table["Metadata_timepoint"] == 24).all()  # no row for the condition only one set has
    rows = table.set_index(["set_a", "set_b"])
    assert rows.loc[("a", "b"), "n_units"] == 3  # u2, u3, u4
    assert rows.loc[("a", "b"), "map_a"] == pytest.approx(0.3) and rows.loc[("a", "b"), "map_b"] == pytest.approx(2 / 3)
    assert rows.loc[("a", "b"), "difference"] == pytest.approx(2 / 3 - 0.3)
    assert rows.loc[("a", "c"), "n_units"] == 2 and rows.loc[("b", "c"), "n_units"] == 1
    assert (table["task"] == TASK).all()


def test_bh_runs_across_every_row_of_the_task():
    rng = np.random.default_rng(5)
    results = {}
    for name, shift in (("s1", 0.0), ("s2", 0.03), ("s3", 0.2)):
        parts = [unit_table({f"u{i}": v for i, v in enumerate(np.clip(base + shift + rng.normal(0, 0.05, 12), 0, 1))},
                            Metadata_cell_type=cell)
                 for cell, base in (("A549", np.linspace(0.1, 0.9, 12)), ("U2OS", np.linspace(0.2, 0.6, 12)))]
        results[name] = pd.concat(parts, ignore_index=True)
    table = paired_comparisons(results, TASK, n_permutations=2000)
    assert len(table) == 6 and list(table["Metadata_cell_type"]) == ["A549"] * 3 + ["U2OS"] * 3
    np.testing.assert_allclose(table["q_value"], multipletests(table["p_value"], method="fdr_bh")[1])
    called = table["q_value"] < 0.05
    expected = np.where(called & (table["difference"] > 0), table["set_b"],
                        np.where(called & (table["difference"] < 0), table["set_a"], ""))
    assert list(table["better"]) == list(expected)
    assert set(table.loc[table["set_b"] == "s3", "better"]) == {"s3"}


def test_compound_gene_matching_keys_on_the_matched_condition():
    def genes(maps: dict[str, float], matched: str) -> pd.DataFrame:
        return pd.DataFrame([{"Metadata_cell_type": "A549", "Metadata_modality": "compound", "Metadata_timepoint": 24,
                              "Metadata_plate_group": "benchmark", "Metadata_matched_modality": matched,
                              "Metadata_matched_timepoint": 144, "Metadata_matched_plate_group": "benchmark",
                              "Metadata_gene": g, "mean_average_precision": v} for g, v in maps.items()])
    a = pd.concat([genes({"G1": 0.1, "G2": 0.2}, "crispr"), genes({"G1": 0.3}, "orf")])
    b = pd.concat([genes({"G1": 0.4, "G2": 0.4}, "crispr"), genes({"G2": 0.3}, "orf")])
    table = paired_comparisons({"a": a, "b": b}, "compound_gene_matching", n_permutations=100)
    assert "Metadata_matched_modality" in table.columns
    assert list(table["Metadata_matched_modality"]) == ["crispr"]  # orf: no gene both sets scored
    assert table["n_units"].tolist() == [2]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown retrieval task"):
        paired_comparisons({}, "retrieval")
    twice = unit_table({"u1": 0.1}).pipe(lambda t: pd.concat([t, t]))
    with pytest.raises(ValueError, match="twice"):
        paired_comparisons({"a": twice, "b": unit_table({"u1": 0.2})}, TASK)
    with pytest.raises(ValueError, match="lacks columns"):
        paired_comparisons({"a": unit_table({"u1": 0.1}).drop(columns="Metadata_broad_sample")}, TASK)
    empty = paired_comparisons({"a": unit_table({"u1": 0.1}), "b": pd.DataFrame()}, TASK)
    assert empty.empty and "better" in empty.columns


# --- paired_best ---------------------------------------------------------------------------------------------------

def comparison_rows(rows: list[tuple[str, str, float, float]], **condition) -> pd.DataFrame:
    """(set_a, set_b, difference b - a, q) rows of one condition."""
    base = {"task": TASK, "Metadata_cell_type": "A549", "Metadata_modality": "compound", "Metadata_timepoint": 24,
            "Metadata_plate_group": "benchmark", **condition}
    return pd.DataFrame([{**base, "set_a": a, "set_b": b, "difference": d, "q_value": q} for a, b, d, q in rows])


def test_paired_best_leader_significantly_better_than_all():
    table = comparison_rows([("cp", "vit", 0.10, 0.001), ("cp", "dino", 0.02, 0.01), ("vit", "dino", -0.08, 0.002)])
    key = (TASK, "A549", "compound", 24, "benchmark")
    assert paired_best(table, ["cp", "vit", "dino"]) == {key: {"cp": "", "vit": "best", "dino": ""}}
    long = best_table(table, ["cp", "vit", "dino"])
    assert list(long["best"]) == ["", "best", ""] and list(long["profile_set"]) == ["cp", "vit", "dino"]


def test_paired_best_not_better_than_one_gives_tied():
    # vit leads, but not significantly over dino: both tied; cp is significantly worse than vit
    table = comparison_rows([("cp", "vit", 0.10, 0.001), ("cp", "dino", 0.08, 0.01), ("vit", "dino", -0.02, 0.4)])
    other = comparison_rows([("cp", "vit", 0.01, 0.9)], Metadata_timepoint=48)
    marks = paired_best(pd.concat([table, other]), ["cp", "vit", "dino"])
    assert marks[(TASK, "A549", "compound", 24, "benchmark")] == {"cp": "", "vit": "tied", "dino": "tied"}
    assert marks[(TASK, "A549", "compound", 48, "benchmark")] == {"cp": "tied", "vit": "tied"}
    # equal sets: the first listed leads, and neither is better
    equal = comparison_rows([("a", "b", 0.0, 1.0)])
    assert paired_best(equal, ["a", "b"])[(TASK, "A549", "compound", 24, "benchmark")] == {"a": "tied", "b": "tied"}
