"""Known answers for the target look-up and the summary table, on hand-made profiles (no workflow run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.report.query import query, with_matching_scores
from paintbench.report.summary import build_summary, complete_conditions, task_summary

DIRECTIONS = {"G1": [1, 0, 0, 0], "G2": [0, 1, 0, 0], "G3": [0, 0, 1, 0], "G4": [0, 0, 0, 1]}


def well(modality: str, broad: str, name: str, gene: float | str, targets: str | float, features, timepoint: int):
    row = {"Metadata_cell_type": "A549", "Metadata_modality": modality, "Metadata_timepoint": timepoint,
           "Metadata_broad_sample": broad, "Metadata_pert_iname": name, "Metadata_gene": gene,
           "Metadata_target_list": targets, "Metadata_pert_type": "trt", "Metadata_control_type": np.nan}
    return {**row, **{f"f{i}": float(v) for i, v in enumerate(features)}}


@pytest.fixture()
def profiles() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for gene, direction in DIRECTIONS.items():
        for _ in range(2):  # two replicate wells per guide
            rows.append(well("crispr", f"guide-{gene}", gene, gene, np.nan, np.array(direction) + 0.01 * rng.standard_normal(4), 144))
    # cmpA mimics G1 (its annotated target), cmpB is G2's opposite and annotated to G2 and G3, cmpC is unrelated.
    compounds = {"cmpA": ([1, 0.05, 0, 0], "G1"), "cmpB": ([0, -1, 0, 0.1], "G2|G3"), "cmpC": ([0.3, 0.3, 0.3, 0.3], "G9")}
    for name, (vector, targets) in compounds.items():
        for _ in range(2):
            rows.append(well("compound", f"BRD-{name}", name, np.nan, targets, np.array(vector) + 0.01 * rng.standard_normal(4), 24))
    rows.append({**well("crispr", "ctrl", "EZH2", "EZH2", np.nan, [1, 1, 1, 1], 144), "Metadata_pert_type": "control",
                 "Metadata_control_type": "poscon_cp"})
    return pd.DataFrame(rows)


def test_compound_query_ranks_by_abs_cosine_with_exact_p_values(profiles):
    name, ranked = query(profiles, compound="cmpb")  # names are case-insensitive
    assert name == "BRD-cmpB"
    assert ranked["Metadata_gene"].tolist()[0] == "G2" and ranked["cosine"].iloc[0] < -0.99  # anti-correlation counts
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    assert ranked.set_index("Metadata_gene")["annotated_target"].to_dict() == {"G1": False, "G2": True, "G3": True, "G4": False}
    # Background = |cos| of the 12 - 3 = 9 non-annotated compound-gene pairs; cmpB-G2 beats all of them.
    assert ranked["p_value"].iloc[0] == pytest.approx(1 / 10)


def test_gene_query_ranks_the_mimicking_compound_first(profiles):
    name, ranked = query(profiles, gene="G1")
    assert name == "G1" and ranked["Metadata_pert_iname"].iloc[0] == "cmpA" and ranked["annotated_target"].iloc[0]


def test_query_errors_name_the_problem(profiles):
    with pytest.raises(ValueError, match="did you mean cmp[ABC], cmp[ABC], cmp[ABC]\\?"):
        query(profiles, compound="cmpD")
    with pytest.raises(ValueError, match="only as a control \\(poscon_cp\\)"):
        query(profiles, gene="EZH2")
    with pytest.raises(ValueError, match="exactly one"):
        query(profiles, compound="cmpA", gene="G1")


def test_matching_scores_are_joined_per_compound_and_condition(profiles):
    _, ranked = query(profiles, compound="cmpA")
    matching = pd.DataFrame({"Metadata_cell_type": ["A549"], "Metadata_modality": ["compound"], "Metadata_timepoint": [24],
                             "Metadata_matched_modality": ["crispr"], "Metadata_matched_timepoint": [144],
                             "Metadata_broad_sample": ["BRD-cmpA"], "mean_average_precision": [1.0],
                             "p_value": [0.01], "corrected_p_value": [0.03]})
    joined = with_matching_scores(ranked, matching)
    assert (joined["compound_matching_q"] == 0.03).all() and len(joined) == len(ranked)


def scored(modality, timepoint, maps, below, matched=None):
    table = pd.DataFrame({"Metadata_cell_type": "A549", "Metadata_modality": modality, "Metadata_timepoint": timepoint,
                          "Metadata_broad_sample": [f"p{i}" for i in range(len(maps))],
                          "mean_average_precision": maps, "below_corrected_p": below})
    if matched:
        table = table.assign(Metadata_matched_modality=matched[0], Metadata_matched_timepoint=matched[1])
    return table


def test_summary_rows_and_zero_rows_for_empty_tasks(tmp_path):
    for fs, maps in {"a": [0.9, 0.5, 0.1], "b": [0.2, 0.2, 0.2]}.items():
        folder = tmp_path / "retrieval" / fs
        folder.mkdir(parents=True)
        replicate = pd.concat([scored("compound", 24, maps, [True, False, False]), scored("crispr", 144, maps, [True, True, False])])
        replicate.to_parquet(folder / "replicate_retrieval.parquet")
        pd.DataFrame().to_parquet(folder / "sister_matching.parquet")  # nothing passed: an empty result
        scored("compound", 24, maps[:2], [False, False], ("crispr", 144)).to_parquet(folder / "compound_gene_matching.parquet")
    published = pd.DataFrame({"task": ["replicate_retrieval", "replicate_retrieval", "compound_gene_matching"],
                              "Metadata_cell_type": ["A549", "A549", "*"], "Metadata_modality": ["crispr", "orf", "compound"],
                              "Metadata_timepoint": ["144", "48", "*"], "Metadata_matched_modality": ["", "", "crispr"],
                              "fraction_retrieved": [0.679, 0.056, np.nan], "published": ["0.679", "0.056", "0 to 0.075"]})
    summary = build_summary(tmp_path, ["a", "b"], published=published)
    a = summary[summary["feature_set"] == "a"].set_index(["task", "Metadata_modality"])
    assert a.loc[("replicate_retrieval", "compound"), "mean_average_precision"] == pytest.approx(0.5)
    assert a.loc[("replicate_retrieval", "crispr"), "fraction_retrieved"] == pytest.approx(2 / 3)
    sister = summary[summary["task"] == "sister_matching"]
    assert len(sister) == 4 and (sister["n_perturbations"] == 0).all() and (sister["fraction_retrieved"] == 0).all()
    reference = summary[summary["feature_set"] == "paper_cellprofiler"]
    assert reference[["task", "Metadata_modality", "published"]].values.tolist() == [
        ["replicate_retrieval", "crispr", "0.679"], ["compound_gene_matching", "compound", "0 to 0.075"]]


def test_a_condition_missing_for_one_feature_set_is_a_zero_row():
    a = task_summary(scored("orf", 48, [0.5], [True]), "a", "replicate_retrieval")
    b = task_summary(scored("crispr", 144, [0.5], [True]), "b", "replicate_retrieval")
    full = complete_conditions(pd.concat([a, b], ignore_index=True), ["a", "b"], ("replicate_retrieval",))
    assert len(full) == 4
    assert full.loc[(full["feature_set"] == "a") & (full["Metadata_modality"] == "crispr"), "n_perturbations"].item() == 0
