"""The three CPJUMP1 tasks on profiles with a planted ground truth, and the CLI on a user's own table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.cli import main as paintbench
from paintbench.metadata import plate_layout, select_wells
from paintbench.registry import TASKS
from paintbench.retrieval import (compound_gene_matching, replicate_retrieval, sister_matching)
from paintbench.synthetic import PARAMETERS, ground_truth
from tests.helpers import LINCS_PLATE

PLATES = {"compound": ["BR00116991", "BR00116992", "BR00116993"], "crispr": ["BR00117000", "BR00117003", "BR00117004"]}
PLATEMAPS = ["JUMP-Target-1_compound_platemap", "JUMP-Target-1_crispr_platemap", "JUMP-Target-1_orf_platemap"]
EFFECTS = [f"effect_{p}" for p in PARAMETERS]


@pytest.fixture(scope="module")
def planted():
    """Well profiles = planted effect (12 morphology parameters, mixed into 60 features) + well noise.

    The same ground-truth model the synthetic images use, without the images: fast, and exact about the answer.
    """
    truth = ground_truth(PLATEMAPS, seed=7, strong_fraction=0.4, null_fraction=0.3)
    genes = truth[truth["Metadata_modality"] == "crispr"].dropna(subset=["Metadata_gene"]).drop_duplicates("Metadata_gene")
    chosen = [g for cls in ("strong", "weak", "null") for g in genes.loc[genes["effect_class"] == cls, "Metadata_gene"][:6]]
    chosen.append("EZH2")  # a positive control on every plate: the paper scores it
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(len(PARAMETERS), 60))
    rows = []
    for modality, plates in PLATES.items():
        effects = truth[truth["Metadata_modality"] == modality].set_index("Metadata_broad_sample")[EFFECTS]
        for plate in plates:
            layout = plate_layout(plate)
            layout = layout[layout["Metadata_Well"].isin(select_wells(layout, "all", chosen, 16))]
            effect = effects.reindex(layout["Metadata_broad_sample"]).fillna(0).to_numpy()
            features = (effect + rng.normal(0, 0.35, effect.shape)) @ mixing + rng.normal(0, 0.5, (len(layout), 60))
            rows.append(pd.concat([layout.reset_index(drop=True), pd.DataFrame(features).add_prefix("f")], axis=1))
    profiles = pd.concat(rows, ignore_index=True)
    classes = truth.set_index(["Metadata_modality", "Metadata_broad_sample"])["effect_class"]
    return profiles, [c for c in profiles if c.startswith("f")], classes


def by_class(scored: pd.DataFrame, classes: pd.Series) -> pd.Series:
    keys = list(zip(scored["Metadata_modality"], scored["Metadata_broad_sample"]))
    return scored.assign(effect_class=classes.reindex(keys).to_numpy()).groupby("effect_class")


def test_replicate_retrieval_recovers_strong_over_weak_over_null(planted):
    profiles, features, classes = planted
    ap, scored = replicate_retrieval(profiles, features, null_size=20_000, seed=1)
    assert set(scored["Metadata_modality"]) == {"compound", "crispr"}
    # Positive controls are queries too (the paper's denominators count them); negative controls never are.
    controls = set(ap["Metadata_control_type"].dropna())
    assert "poscon_cp" in controls and "negcon" not in controls
    assert "EZH2" in set(scored["Metadata_gene"].dropna()) | set(scored["Metadata_target_list"].dropna())
    assert (scored["protocol"] == "cpjump1").all() and (scored["alt_protocol"] == "copairs").all()
    assert {"mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p", "n_queries",
            "n_positives", "Metadata_cell_type", "Metadata_timepoint"} <= set(scored.columns)
    # positives: the other replicates (2, more where a plate holds a perturbation twice); negatives: 16 plate controls
    assert (ap["n_pos_pairs"] >= 2).all() and (ap["n_total_pairs"] - ap["n_pos_pairs"] == 16).all()
    groups = by_class(scored, classes)
    mean_map = groups["mean_average_precision"].mean()
    retrieved = groups["below_corrected_p"].mean()
    assert mean_map["strong"] > mean_map["weak"] > mean_map["null"]
    assert retrieved["strong"] >= 0.9 and retrieved["null"] <= 0.1


def test_sister_and_compound_gene_matching(planted):
    profiles, features, classes = planted
    _, replicate = replicate_retrieval(profiles, features, null_size=20_000, seed=1)
    sister_ap, sisters = sister_matching(profiles, features, replicate, null_size=20_000, seed=1)
    crispr = sisters[sisters["Metadata_modality"] == "crispr"]
    assert len(crispr) > 0 and crispr["mean_average_precision"].mean() > 0.8  # guides of one gene share the effect
    passed = set(replicate.loc[replicate["below_corrected_p"], "Metadata_broad_sample"])
    assert set(sister_ap["Metadata_broad_sample"]) <= passed
    assert crispr["Metadata_gene"].is_unique  # one row per gene

    match_ap, matching = compound_gene_matching(profiles, features, replicate, null_size=20_000, seed=1)
    assert set(matching["Metadata_matched_modality"]) == {"crispr"} and matching["Metadata_gene"].is_unique
    assert set(match_ap["Metadata_query_modality"]) == {"compound", "crispr"}  # both directions are queries
    assert set(match_ap["Metadata_broad_sample"]) <= passed
    gene_class = classes.xs("crispr").reset_index().merge(
        profiles[["Metadata_broad_sample", "Metadata_gene"]].drop_duplicates(), on="Metadata_broad_sample")
    per_class = matching.merge(gene_class.drop_duplicates("Metadata_gene")[["Metadata_gene", "effect_class"]],
                               on="Metadata_gene").groupby("effect_class")["mean_average_precision"].mean()
    assert per_class["strong"] > 0.5


def test_cli_scores_a_users_own_table(tmp_path):
    """The LINCS plate (not a CPJUMP1 plate): its dose series are the replicates, DMSO the controls."""
    output = tmp_path / "replicate.parquet"
    assert paintbench(["retrieval", "--profiles", str(LINCS_PLATE),
                       "--task", "replicate_retrieval", "--control-col", "", "--control-value", "DMSO",
                       "--null-size", "2000", "--output", str(output)]) == 0
    scored = pd.read_parquet(output)
    assert len(scored) == 58 and scored["n_queries"].isin([6, 12]).all()
    assert 0.3 < scored["below_corrected_p"].mean() < 0.8
    assert (tmp_path / "replicate_ap.parquet").exists()


def test_float32_precision_scores_every_task_like_float64(planted):
    """retrieval.precision: float32 halves the profiles' memory; every task's APs stay within 1e-3 of float64's
    and no perturbation changes its verdict on these planted plates."""
    from paintbench.retrieval import conditions, run_task

    profiles, features, _ = planted
    double = {task: run_task(task, profiles, features, null_size=20_000, seed=1) for task in TASKS}
    single = {task: run_task(task, profiles, features, null_size=20_000, seed=1, precision="float32") for task in TASKS}
    for task in TASKS:
        (ap64, scored64), (ap32, scored32) = double[task], single[task]
        assert len(ap32) == len(ap64) and len(scored32) == len(scored64), task
        assert np.abs(ap32["average_precision"] - ap64["average_precision"]).max() <= 1e-3, task
        assert (scored32["below_corrected_p"] == scored64["below_corrected_p"]).all(), task
    # one condition is iterated without a copy of the table; several in key order, each from row 0
    one = profiles[profiles["Metadata_modality"] == "crispr"]
    ((_, sub),) = list(conditions(one.reset_index(drop=True)))
    assert len(sub) == len(one) and sub.index[0] == 0
    keys = [key for key, _ in conditions(profiles)]
    assert keys == sorted(keys) and len(keys) == 2
