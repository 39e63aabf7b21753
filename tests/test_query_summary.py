"""Known answers for the target look-up and the summary table, on hand-made profiles (no workflow run)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.report.query import query, with_matching_scores
from paintbench.atomic import write_table
from paintbench.report.inputs import RunFiles
from paintbench.report.summary import CONDITION, build_summary, complete_conditions, mark_best, task_summary

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
    rows.append({**well("crispr", "ctrl", "non-targeting", "non-targeting", np.nan, [1, 1, 1, 1], 144),
                 "Metadata_pert_type": "control", "Metadata_control_type": "negcon"})
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
    with pytest.raises(ValueError, match="only as a control \\(negcon\\)"):
        query(profiles, gene="non-targeting")
    with pytest.raises(ValueError, match="exactly one"):
        query(profiles, compound="cmpA", gene="G1")


def test_matching_scores_are_joined_per_gene_and_condition(profiles):
    _, ranked = query(profiles, compound="cmpA")
    matching = pd.DataFrame({"Metadata_cell_type": ["A549"], "Metadata_modality": ["compound"], "Metadata_timepoint": [24],
                             "Metadata_plate_group": ["all"], "Metadata_matched_modality": ["crispr"],
                             "Metadata_matched_timepoint": [144], "Metadata_matched_plate_group": ["all"],
                             "Metadata_gene": ["G1"], "mean_average_precision": [1.0],
                             "p_value": [0.01], "corrected_p_value": [0.03]})
    joined = with_matching_scores(ranked, matching).set_index("Metadata_gene")
    assert joined.loc["G1", "gene_matching_q"] == 0.03 and joined["gene_matching_q"].drop("G1").isna().all()
    assert len(joined) == len(ranked)


def scored(modality, timepoint, maps, below, matched=None, group="benchmark"):
    table = pd.DataFrame({"Metadata_cell_type": "A549", "Metadata_modality": modality, "Metadata_timepoint": timepoint,
                          "Metadata_plate_group": group, "Metadata_broad_sample": [f"p{i}" for i in range(len(maps))],
                          "mean_average_precision": maps, "below_corrected_p": below, "testable": True,
                          "protocol": "cpjump1"})
    if matched:  # matching tasks score genes
        table = table.assign(Metadata_matched_modality=matched[0], Metadata_matched_timepoint=matched[1],
                             Metadata_matched_plate_group="benchmark", Metadata_gene=[f"g{i}" for i in range(len(maps))])
    return table


PUBLISHED = pd.DataFrame({"task": ["replicate_retrieval", "replicate_retrieval", "compound_gene_matching"],
                          "Metadata_cell_type": ["A549", "A549", "A549"], "Metadata_modality": ["crispr", "orf", "compound"],
                          "Metadata_timepoint": [144, 48, 24], "Metadata_matched_modality": [None, None, "crispr"],
                          "Metadata_matched_timepoint": [None, None, 144], "n_perturbations": [305, 160, 128],
                          "n_retrieved": [207, 9, 1], "mean_average_precision": [0.52, 0.2424, 0.0493],
                          "fraction_retrieved": [0.6787, 0.0563, 0.0078], "source": "benchmark/output/x.csv"})


def write_results(root, maps_by_set):
    for fs, maps in maps_by_set.items():
        folder = root / "retrieval" / fs
        folder.mkdir(parents=True)
        replicate = pd.concat([scored("compound", 24, maps, [True] * 9 + [False]),
                               scored("crispr", 144, maps, [True] * 3 + [False] * 7),
                               scored("compound", 24, maps[:4], [True, False, False, False], group="density 80")])
        replicate.to_parquet(folder / "replicate_retrieval.parquet")
        pd.DataFrame().to_parquet(folder / "sister_matching.parquet")  # nothing passed: an empty result
        scored("compound", 24, maps[:2], [False, False], ("crispr", 144)).to_parquet(folder / "compound_gene_matching.parquet")


def test_summary_is_typed_with_intervals_reference_values_and_empty_rows(tmp_path):
    write_results(tmp_path, {"a": [0.9] * 10, "b": [0.2] * 10})
    summary, _ = build_summary(RunFiles.from_results_dir(tmp_path, ["a", "b"], []), published=PUBLISHED)
    a = summary[summary["feature_set"] == "a"].set_index(["task", "condition"])
    row = a.loc[("replicate_retrieval", "A549 compound 24 h")]
    assert row["fraction_retrieved"] == 0.9 and row["n_perturbations"] == 10 and row["n_retrieved"] == 9
    assert (row["fraction_retrieved_low"], row["fraction_retrieved_high"]) == pytest.approx((0.5958, 0.9821), abs=1e-4)
    # Plates of another density are their own condition, labelled.
    assert a.loc[("replicate_retrieval", "A549 compound 24 h (density 80)"), "n_perturbations"] == 4
    # Nothing passed: sister matching rows say n = 0 with empty values, never 0.0.
    sister = summary[summary["task"] == "sister_matching"]
    assert len(sister) == 6 and (sister["n_perturbations"] == 0).all() and sister["fraction_retrieved"].isna().all()
    # The paper's rows: numbers in numeric columns, only for conditions the paper reports (benchmark groups).
    paper = summary[summary["row_kind"] == "paper"].set_index(["task", "condition"])
    assert list(paper.index) == [("replicate_retrieval", "A549 crispr 144 h"),
                                 ("compound_gene_matching", "A549 compound 24 h -> crispr 144 h")]
    assert paper["fraction_retrieved"].tolist() == [0.6787, 0.0078] and paper["n_perturbations"].tolist() == [305, 128]
    assert (paper["source"] == "benchmark/output/x.csv").all()
    # Compound-gene values are comparable only when negatives were counted as the paper's code did.
    assert paper["comparable"].tolist() == [True, False]
    assert "expect higher values here" in paper.loc[("compound_gene_matching", "A549 compound 24 h -> crispr 144 h"), "notes"]
    ours = summary[summary["row_kind"] == "measured"].set_index(["feature_set", "task", "condition"])
    assert ours.loc[("a", "replicate_retrieval", "A549 crispr 144 h"), "comparable"]
    assert not ours.loc[("a", "replicate_retrieval", "A549 compound 24 h (density 80)"), "comparable"]
    # Written and read back: numeric columns stay numeric, time points print as whole numbers.
    path = tmp_path / "summary.tsv"
    write_table(summary, path)
    back = pd.read_csv(path, sep="\t")
    for column in ("fraction_retrieved", "mean_average_precision", "n_perturbations", "fraction_retrieved_low"):
        assert pd.api.types.is_numeric_dtype(back[column]), column
    assert "144.0" not in path.read_text() and "\t144\t" in path.read_text()


def test_compound_gene_rows_are_comparable_with_paper_code_negatives(tmp_path):
    write_results(tmp_path, {"a": [0.9] * 10})
    path = tmp_path / "retrieval" / "a" / "compound_gene_matching.parquet"
    pd.read_parquet(path).assign(compound_gene_negatives="paper_code").to_parquet(path)
    paper = build_summary(RunFiles.from_results_dir(tmp_path, ["a"], []), published=PUBLISHED)[0].query("row_kind == 'paper'")
    assert paper["comparable"].all()


def test_best_respects_the_intervals(tmp_path):
    write_results(tmp_path, {"a": [0.9] * 10, "b": [0.2] * 10})
    summary, paired = build_summary(RunFiles.from_results_dir(tmp_path, ["a", "b"], []), published=PUBLISHED)
    summary = summary.set_index(["feature_set", "task", "condition"])
    # crispr: both retrieve 3 of 10, so their intervals are identical (interval rule: tied); but a's mAP is 0.7
    # above b's on every one of the 10 perturbations: the paired sign-flip test (exact, p = 2/1024) calls a best.
    assert summary.loc[("a", "replicate_retrieval", "A549 crispr 144 h"), "interval_best"] == "tied"
    assert summary.loc[("a", "replicate_retrieval", "A549 crispr 144 h"), "best"] == "best"
    assert summary.loc[("b", "replicate_retrieval", "A549 crispr 144 h"), "best"] == ""
    row = summary.loc[("b", "replicate_retrieval", "A549 crispr 144 h")]
    assert row["paired_reference"] == "a" and row["paired_difference"] == pytest.approx(-0.7)
    crispr = paired[(paired["task"] == "replicate_retrieval") & (paired["Metadata_modality"] == "crispr")]
    assert crispr["p_value"].item() == pytest.approx(2 / 1024) and crispr["n_units"].item() == 10
    marks = mark_best(pd.DataFrame({
        "task": "t", "row_kind": "measured", "feature_set": ["x", "y", "z"], "n_perturbations": 300,
        "fraction_retrieved": [0.8, 0.5, 0.75], "fraction_retrieved_low": [0.75, 0.44, 0.70],
        "fraction_retrieved_high": [0.84, 0.56, 0.79], **{c: "c" for c in CONDITION}}))
    assert marks.tolist() == ["tied", "", "tied"]  # x leads, z's interval overlaps x's, y's does not
    marks = mark_best(pd.DataFrame({
        "task": "t", "row_kind": "measured", "feature_set": ["x", "y"], "n_perturbations": 300,
        "fraction_retrieved": [0.8, 0.5], "fraction_retrieved_low": [0.75, 0.44], "fraction_retrieved_high": [0.84, 0.56],
        **{c: "c" for c in CONDITION}}))
    assert marks.tolist() == ["best", ""]


@pytest.mark.parametrize("dataset, note", [("synthetic", "synthetic: a reference for a different dataset"),
                                           ("own", "not CPJUMP1's: a reference for a different dataset")])
def test_runs_on_other_plates_label_the_paper_as_another_dataset(tmp_path, dataset, note):
    write_results(tmp_path, {"a": [0.9] * 10})
    summary, _ = build_summary(RunFiles.from_results_dir(tmp_path, ["a"], []), published=PUBLISHED, dataset=dataset)
    paper = summary[summary["row_kind"] == "paper"]
    assert len(paper) == 2 and not paper["comparable"].any() and not summary["comparable"].any()
    assert paper["notes"].str.contains(note).all()


def test_a_condition_missing_for_one_feature_set_is_a_zero_row():
    a = task_summary(scored("orf", 48, [0.5], [True]), "a", "replicate_retrieval")
    b = task_summary(scored("crispr", 144, [0.5], [True]), "b", "replicate_retrieval")
    full = complete_conditions(pd.concat([a, b], ignore_index=True), ["a", "b"], ("replicate_retrieval",))
    assert len(full) == 4
    missing = full[(full["feature_set"] == "a") & (full["Metadata_modality"] == "crispr")]
    assert missing["n_perturbations"].item() == 0 and pd.isna(missing["fraction_retrieved"].item())
