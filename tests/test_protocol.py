"""The CPJUMP1 protocol's pair rules and per-gene aggregation on small hand-built tables with known answers:
a compound with two targets, a guide whose sister did not pass, a reagent queried in both directions, plates of
different density never pooled, the paper's plate set."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.metadata import paper_plates, plate_info
from paintbench.retrieval import CONDITION, PERT, compound_gene_matching, replicate_retrieval, sister_matching

FEATURES = ["x", "y", "z"]
COMPOUNDS = {  # name: (targets, profile, passed replicate retrieval)
    "cA": ("T1|T2", [1, 0, 0], True), "cB": ("T1", [0.9, 0.1, 0], True), "cC": ("T2", [0, 1, 0], True),
    "cD": ("T3", [0.5, 0.5, 0.7], True), "cE": ("T3", [0, 0, 1], False), "cX": ("T9", [0.2, 0.2, 0.2], True)}
GUIDES = {  # name: (gene, profile, passed)
    "t1a": ("T1", [1, 0, 0], True), "t1b": ("T1", [0.9, 0.1, 0], True), "t2a": ("T2", [0, 0.2, 1], True),
    "t2b": ("T2", [0, 1, 0], False), "t3a": ("T3", [0.5, 0.5, 0.7], True), "t3b": ("T3", [0, 0, 1], True)}


def well(modality: str, name: str, gene, targets, profile, timepoint: int, group: str = "benchmark") -> dict:
    return {"Metadata_cell_type": "A549", "Metadata_modality": modality, "Metadata_timepoint": timepoint,
            "Metadata_plate_group": group, "Metadata_Plate": f"{modality}-{group}", "Metadata_broad_sample": name,
            "Metadata_pert_iname": name, "Metadata_pert_type": "trt", "Metadata_control_type": None,
            "Metadata_gene": gene, "Metadata_target_list": targets, **dict(zip(FEATURES, map(float, profile)))}


@pytest.fixture()
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One well per perturbation (its consensus is itself) and the replicate-retrieval verdicts."""
    rows = [well("compound", n, None, t, v, 24) for n, (t, v, _) in COMPOUNDS.items()]
    rows += [well("crispr", n, g, g, v, 144) for n, (g, v, _) in GUIDES.items()]
    profiles = pd.DataFrame(rows)
    passed = {**{n: p for n, (_, _, p) in COMPOUNDS.items()}, **{n: p for n, (_, _, p) in GUIDES.items()}}
    verdicts = profiles[CONDITION + [PERT]].assign(below_corrected_p=profiles[PERT].map(passed))
    return profiles, verdicts


def test_sister_matching_compounds_per_target_gene(tables):
    profiles, verdicts = tables
    ap, scored = sister_matching(profiles, FEATURES, verdicts, null_size=2000, seed=0)
    ap = ap[ap["Metadata_modality"] == "compound"].set_index([PERT, "Metadata_gene"])
    # (cA, T1): cB (+, |cos| .99) above cX (.58) and cD (.50), which share no target with cA; cC shares T2 with cA:
    # neither positive nor negative.
    assert ap.loc[("cA", "T1"), ["average_precision", "n_pos_pairs", "n_total_pairs"]].tolist() == [1.0, 1, 3]
    assert ap.loc[("cA", "T2"), "average_precision"] == pytest.approx(1 / 3)  # cX, cD above cC (0)
    assert ap.loc[("cB", "T1"), "n_total_pairs"] == 4  # cA (+), cC, cD, cX
    assert ap.loc[("cC", "T2"), "average_precision"] == pytest.approx(1 / 4)  # cX, cD, cB above cA (0)
    # cD's sister cE did not pass replicate retrieval, cX has no sister: no query; failed cE is never a candidate.
    assert set(ap.index.get_level_values(PERT)) == {"cA", "cB", "cC"}
    assert not ap["testable"].any()  # lists of 3 and 4: a perfect ranking happens by chance 1/3 and 1/4 of the time
    genes = scored[scored["Metadata_modality"] == "compound"].set_index("Metadata_gene")
    assert list(genes.index) == ["T1", "T2"]  # scored per target gene
    assert genes.loc["T1", "mean_average_precision"] == 1.0 and genes.loc["T1", "n_queries"] == 2
    assert genes.loc["T2", "mean_average_precision"] == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert genes.loc["T1", "Metadata_perturbations"] == "cA|cB"
    # T1's p: the geometric mean of perfect (1 of 3) and (1 of 4) lists, sqrt(1/3 * 1/4); it can never be retrieved.
    assert genes.loc["T1", "p_value"] == pytest.approx(np.sqrt(1 / 12), abs=0.03) and not genes.loc["T1", "testable"]


def test_sister_matching_crispr_drops_guides_without_a_passing_sister(tables):
    profiles, verdicts = tables
    ap, scored = sister_matching(profiles, FEATURES, verdicts, null_size=2000, seed=0)
    ap = ap[ap["Metadata_modality"] == "crispr"].set_index(PERT)
    assert set(ap.index) == {"t1a", "t1b", "t3a", "t3b"}  # t2a's sister t2b failed: t2a is gone, as query and as candidate
    assert (ap["n_total_pairs"] == 3).all() and (ap["n_pos_pairs"] == 1).all()
    genes = scored[scored["Metadata_modality"] == "crispr"]
    assert genes["Metadata_gene"].tolist() == ["T1", "T3"] and (genes["n_queries"] == 2).all()


@pytest.mark.parametrize("negatives", ["disjoint", "paper_code"])
def test_compound_gene_matching_both_directions_per_gene(tables, negatives):
    profiles, verdicts = tables
    ap, scored = compound_gene_matching(profiles, FEATURES, verdicts, null_size=2000, seed=0, negatives=negatives)
    assert set(ap["Metadata_matched_modality"]) == {"crispr"} and set(ap["Metadata_matched_timepoint"]) == {144}
    queries = ap.set_index([PERT, "Metadata_gene"])
    # Compounds whose targets have no passed reagent (cX: T9) are not queries; failed cE and t2b never appear.
    assert set(queries.index) == {("cA", "T1"), ("cA", "T2"), ("cB", "T1"), ("cC", "T2"), ("cD", "T3"),
                                  ("t1a", "T1"), ("t1b", "T1"), ("t2a", "T2"), ("t3a", "T3"), ("t3b", "T3")}
    # (cA, T1): positives t1a, t1b; disjoint negatives: reagents of genes cA is not annotated to (t3a, t3b);
    # the paper's code: every reagent (5) and the 2 positives again.
    expected_total = 4 if negatives == "disjoint" else 7
    assert queries.loc[("cA", "T1"), ["n_pos_pairs", "n_total_pairs"]].tolist() == [2, expected_total]
    # The reagent t2a queries the compounds: positives cA, cC (both have T2); negatives cB, cD.
    assert queries.loc[("t2a", "T2"), ["n_pos_pairs", "n_total_pairs"]].tolist() == [2, 4 if negatives == "disjoint" else 6]
    if negatives == "disjoint":
        assert queries.loc[("cA", "T1"), "average_precision"] == 1.0  # t1a (1.0), t1b (.99) above t3a (.50), t3b (0)
    genes = scored.set_index("Metadata_gene")
    assert list(genes.index) == ["T1", "T2", "T3"]
    assert genes.loc["T1", "n_queries"] == 4 and genes.loc["T1", "Metadata_perturbations"] == "cA|cB|t1a|t1b"
    assert genes.loc["T1", "mean_average_precision"] == pytest.approx(
        queries.xs("T1", level="Metadata_gene")["average_precision"].mean())


def test_plates_of_different_density_are_separate_conditions():
    rng = np.random.default_rng(0)
    rows = []
    for group in ("benchmark", "density 80"):
        for plate in ("p1", "p2"):
            for name, control in (("c1", None), ("c2", None), ("DMSO", "negcon"), ("DMSO", "negcon"), ("DMSO", "negcon")):
                rows.append({**well("compound", name, None, "T1", rng.normal(size=3), 48, group),
                             "Metadata_Plate": f"{plate}-{group}", "Metadata_control_type": control})
    ap, scored = replicate_retrieval(pd.DataFrame(rows), FEATURES, null_size=1000, seed=0)
    assert sorted(scored["Metadata_plate_group"].unique()) == ["benchmark", "density 80"]
    assert (ap["n_pos_pairs"] == 1).all()  # c1's positive is its one replicate of the same group, never the other group's
    assert len(scored) == 4


def test_paper_plate_set_from_the_bundled_metadata():
    plates = paper_plates()
    assert len(plates) == 40
    conditions = pd.Series([(plate_info(p).cell_type, plate_info(p).modality, plate_info(p).timepoint) for p in plates])
    counts = conditions.value_counts()
    assert len(counts) == 12
    assert {k: v for k, v in counts.items() if k[1] != "orf"} == {k: 4 for k in counts.index if k[1] != "orf"}
    assert (counts[[k for k in counts.index if k[1] == "orf"]] == 2).all()
    # Left out: density 80 / 120, the Cas9 compound plates, the antibiotic plates.
    for excluded in ("BR00117008", "BR00117054", "BR00117050", "BR00117001", "BR00118049"):
        assert excluded not in plates and plate_info(excluded).group != "benchmark"
    assert plate_info("BR00117008").group == "density 80" and plate_info("BR00117050").group == "Cas9 line"
    assert plate_info("BR00117001").group == "puromycin"
