"""Profile chains: known answers on hand-built tables, and equality with pycytominer on a real LINCS plate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from paintbench.chains import STEPS, apply_chain, auto_regularization, check_chain, variance_operations
from paintbench.metadata import NEGCON
from paintbench.profiles import SELECTION_OPERATIONS

NEGCON_QUERY = "Metadata_control_type == 'negcon'"


def table_of(meta: dict, values: np.ndarray, prefix: str = "Cells_F") -> pd.DataFrame:
    features = pd.DataFrame(values, columns=[f"{prefix}{i}" for i in range(values.shape[1])])
    return pd.concat([pd.DataFrame(meta, index=features.index), features], axis=1)


def plates_table(n_plates: int, n_wells: int, n_features: int, n_controls: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_plates * n_wells
    meta = {"Metadata_Plate": np.repeat([f"P{p}" for p in range(n_plates)], n_wells),
            "Metadata_Well": np.tile([f"W{w:03d}" for w in range(n_wells)], n_plates),
            "Metadata_control_type": np.tile([NEGCON] * n_controls + ["trt"] * (n_wells - n_controls), n_plates),
            "Metadata_Object_Count": rng.integers(50, 500, n)}
    return table_of(meta, rng.normal(5, 2, (n, n_features)))


def meta_of(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("Metadata_")]


# ------------------------------------------------------------------------------------------------ LINCS fixture
@pytest.fixture(scope="module")
def lincs_table(lincs) -> tuple[pd.DataFrame, list[str]]:
    """The LINCS plate split into two pseudo-plates by well-column parity (12 DMSO wells each), so per-plate and
    pooled fits differ; DMSO wells are the negative controls."""
    df, feats = lincs
    column = df["Metadata_Well"].str[1:].astype(int)
    meta = df[[c for c in df.columns if c.startswith("Metadata_")]].copy()
    meta["Metadata_Plate"] = df["Metadata_Plate"] + np.where(column % 2, "_odd", "_even")
    meta["Metadata_control_type"] = np.where(df["control"], NEGCON, "trt")
    return pd.concat([meta, df[feats]], axis=1), feats


def per_plate_pycytominer(table: pd.DataFrame, features: list[str], **kwargs) -> pd.DataFrame:
    from pycytominer import normalize

    blocks = [normalize(block, features=features, meta_features=meta_of(block), samples=NEGCON_QUERY, **kwargs)
              for _, block in table.groupby("Metadata_Plate")]
    return pd.concat(blocks).loc[table.index]


def test_mad_equals_pycytominer_mad_robustize_where_the_mad_is_nonzero(lincs_table):
    table, feats = lincs_table
    ours, kept, _ = apply_chain(table, ["mad"])
    reference = per_plate_pycytominer(table, feats, method="mad_robustize")
    assert kept == feats
    for plate, rows in table.groupby("Metadata_Plate").groups.items():
        controls = table.loc[rows][table.loc[rows, "Metadata_control_type"] == NEGCON][feats]
        nonzero = (controls - controls.median()).abs().median().to_numpy() > 0
        assert nonzero.sum() > 400
        np.testing.assert_allclose(ours.loc[rows, feats].to_numpy()[:, nonzero],
                                   reference.loc[rows, feats].to_numpy()[:, nonzero], rtol=1e-7, atol=1e-9)


def test_standardize_equals_pycytominer_per_plate(lincs_table):
    table, feats = lincs_table
    ours, _, records = apply_chain(table, ["standardize"])
    reference = per_plate_pycytominer(table, feats, method="standardize")
    np.testing.assert_allclose(ours[feats].to_numpy(), reference[feats].to_numpy(), rtol=1e-9, atol=1e-9)
    controls = ours[ours["Metadata_control_type"] == NEGCON]
    np.testing.assert_allclose(controls.groupby("Metadata_Plate")[feats].mean().to_numpy(), 0, atol=1e-9)
    assert records.loc[0, "n_fit_wells"] == 24 and records.loc[0, "fitted_on"] == "negcon"


@pytest.mark.parametrize("epsilon", [1e-6, 0.1, 10.0])
def test_sphering_equals_pycytominer_zca_cor_on_pooled_controls(lincs_table, epsilon):
    from pycytominer import normalize

    table, feats = lincs_table
    ours, kept, records = apply_chain(table, ["sphering"], {"sphering": {"regularization": epsilon}})
    reference = normalize(table, features=feats, meta_features=meta_of(table), samples=NEGCON_QUERY,
                          method="spherize", spherize_method="ZCA-cor", spherize_epsilon=epsilon, spherize_center=True)
    assert kept == feats  # no LINCS feature is constant across its DMSO wells
    np.testing.assert_allclose(ours[feats].to_numpy(), reference[feats].to_numpy(), rtol=1e-7, atol=1e-8)
    assert records.loc[0, "detail"] == f"regularization={epsilon:g}"
    assert records.loc[0, "n_fit_wells"] == 24
    assert records.loc[0, "controls_per_feature"] == pytest.approx(24 / len(feats))


def with_planted_features(table: pd.DataFrame, feats: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """LINCS plus a near-constant feature, one with two distinct values, a copy of a feature and a gappy one."""
    rng = np.random.default_rng(0)
    n = len(table)
    planted = pd.DataFrame({
        "Cells_Planted_Rare": np.where(np.arange(n) == 0, 1.0, 0.0),  # second / first most common 1/383 < freq_cut
        "Cells_Planted_Copy": table[feats[3]] * 2 + 1,
        "Cells_Planted_Gappy": np.where(np.arange(n) % 4 == 0, np.nan, rng.normal(size=n)),
        "Cells_Planted_Noise": rng.normal(size=n),
    }, index=table.index)
    return pd.concat([table, planted], axis=1), [*feats, *planted.columns]


def test_var_keeps_the_features_pycytominer_keeps(lincs_table):
    from pycytominer import feature_select

    table, feats = with_planted_features(*lincs_table)
    for freq_cut, unique_cut in [(0.05, 0.01), (0.2, 0.05)]:
        _, kept, _ = apply_chain(table, ["var"], {"var": {"freq_cut": freq_cut, "unique_cut": unique_cut}})
        reference = feature_select(table[feats], features=feats, operation=variance_operations(),
                                   freq_cut=freq_cut, unique_cut=unique_cut)
        assert kept == [c for c in feats if c in reference.columns]
        assert "Cells_Planted_Rare" not in kept and "Cells_Planted_Noise" in kept


def test_featselect_keeps_the_features_pycytominer_keeps(lincs_table):
    from pycytominer import feature_select

    table, feats = with_planted_features(*lincs_table)
    for corr_threshold in (0.9, 0.6):
        options = {"featselect": {"corr_threshold": corr_threshold, "na_cutoff": 0.05}}
        _, kept, records = apply_chain(table, ["featselect"], options)
        reference = feature_select(table[feats], features=feats, operation=SELECTION_OPERATIONS,
                                   corr_threshold=corr_threshold, na_cutoff=0.05)
        assert kept == [c for c in feats if c in reference.columns]
        assert "Cells_Planted_Gappy" not in kept and "Cells_Planted_Noise" in kept
        if corr_threshold == 0.9:
            assert ("Cells_Planted_Copy" in kept) != (feats[3] in kept)
        assert records.loc[0, "n_features_out"] == len(kept) < len(feats)
    assert len(apply_chain(table, ["featselect"], {"featselect": {"corr_threshold": 0.6}})[1]) < len(
        apply_chain(table, ["featselect"])[1])


# ------------------------------------------------------------------------------------------------ known answers
def test_wellpos_removes_a_planted_position_effect_but_keeps_a_varied_treatment():
    rng = np.random.default_rng(1)
    n_plates, n_wells, effect = 4, 40, 10.0
    table = plates_table(n_plates, n_wells, 3, 8, seed=1)
    features = ["Cells_F0", "Cells_F1", "Cells_F2"]
    position = rng.normal(0, 4, (n_wells, 3))
    well_index = table["Metadata_Well"].str[1:].astype(int).to_numpy()
    plate_index = table["Metadata_Plate"].str[1:].astype(int).to_numpy()
    table[features] = table[features].to_numpy() + position[well_index]
    varied = (well_index - 5) // 5 == plate_index  # the treatment sits at other positions on every plate
    shared = well_index == 30  # ... and one that sits at one position on every plate (CPJUMP1's layout)
    table.loc[varied | shared, features] += effect
    out, _, records = apply_chain(table, ["wellpos"])
    np.testing.assert_allclose(out.groupby("Metadata_Well")[features].mean().to_numpy(), 0, atol=1e-10)
    assert table.groupby("Metadata_Well")[features].mean().abs().to_numpy().max() > 3
    others = ~(varied | shared)
    kept = out.loc[varied, features].mean() - out.loc[others, features].mean()
    assert varied.sum() == 20 and (kept > 0.6 * effect).all()  # (1 - 1/4) of it survives at varied positions
    assert (table.loc[shared, features].mean() - table.loc[others, features].mean() > 0.6 * effect).all()
    np.testing.assert_allclose(out.loc[shared, features].mean(), 0, atol=1e-10)  # a shared-position one is gone
    assert records.loc[0, "fitted_on"] == "all wells" and np.isnan(records.loc[0, "controls_per_feature"])


def test_wellpos_needs_positions_shared_by_plates():
    one_plate = plates_table(1, 12, 3, 4)
    with pytest.raises(ValueError, match="step 'wellpos': every well position is on one plate only"):
        apply_chain(one_plate, ["wellpos"])
    extra = plates_table(1, 13, 3, 4, seed=3).iloc[[12]].assign(Metadata_Plate="P9")  # W012 only on P9
    table = pd.concat([plates_table(2, 12, 3, 4), extra], ignore_index=True)
    out, features, records = apply_chain(table, ["wellpos"])
    np.testing.assert_array_equal(out.iloc[-1][features].to_numpy(float), table.iloc[-1][features].to_numpy(float))
    assert "1 well(s) at a position no other plate of their layout has left as they were" in records.loc[0, "detail"]


def test_wellpos_averages_a_position_over_the_plates_of_its_layout():
    """Two layouts (platemaps), each on two plates: a position's mean is taken over its layout's plates only."""
    table = plates_table(4, 12, 3, 4, seed=4)
    table["Metadata_Plate_Map_Name"] = table["Metadata_Plate"].map({"P0": "map1", "P1": "map1", "P2": "map2",
                                                                  "P3": "map2"})
    features = ["Cells_F0", "Cells_F1", "Cells_F2"]
    table.loc[table["Metadata_Plate_Map_Name"] == "map2", features] += 50.0  # map2's plates hold other things
    out, _, records = apply_chain(table, ["wellpos"])
    np.testing.assert_allclose(out.groupby(["Metadata_Plate_Map_Name", "Metadata_Well"])[features].mean(), 0,
                               atol=1e-9)
    assert out[features].abs().to_numpy().max() < 20  # map2's offset never leaks into map1's wells
    assert "Metadata_Plate_Map_Name x Metadata_Well" in records.loc[0, "detail"]


def test_cc_removes_a_planted_count_effect_and_keeps_the_mean():
    table = plates_table(2, 60, 2, 10, seed=2)
    log_count = np.log1p(table["Metadata_Object_Count"].to_numpy())
    table["Cells_F0"] += 6 * log_count
    before = table[["Cells_F0", "Cells_F1"]].copy()
    out, _, _ = apply_chain(table, ["cc"])
    assert np.corrcoef(before["Cells_F0"], log_count)[0, 1] > 0.8
    assert abs(np.corrcoef(out["Cells_F0"], log_count)[0, 1]) < 1e-10
    assert abs(np.corrcoef(out["Cells_F1"], log_count)[0, 1]) < 1e-10
    np.testing.assert_allclose(out[["Cells_F0", "Cells_F1"]].mean(), before.mean(), atol=1e-10)
    assert np.abs(out["Cells_F1"] - before["Cells_F1"]).max() < 1.0  # no count effect there: barely moved


def correlated_controls(n_per_plate: int, d: int, n_plates: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    cov = a @ a.T / d + 0.2 * np.eye(d)
    values = rng.multivariate_normal(np.full(d, 3.0), cov, size=n_per_plate * n_plates)
    meta = {"Metadata_Plate": np.repeat([f"P{p}" for p in range(n_plates)], n_per_plate),
            "Metadata_Well": [f"W{i}" for i in range(len(values))], "Metadata_control_type": NEGCON}
    return table_of(meta, values), cov


def test_sphering_whitens_controls_drawn_from_a_known_correlated_gaussian():
    table, cov = correlated_controls(2000, 10, 3, seed=3)
    features = [c for c in table.columns if c.startswith("Cells_")]
    assert np.abs(np.corrcoef(table[features].to_numpy(), rowvar=False) - np.eye(10)).max() > 0.3
    for regularization in (1e-5, "auto"):
        out, kept, records = apply_chain(table, ["sphering"], {"sphering": {"regularization": regularization}})
        correlation = np.corrcoef(out[kept].to_numpy(), rowvar=False)
        assert np.abs(correlation - np.eye(10)).max() < 0.02
        assert records.loc[0, "n_fit_wells"] == 6000 and records.loc[0, "controls_per_feature"] == 600
    assert records.loc[0, "detail"].endswith("(auto)")


def test_sphering_auto_picks_more_regularization_with_fewer_controls_than_features():
    for seed in (0, 1):
        many, _ = correlated_controls(2000, 20, 3, seed)
        few, _ = correlated_controls(6, 20, 3, seed)  # each fit: 12 controls for 20 features
        features = [c for c in many.columns if c.startswith("Cells_")]
        eps_many = auto_regularization(many[features].to_numpy(), many["Metadata_Plate"].to_numpy())
        eps_few = auto_regularization(few[features].to_numpy(), few["Metadata_Plate"].to_numpy())
        assert eps_many <= 0.5 and eps_few >= 1.0
    one_plate, _ = correlated_controls(15, 20, 1, 0)  # 5 folds of one plate's controls
    values = one_plate[features].to_numpy()
    assert auto_regularization(values, one_plate["Metadata_Plate"].to_numpy()) >= 1.0


def test_sphering_drops_features_constant_across_controls():
    table = plates_table(2, 50, 4, 20, seed=4)
    table.loc[table["Metadata_control_type"] == NEGCON, "Cells_F2"] = 1.0
    out, kept, records = apply_chain(table, ["sphering"], {"sphering": {"regularization": 0.1}})
    assert kept == ["Cells_F0", "Cells_F1", "Cells_F3"] and np.isfinite(out[kept].to_numpy()).all()
    assert "1 feature(s) constant across controls dropped" in records.loc[0, "detail"]


def test_int_on_ties_is_monotone_and_blom():
    values = np.array([1, 2, 2, 3, 5, 5, 5, 10, -4, 0.5])
    table = table_of({"Metadata_Plate": "P"}, np.column_stack([values, np.full(10, 7.0)]))
    out, _, _ = apply_chain(table, ["int"])
    z = out["Cells_F0"].to_numpy()
    assert z[1] == z[2] and z[4] == z[5] == z[6]
    order = np.argsort(values, kind="stable")
    assert (np.diff(z[order]) >= 0).all() and len(np.unique(z)) == len(np.unique(values))
    assert z[8] == pytest.approx(norm.ppf((1 - 3 / 8) / (10 + 1 / 4)))  # the smallest value has rank 1
    assert z[4] == pytest.approx(norm.ppf((8 - 3 / 8) / (10 + 1 / 4)))  # ranks 7, 8, 9 average to 8
    np.testing.assert_array_equal(out["Cells_F1"].to_numpy(), 0.0)


def test_outlier_clips_and_counts():
    table = table_of({"Metadata_Plate": "P"}, np.array([[-500.0, 1.0], [3.0, 250.0], [99.0, -100.0]]))
    out, _, records = apply_chain(table, ["outlier"])
    np.testing.assert_array_equal(out[["Cells_F0", "Cells_F1"]].to_numpy(), [[-100, 1], [3, 100], [99, -100]])
    assert records.loc[0, "detail"] == "clip=100; 2 value(s) clipped"
    out, _, _ = apply_chain(table, ["outlier"], {"outlier": {"clip": 2}})
    assert out[["Cells_F0", "Cells_F1"]].abs().to_numpy().max() == 2


def test_pca_keeps_the_components_explaining_the_variance_share():
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(300, 3)) * [10, 5, 3]
    values = latent @ rng.normal(size=(3, 12)) + rng.normal(0, 0.01, (300, 12))
    table = table_of({"Metadata_Plate": "P"}, values)
    ratios = np.sort(np.linalg.eigvalsh(np.cov(values, rowvar=False)))[::-1]
    for share in (0.99, 0.8):
        expected = int(np.searchsorted(np.cumsum(ratios) / ratios.sum(), share) + 1)
        out, kept, records = apply_chain(table, ["pca"], {"pca": {"variance": share}})
        assert kept == [f"PC{i}" for i in range(1, expected + 1)]
        assert records.loc[0, "n_features_out"] == expected and records.loc[0, "fitted_on"] == "all wells"
    assert apply_chain(table, ["pca"])[1] == ["PC1", "PC2", "PC3"]


def harmony_table(seed: int = 6) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    group, plate = np.tile(np.repeat([0, 1, 2], 30), 3), np.repeat([0, 1, 2], 90)
    values = rng.normal(0, 3, (3, 8))[group] + rng.normal(0, 3, (3, 8))[plate] + rng.normal(0, 0.5, (270, 8))
    meta = {"Metadata_Plate": [f"P{p}" for p in plate], "Metadata_Well": [f"W{i}" for i in range(270)]}
    return table_of(meta, values), group


def plate_mean_spread(table: pd.DataFrame, features: list[str]) -> float:
    means = table.groupby("Metadata_Plate")[features].mean().to_numpy()
    return float(np.linalg.norm(means - means.mean(axis=0), axis=1).mean())


def test_harmony_reduces_a_planted_plate_offset_deterministically():
    table, group = harmony_table()
    features = [c for c in table.columns if c.startswith("Cells_")]
    out, kept, records = apply_chain(table, ["harmony"], {"harmony": {"seed": 0}})
    assert kept == [f"harmony_{i}" for i in range(1, 9)]
    assert plate_mean_spread(out, kept) < 0.75 * plate_mean_spread(table, features)
    again, _, _ = apply_chain(table, ["harmony"], {"harmony": {"seed": 0}})
    np.testing.assert_array_equal(out[kept].to_numpy(), again[kept].to_numpy())
    assert "3 batches" in records.loc[0, "detail"]
    one, kept_one, records_one = apply_chain(table.assign(Metadata_Plate="P0"), ["harmony"])
    assert kept_one == features and "identity" in records_one.loc[0, "detail"]
    np.testing.assert_array_equal(one[features].to_numpy(), table[features].to_numpy())


# ------------------------------------------------------------------------------------------------ chains
def test_check_chain_names_the_chain_the_step_and_the_column():
    columns = ["Metadata_Plate", "Metadata_Well", "Metadata_control_type", "Cells_F0"]
    check_chain(["mad", "featselect", "sphering", "harmony"], columns)
    with pytest.raises(ValueError, match=r"profiles\.chains\.X: step 'cc' needs column Metadata_Object_Count, "
                                         r"which the feature set's profiles lack"):
        check_chain(["mad", "cc"], columns, name="profiles.chains.X")
    with pytest.raises(ValueError, match=r"profiles\.chains\.Y: unknown step 'spheres'.*did you mean sphering"):
        check_chain(["mad", "spheres"], columns, name="profiles.chains.Y")
    with pytest.raises(ValueError, match="known: none, var, mad"):
        check_chain(["zap"], columns)
    with pytest.raises(ValueError, match="step 'harmony' needs column Metadata_Batch"):
        check_chain(["harmony"], columns, options={"harmony": {"batch": "Metadata_Batch"}})
    with pytest.raises(ValueError, match=r"step 'pca': unknown option\(s\) \['share'\]"):
        apply_chain(plates_table(1, 10, 2, 4), ["pca"], {"pca": {"share": 0.5}})
    assert set(STEPS) == {"none", "var", "mad", "standardize", "int", "featselect", "wellpos", "cc", "outlier",
                          "sphering", "pca", "harmony", "heldout"}


def test_apply_chain_records_each_step_and_keeps_metadata_and_row_order():
    table = plates_table(2, 40, 6, 10, seed=7).sample(frac=1, random_state=0)
    table["Cells_Empty"] = np.nan
    table.loc[table["Metadata_control_type"] == NEGCON, "Cells_F5"] = 2.0  # constant controls on both plates
    out, features, records = apply_chain(table, ["mad", "sphering", "pca"],
                                         {"sphering": {"regularization": 0.01}, "pca": {"variance": 0.9}})
    assert list(out.index) == list(table.index)
    pd.testing.assert_frame_equal(out[meta_of(table)], table[meta_of(table)])
    assert list(out.columns) == meta_of(table) + features and np.isfinite(out[features].to_numpy()).all()
    assert list(records["step"]) == ["mad", "sphering", "pca"]
    assert list(records["n_features_in"]) == [6, 6, 5]  # Cells_Empty dropped up front, Cells_F5 by the sphering
    assert list(records["fitted_on"]) == ["negcon", "negcon", "all wells"]
    assert list(records["n_fit_wells"]) == [20, 20, 80]
    np.testing.assert_allclose(records["controls_per_feature"].to_numpy(), [20 / 6, 20 / 6, np.nan])
    assert records.loc[1, "detail"].startswith("regularization=0.01")
    none, same, record = apply_chain(table, ["none"])
    assert same == [f"Cells_F{i}" for i in range(6)] and record.loc[0, "fitted_on"] == "none"
    assert record.loc[0, "n_fit_wells"] == 0


def test_a_chain_that_leaves_too_little_names_the_feature_set_the_step_and_the_fix():
    """Wells that do not differ (every value equal): pycytominer's variance filter keeps nothing; the message says
    which feature set, chain and step, and what to change, instead of the library's own words."""
    table = plates_table(2, 12, 6, 4)
    table[[c for c in table.columns if c.startswith("Cells_")]] = 1.0
    with pytest.raises(ValueError, match=r"cellprofiler/mad_featselect: step 'featselect' .*run a chain without "
                                         r"featselect for cellprofiler \(config key profiles.feature_sets"):
        apply_chain(table, ["featselect"], name="cellprofiler/mad_featselect")
    few = plates_table(2, 12, 3, 4)
    with pytest.raises(ValueError, match=r"vitdino/mad: the profiles have 3 feature\(s\), fewer than config key "
                                         r"'profiles.min_features' \(5\)"):
        apply_chain(few, ["mad"], name="vitdino/mad", min_features=5)
