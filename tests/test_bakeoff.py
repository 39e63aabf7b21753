"""The bake-off on the small demo run: every feature set under every default chain is scored like a feature set, and
the layout controls and the paired comparisons stand beside it in summary.tsv, reports/comparisons.tsv and the
report. Known answers from the demo's ground truth: planted null perturbations and label-shuffled wells are
retrieved under no chain; the planted position artefact is seen by the same-position control and removed by
wellpos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.registry import LAYOUT_CONTROLS

pytestmark = pytest.mark.slow  # reads the small demo run

FEATURE_SETS = ["cellprofiler", "vitmae", "vitdino", "vitsimclr", "cpssl_random"]  # the last: an external encoder
CHAINS = {"cellprofiler": ["mad_featselect", "mad_sphering"],
          **{fs: ["mad", "mad_sphering"] for fs in FEATURE_SETS[1:]}}
PROFILE_SETS = [f"{fs}/{chain}" for fs in FEATURE_SETS for chain in CHAINS[fs]]
MODALITIES = {"compound", "crispr", "orf"}


@pytest.fixture(scope="module")
def summary(small_demo_run) -> pd.DataFrame:
    _, results = small_demo_run
    return pd.read_csv(results / "reports" / "summary.tsv", sep="\t")


def test_every_profile_set_is_scored_with_its_controls_and_headline(summary):
    measured = summary[summary["row_kind"] == "measured"]
    replicate = measured[measured["task"] == "replicate_retrieval"]
    assert sorted(replicate["profile_set"].unique()) == sorted(PROFILE_SETS)
    for profile_set, rows in replicate.groupby("profile_set"):
        fs, chain = profile_set.split("/")
        assert set(rows["Metadata_modality"]) == MODALITIES
        assert (rows["feature_set"] == fs).all() and (rows["chain"] == chain).all()
        assert rows["headline"].all() == (chain == CHAINS[fs][0]), profile_set
    controls = summary[summary["row_kind"] == "control"]
    assert set(controls["task"]) == set(LAYOUT_CONTROLS)
    assert len(controls) == len(PROFILE_SETS) * len(LAYOUT_CONTROLS) * len(MODALITIES)
    # Sphering fitted on 4 negative controls x 6 plates: the rows say how few controls each feature had.
    sphering = measured[measured["chain"] == "mad_sphering"]
    assert (sphering["controls_per_feature"] < 1).all() and (sphering["controls_per_feature"] > 0).all()
    assert measured.loc[measured["chain"] == "mad_featselect", "controls_per_feature"].notna().all()


def test_no_chain_retrieves_planted_nulls_or_shuffled_labels(small_demo_run, summary):
    """The demo's null perturbations (FOXM1's and BRD4's, by the ground truth) are retrieved by no profile set; the
    label-shuffled replicates of every profile set and condition stay within the 5% that BH allows."""
    _, results = small_demo_run
    truth = pd.read_parquet(results / "synthetic" / "ground_truth.parquet")
    nulls = set(truth.loc[truth["effect_class"] == "null", "Metadata_broad_sample"])
    assert nulls
    for profile_set in PROFILE_SETS:
        table = pd.read_parquet(results / "retrieval" / profile_set / "replicate_retrieval.parquet")
        scored_nulls = table[table["Metadata_broad_sample"].isin(nulls)]
        assert len(scored_nulls) > 0 and not scored_nulls["below_corrected_p"].any(), profile_set
    shuffled = summary[(summary["row_kind"] == "control") & (summary["task"] == "shuffled_replicates")]
    assert len(shuffled) == len(PROFILE_SETS) * len(MODALITIES)
    assert (shuffled["fraction_retrieved"].fillna(0) <= 0.05).all()


def test_the_planted_position_artefact_is_seen_and_wellpos_removes_it(small_demo_run):
    """synthetic.position_effect plants one shift per well position on every plate: negative controls at one position
    on different plates look alike under mad (pooled p < 0.05 for some feature set). The wellpos step (not a default
    chain: docs/methods.md) removes it, on the same annotated CellProfiler profiles."""
    from paintbench.chains import apply_chain
    from paintbench.controls import same_position_controls
    from paintbench.retrieval import scorable_features

    _, results = small_demo_run
    seen = {}
    for profile_set in PROFILE_SETS:
        table = pd.read_parquet(results / "retrieval" / profile_set / "layout_controls.parquet")
        seen[profile_set] = table[table["control"] == "same_position_controls"]
    flagged = [ps for ps, t in seen.items() if ps.endswith(("/mad", "/mad_featselect")) and (t["p_value"] < 0.05).any()]
    assert flagged, {ps: t["p_value"].tolist() for ps, t in seen.items()}
    annotated = pd.read_parquet(results / "profiles" / "cellprofiler" / "annotated.parquet")
    for steps, removed in ((["mad"], False), (["wellpos", "mad"], True)):
        profiles, _, _ = apply_chain(annotated, steps)
        control = same_position_controls(profiles, scorable_features(profiles), null_size=5000)
        if removed:
            assert (control["p_value"] > 0.05).all(), control
            assert (control["mean_average_precision"] <= control["null_mean_average_precision"] + 0.05).all()
        else:
            assert (control["mean_average_precision"] > control["null_mean_average_precision"]).all(), control


def test_paired_comparisons_and_the_marks_that_use_them(small_demo_run, summary):
    _, results = small_demo_run
    comparisons = pd.read_csv(results / "reports" / "comparisons.tsv", sep="\t")
    assert set(comparisons["family"]) == {"feature sets", *(f"chains of {fs}" for fs in FEATURE_SETS)}
    heads = comparisons[comparisons["family"] == "feature sets"]
    assert set(heads["set_a"]) | set(heads["set_b"]) == {f"{fs}/{CHAINS[fs][0]}" for fs in FEATURE_SETS}
    # One comparison recomputed from the two retrieval tables: mean per-unit mAP difference on the shared units.
    row = comparisons[(comparisons["family"] == "chains of cellprofiler") & (comparisons["task"] == "replicate_retrieval")
                      & (comparisons["Metadata_modality"] == "crispr")
                      & (comparisons["set_b"] == "cellprofiler/mad_sphering")].iloc[0]
    tables = [pd.read_parquet(results / "retrieval" / name / "replicate_retrieval.parquet") for name in
              (row["set_a"], row["set_b"])]
    a, b = (t[t["Metadata_modality"] == "crispr"].set_index("Metadata_broad_sample")["mean_average_precision"]
            for t in tables)
    shared = a.index.intersection(b.index)
    assert row["n_units"] == len(shared) > 0
    assert row["difference"] == pytest.approx(float(np.mean(b[shared] - a[shared])), abs=1e-6)
    assert row["difference_low"] <= row["difference"] <= row["difference_high"]
    # best marks only the headline rows; every other row names the reference of its paired difference.
    scored = summary[summary["row_kind"] == "measured"]
    assert scored.loc[~scored["headline"].astype(bool), "best"].isna().all()
    others = scored[~scored["headline"].astype(bool) & scored["n_perturbations"].gt(0)
                    & (scored["task"] == "replicate_retrieval")]
    assert (others["paired_reference"] == others["feature_set"].map(lambda fs: f"{fs}/{CHAINS[fs][0]}")).all()
    vit_heads = scored[scored["headline"].astype(bool) & (scored["feature_set"] != "cellprofiler")
                       & (scored["task"] == "replicate_retrieval")]
    assert (vit_heads["paired_reference"] == "cellprofiler/mad_featselect").all()


def test_the_report_shows_the_bakeoff_and_the_controls(small_demo_run):
    _, results = small_demo_run
    page = (results / "reports" / "index.html").read_text()
    assert "Bake-off: feature sets under post-processing chains" in page
    assert "cellprofiler: mad_featselect" in page and "vitdino: mad" in page  # the headline chains, named
    bakeoff = page.split("<table class='bakeoff'>", 1)[1].split("</table>", 1)[0]
    assert all(f"<th>{chain}</th>" in bakeoff for chain in {c for chains in CHAINS.values() for c in chains})
    assert all(f"<td class='l'>{fs} <span class='muted'>(headline {CHAINS[fs][0]})</span></td>" in bakeoff
               for fs in FEATURE_SETS)
    assert "Layout and batch controls" in page and "same-position controls" in page
    controls = page.split("<table class='controls'>", 1)[1].split("</table>", 1)[0]
    assert all(f"<td class='l'>{ps}</td>" in controls for ps in PROFILE_SETS)
    import json

    stems = {f["stem"] for f in json.loads((results / "reports" / "figures" / "figures.json").read_text())}
    assert "bakeoff" in stems and (results / "reports" / "figures" / "bakeoff.png").stat().st_size > 0
