"""Layout and batch controls (paintbench.controls): known answers on hand-built multi-plate tables (a planted
position, plate or treatment effect is found; without it, or with its labels shuffled, the control sits at chance),
a brute-force oracle for the 1-NN target accuracy, and one run on the real LINCS plate."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from paintbench.controls import (ALPHA, COLUMNS, CONTROLS, NO_POSITION_CHANGE, different_position_replicates,
                                 layout_controls, nearest_neighbour_target_accuracy, plate_predictability, pooled_p,
                                 same_position_controls, shuffled_replicates)
from paintbench.retrieval import CONDITION, replicate_retrieval, user_profiles
from paintbench.significance import fraction_retrieved
from tests.helpers import LINCS_PLATE, PERT, PLATE

NULL = 2000  # null draws: enough for p = 1/2001, fast
N_FEATURES = 24
WELLS = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]


def plates_table(n_plates: int = 4, n_pert: int = 32, n_negcon: int = 24, *, shared_layout: bool = True,
                 treatment: float = 0.0, position: float = 0.0, plate: float = 0.0, seed: int = 0,
                 modality: str = "compound") -> pd.DataFrame:
    """n_plates plates of one condition: n_pert perturbations (one well each per plate; targets T{i % 8}) and
    n_negcon DMSO wells, unit Gaussian well noise in N_FEATURES features, plus planted effects of the given sizes:
    `treatment` per perturbation, `position` per well position (negcon wells only), `plate` per plate.
    shared_layout: every plate puts each perturbation and control in the same well (CPJUMP1); else the wells are
    permuted independently per plate."""
    rng = np.random.default_rng(seed)
    effects = rng.normal(size=(n_pert, N_FEATURES)) * treatment
    n_wells = n_pert + n_negcon
    wells = np.array(WELLS[:n_wells])
    position_effect = dict(zip(wells, rng.normal(size=(n_wells, N_FEATURES)) * position))
    tables = []
    for p in range(n_plates):
        layout = wells if shared_layout else rng.permutation(wells)
        negcon_wells = layout[n_pert:]
        x = np.vstack([effects, np.zeros((n_negcon, N_FEATURES))]) + rng.normal(size=(n_wells, N_FEATURES))
        x[n_pert:] += np.array([position_effect[w] for w in negcon_wells])
        x += rng.normal(size=N_FEATURES) * plate
        tables.append(pd.DataFrame(x).add_prefix("f").assign(
            Metadata_Plate=f"PL{p}", Metadata_Well=layout,
            Metadata_broad_sample=[f"P{i:02d}" for i in range(n_pert)] + ["DMSO"] * n_negcon,
            Metadata_pert_type=["trt"] * n_pert + ["control"] * n_negcon,
            Metadata_control_type=[None] * n_pert + ["negcon"] * n_negcon,
            Metadata_target_list=[f"T{i % 8}" for i in range(n_pert)] + [None] * n_negcon,
            Metadata_modality=modality, Metadata_cell_type="U2OS", Metadata_timepoint=24,
            Metadata_plate_group="benchmark"))
    return pd.concat(tables, ignore_index=True)


def features_of(table: pd.DataFrame) -> list[str]:
    return [c for c in table if c.startswith("f")]


def only_row(table: pd.DataFrame) -> pd.Series:
    assert len(table) == 1 and list(table.columns) == COLUMNS
    return table.iloc[0]


# --- the pooled p-value of the retrieval controls ---------------------------------------------------------------

def test_pooled_p_is_the_null_of_independent_queries():
    """One positive among two candidates: a query's AP is 1 or 1/2, each with probability 1/2. Ten perfect queries
    have a pooled p of 2^-10 (independent queries), not 1/2 (one draw shared by every query)."""
    perfect = pd.DataFrame({"average_precision": 1.0, "n_pos_pairs": [1] * 10, "n_total_pairs": 2})
    assert pooled_p(perfect, 200_000, 0) == pytest.approx(2.0**-10, rel=0.15)
    # a mixed configuration: 5 perfect queries with (1, 2) and 3 with (1, 3) -> P(all perfect) = 2^-5 3^-3
    mixed = pd.DataFrame({"average_precision": 1.0, "n_pos_pairs": [1] * 8, "n_total_pairs": [2] * 5 + [3] * 3})
    assert pooled_p(mixed, 200_000, 0) == pytest.approx(2.0**-5 / 27, rel=0.15)


def test_pooled_p_is_calibrated_on_null_rankings():
    """Queries ranked at random: the pooled p falls below 0.05 in about 5% of repeats."""
    from paintbench.significance import null_distribution

    rng = np.random.default_rng(3)
    calls = []
    for repeat in range(300):
        k, n = 2, 12
        ap = null_distribution(k, n, 20, rng)
        calls.append(pooled_p(pd.DataFrame({"average_precision": ap, "n_pos_pairs": k, "n_total_pairs": n}), 2000,
                              repeat) < 0.05)
    assert 0.02 <= np.mean(calls) <= 0.09


# --- 1. same position ---------------------------------------------------------------------------------------------

def test_same_position_control_finds_a_planted_position_effect():
    table = plates_table(position=1.0)
    row = only_row(same_position_controls(table, features_of(table), null_size=NULL))
    assert row["n"] == 24  # every negcon position is on 4 plates
    assert row["fraction_retrieved"] >= 0.8
    assert row["mean_average_precision"] > row["null_mean_average_precision"] + 0.4
    assert row["p_value"] < 0.01 and row["chance"] == ALPHA


@pytest.mark.parametrize("case", ["no effect", "shuffled positions"])
def test_same_position_control_at_chance(case):
    if case == "no effect":
        table = plates_table(position=0.0)
    else:  # the effect is there, but each plate's negcon positions are relabelled at random
        table = plates_table(position=1.0)
        rng = np.random.default_rng(3)
        for plate, rows in table[table["Metadata_control_type"].eq("negcon")].groupby(PLATE).groups.items():
            table.loc[rows, "Metadata_Well"] = rng.permutation(table.loc[rows, "Metadata_Well"].to_numpy())
    row = only_row(same_position_controls(table, features_of(table), null_size=NULL))
    assert row["n"] == 24
    assert row["fraction_retrieved"] <= 0.1
    assert abs(row["mean_average_precision"] - row["null_mean_average_precision"]) < 0.08
    assert row["p_value"] > 0.01


def test_same_position_control_needs_two_plates():
    table = plates_table(n_plates=1, position=1.0)
    row = only_row(same_position_controls(table, features_of(table), null_size=NULL))
    assert row["n"] == 0 and "1 plate" in row["detail"] and np.isnan(row["mean_average_precision"])


# --- 2. replicates in other positions -------------------------------------------------------------------------------

def test_different_position_replicates_on_a_shared_layout_is_empty():
    table = plates_table(treatment=1.0)
    row = only_row(different_position_replicates(table, features_of(table), null_size=NULL))
    assert row["n"] == 0 and row["detail"] == NO_POSITION_CHANGE


def test_different_position_replicates_scores_shuffled_layouts():
    table = plates_table(treatment=1.0, shared_layout=False)
    row = only_row(different_position_replicates(table, features_of(table), null_size=NULL))
    assert row["n"] == 32 and row["fraction_retrieved"] >= 0.8
    assert row["mean_average_precision"] > 0.8 and row["p_value"] < 0.01
    # without a treatment effect the same layouts retrieve nothing
    table = plates_table(treatment=0.0, shared_layout=False)
    row = only_row(different_position_replicates(table, features_of(table), null_size=NULL))
    assert row["n"] == 32 and row["fraction_retrieved"] <= 0.1


# --- 3. label-shuffled replicates -----------------------------------------------------------------------------------

def test_shuffled_replicates_is_a_null_where_real_replicates_are_retrieved():
    table = plates_table(treatment=1.0, n_pert=48)
    features = features_of(table)
    real = replicate_retrieval(table, features, null_size=NULL)[1]
    assert fraction_retrieved(real) >= 0.9
    rows = pd.concat([shuffled_replicates(table, features, null_size=NULL, seed=s) for s in range(3)])
    assert (rows["n"] == 48).all() and (rows["chance"] == ALPHA).all()
    assert (rows["fraction_retrieved"] <= 0.1).all()
    assert (rows["mean_average_precision"] - rows["null_mean_average_precision"]).abs().max() < 0.08
    # seeded: the same seed gives the same table
    again = shuffled_replicates(table, features, null_size=NULL, seed=0)
    pd.testing.assert_frame_equal(again, rows.iloc[:1].reset_index(drop=True))


# --- 4. plate predictability ---------------------------------------------------------------------------------------

def test_plate_predictability_at_chance_without_a_plate_effect():
    table = plates_table(plate=0.0, n_negcon=32)
    row = only_row(plate_predictability(table, features_of(table), permutations=200))
    assert row["n"] == 128 and row["chance"] == pytest.approx(0.25)
    assert abs(row["accuracy"] - row["chance"]) < 0.12 and row["p_value"] > 0.05


def test_plate_predictability_finds_a_planted_plate_offset():
    table = plates_table(plate=1.0, n_negcon=32)
    row = only_row(plate_predictability(table, features_of(table), permutations=200))
    assert row["accuracy"] >= 0.95 and row["p_value"] == pytest.approx(1 / 201)


def test_plate_predictability_needs_two_plates():
    table = plates_table(n_plates=1, plate=1.0)
    row = only_row(plate_predictability(table, features_of(table)))
    assert row["n"] == 0 and "1 plate" in row["detail"] and np.isnan(row["accuracy"])


# --- 5. 1-NN target accuracy ---------------------------------------------------------------------------------------

def brute_force_nn_accuracy(table: pd.DataFrame, features: list[str],
                            exclude_wells: bool = True) -> tuple[float, int, dict]:
    """A naive double loop: consensus medians, then for each compound the most cosine-similar other compound (not
    sharing any well, with exclude_wells); correct when their '|'-separated target sets intersect."""
    treated = table[table["Metadata_control_type"].isna() & table["Metadata_target_list"].notna()]
    names = sorted(treated[PERT].unique())
    profile = {c: treated.loc[treated[PERT] == c, features].median().to_numpy() for c in names}
    wells = {c: set(treated.loc[treated[PERT] == c, "Metadata_Well"]) for c in names}
    targets = {c: set(treated.loc[treated[PERT] == c, "Metadata_target_list"].iloc[0].split("|")) for c in names}
    correct, scored, chosen = 0, 0, {}
    for a in names:
        best, best_sim = None, -np.inf
        for b in names:
            if b == a or (exclude_wells and wells[a] & wells[b]):
                continue
            sim = profile[a] @ profile[b] / np.linalg.norm(profile[a]) / np.linalg.norm(profile[b])
            if sim > best_sim:
                best, best_sim = b, sim
        if best is None:
            continue
        chosen[a] = best
        scored += 1
        correct += bool(targets[a] & targets[best])
    return correct / scored, scored, chosen


def test_nearest_neighbour_accuracy_matches_brute_force_and_honours_exclusions():
    table = plates_table(n_plates=3, n_pert=16, n_negcon=8, treatment=0.6, shared_layout=False, seed=4)
    features = features_of(table)
    # multi-target lists, some overlapping
    lists = {f"P{i:02d}": "|".join(sorted({f"T{i % 5}", f"T{(i * 3) % 7}"})) for i in range(16)}
    table["Metadata_target_list"] = table[PERT].map(lists)
    # a decoy: P01 becomes a near copy of P00 with disjoint targets, placed in one of P00's wells on another plate
    p0 = table[PERT].eq("P00")
    p1 = table[PERT].eq("P01")
    p0_well = table.loc[p0 & table[PLATE].eq("PL0"), "Metadata_Well"].iloc[0]
    swap = table[PLATE].eq("PL1") & table["Metadata_Well"].eq(p0_well)
    own = p1 & table[PLATE].eq("PL1")
    table.loc[swap, "Metadata_Well"], table.loc[own, "Metadata_Well"] = (
        table.loc[own, "Metadata_Well"].iloc[0], p0_well)
    table.loc[p1, features] = table.loc[p0, features].to_numpy() + 0.01
    table.loc[p1, "Metadata_target_list"] = "Z1|Z2"
    accuracy, scored, chosen = brute_force_nn_accuracy(table, features)
    assert chosen["P00"] != "P01" and chosen["P01"] != "P00"  # the closest compound shares a well: never chosen
    row = only_row(nearest_neighbour_target_accuracy(table, features, draws=4000, seed=1))
    assert row["n"] == scored == 16
    assert row["accuracy"] == pytest.approx(accuracy)
    # chance: under a random permutation any two distinct compounds share a target with the pair probability
    compounds = table.drop_duplicates(PERT).dropna(subset=["Metadata_target_list"])
    sets = [set(t.split("|")) for t in compounds["Metadata_target_list"]]
    pairs = [bool(a & b) for i, a in enumerate(sets) for j, b in enumerate(sets) if i != j]
    assert row["chance"] == pytest.approx(np.mean(pairs), abs=0.01)  # Monte Carlo SD ~0.002
    assert 0 < row["p_value"] <= 1
    # without the exclusion (no well column) the decoy is P00's neighbour, and the accuracy is the naive one's
    naive, _, naive_chosen = brute_force_nn_accuracy(table, features, exclude_wells=False)
    assert naive_chosen["P00"] == "P01" and naive_chosen["P01"] == "P00" and naive != pytest.approx(accuracy)
    row_no_wells = only_row(nearest_neighbour_target_accuracy(table.drop(columns="Metadata_Well"), features, draws=10))
    assert "no Metadata_Well" in row_no_wells["detail"] and row_no_wells["accuracy"] == pytest.approx(naive)


def test_nearest_neighbour_only_scores_compounds():
    table = plates_table(n_plates=2, modality="crispr", treatment=1.0)
    row = only_row(nearest_neighbour_target_accuracy(table, features_of(table), draws=10))
    assert row["n"] == 0 and "compound" in row["detail"]


# --- everything, on a planted table and on the real LINCS plate ----------------------------------------------------

def test_layout_controls_one_row_per_control_and_condition():
    table = pd.concat([plates_table(position=1.0, treatment=1.0),
                       plates_table(n_plates=2, modality="crispr", seed=2)], ignore_index=True)
    out = layout_controls(table, features_of(table), null_size=NULL, draws=200, permutations=50)
    assert list(out.columns) == COLUMNS
    assert len(out) == len(CONTROLS) * 2 and not out.duplicated(["control", *CONDITION]).any()
    compound = out[out["Metadata_modality"].eq("compound")].set_index("control")
    assert compound.loc["same_position_controls", "fraction_retrieved"] >= 0.8
    assert compound.loc["different_position_replicates", "detail"] == NO_POSITION_CHANGE
    assert compound.loc["shuffled_replicates", "fraction_retrieved"] <= 0.1


def test_layout_controls_on_the_real_lincs_plate():
    raw = pd.read_csv(LINCS_PLATE)
    features = [c for c in raw.columns if not c.startswith("Metadata_")]
    profiles = user_profiles(raw, control_col=None, control_value="DMSO", labels_col="Metadata_target")
    profiles = profiles.assign(Metadata_modality="compound")
    start = time.perf_counter()
    out = layout_controls(profiles, features, null_size=NULL, draws=500, permutations=100)
    elapsed = time.perf_counter() - start
    print(f"layout_controls on the LINCS plate: {elapsed:.2f} s")
    assert list(out.columns) == COLUMNS and list(out["control"]) == list(CONTROLS)
    rows = out.set_index("control")
    for control in ("same_position_controls", "plate_predictability"):  # one plate
        assert rows.loc[control, "n"] == 0 and "1 plate" in rows.loc[control, "detail"]
    # the dose series sit in different wells of the one plate: positives in other positions exist
    assert rows.loc["different_position_replicates", "n"] == 58
    assert rows.loc["different_position_replicates", "fraction_retrieved"] > 0.2
    assert rows.loc["shuffled_replicates", "n"] > 0
    assert rows.loc["shuffled_replicates", "fraction_retrieved"] <= 0.1
    nn = rows.loc["nearest_neighbour_target_accuracy"]
    assert nn["n"] > 10 and 0 <= nn["accuracy"] <= 1 and 0 < nn["chance"] < 1
    assert elapsed < 30


def test_nearest_neighbours_in_row_blocks_equal_the_whole_matrix():
    """Nothing holds a compounds x compounds matrix: one row per block finds the same neighbours as one block,
    with the same exclusions (itself, shared well positions) and ties to the lower index."""
    from paintbench.controls import _padded, _share, nearest_neighbours

    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(40, 6)), 0) + 0.01  # coarse: tied similarities
    positions = _padded([{f"W{k}", f"W{(k * 7) % 13}"} for k in range(40)])
    whole = nearest_neighbours(x, positions, block=10**9)
    one_row = nearest_neighbours(x, positions, block=1)
    assert np.array_equal(whole[0], one_row[0]) and np.array_equal(whole[1], one_row[1])
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    every = np.arange(40)
    banned = _share(positions, every[:, None].repeat(40, 1), every[None, :].repeat(40, 0)) | np.eye(40, dtype=bool)
    sim[banned] = -np.inf
    assert np.array_equal(whole[0][whole[1]], sim.argmax(axis=1)[whole[1]])
