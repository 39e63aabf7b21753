"""Profile chain steps with known answers: hand-built tables and equality with pycytominer on a real LINCS plate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.chains import apply_chain, check_chain
from tests.helpers import LINCS_PLATE

PLATES = ["P1", "P2", "P3"]
WELLS = [f"A{c:02d}" for c in range(1, 25)]


def layout_table(n_features: int = 6, seed: int = 0) -> pd.DataFrame:
    """Three plates sharing a layout: 8 negative controls and 16 treatments per plate, noise only."""
    rng = np.random.default_rng(seed)
    rows = []
    for plate in PLATES:
        for i, well in enumerate(WELLS):
            control = i < 8
            rows.append({"Metadata_Plate": plate, "Metadata_Well": well,
                         "Metadata_control_type": "negcon" if control else None,
                         "Metadata_broad_sample": "DMSO" if control else f"BRD-{i}",
                         "Metadata_Object_Count": float(rng.integers(20, 200)),
                         **{f"f{j}": rng.normal() for j in range(n_features)}})
    return pd.DataFrame(rows)


def features_of(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("f")]


def test_wellpos_removes_a_planted_position_effect():
    table = layout_table()
    offsets = {well: 3.0 * np.sin(i) for i, well in enumerate(WELLS)}
    table["f0"] += table["Metadata_Well"].map(offsets)
    out, features, _ = apply_chain(table, ["wellpos"])
    by_position = out.groupby("Metadata_Well")["f0"].mean()
    assert by_position.abs().max() < 1e-9
    assert table.groupby("Metadata_Well")["f0"].mean().abs().max() > 1.0


def test_cc_removes_a_planted_cell_count_effect():
    table = layout_table()
    table["f1"] += 2.0 * np.log1p(table["Metadata_Object_Count"])
    before = np.corrcoef(table["f1"], np.log1p(table["Metadata_Object_Count"]))[0, 1]
    out, _, _ = apply_chain(table, ["cc"])
    after = np.corrcoef(out["f1"], np.log1p(table["Metadata_Object_Count"]))[0, 1]
    assert before > 0.6 and abs(after) < 1e-6


def test_sphering_whitens_controls_of_a_known_covariance():
    rng = np.random.default_rng(1)
    table = layout_table(n_features=4)
    covariance = np.array([[1, 0.8, 0, 0], [0.8, 1, 0.3, 0], [0, 0.3, 1, 0], [0, 0, 0, 1.0]])
    table[features_of(table)] = rng.multivariate_normal(np.zeros(4), covariance, size=len(table))
    out, features, records = apply_chain(table, ["sphering"], {"sphering": {"regularization": 1e-6}})
    controls = out.loc[out["Metadata_control_type"] == "negcon", features].to_numpy()
    np.testing.assert_allclose(np.corrcoef(controls, rowvar=False), np.eye(4), atol=1e-3)
    assert int(records.iloc[0]["n_fit_wells"]) == 24


def test_int_gives_ties_one_value_and_keeps_order():
    table = layout_table()
    table["f2"] = np.repeat([1.0, 2.0, 2.0, 3.0], len(table) // 4)
    out, _, _ = apply_chain(table, ["int"])
    tied = out.loc[table["f2"] == 2.0, "f2"]
    assert tied.nunique() == 1
    assert out.loc[table["f2"] == 1.0, "f2"].max() < tied.iloc[0] < out.loc[table["f2"] == 3.0, "f2"].min()


def test_outlier_clips():
    table = layout_table()
    table.loc[0, "f3"] = 1e6
    out, _, _ = apply_chain(table, ["outlier"], {"outlier": {"clip": 5}})
    assert out["f3"].max() == 5


def test_unknown_step_and_missing_column_are_rejected_naming_them():
    with pytest.raises(ValueError, match="sphereing"):
        check_chain(["mad", "sphereing"], list(layout_table().columns), name="mine")
    columns = [c for c in layout_table().columns if c != "Metadata_Object_Count"]
    with pytest.raises(ValueError, match="Metadata_Object_Count"):
        check_chain(["cc"], columns, name="mine")


@pytest.fixture(scope="module")
def lincs() -> pd.DataFrame:
    table = pd.read_csv(LINCS_PLATE)
    return table.assign(Metadata_control_type=np.where(table["Metadata_broad_sample"].eq("DMSO"), "negcon", None))


def test_mad_equals_pycytominer_mad_robustize_on_a_real_plate(lincs):
    from pycytominer import normalize

    features = [c for c in lincs.columns if not c.startswith("Metadata_")][:60]
    table = lincs[[c for c in lincs.columns if c.startswith("Metadata_")] + features]
    ours, kept, _ = apply_chain(table, ["mad"])
    theirs = normalize(table, features=features, samples="Metadata_control_type == 'negcon'", method="mad_robustize")
    controls = table.loc[table["Metadata_control_type"] == "negcon", features]
    varying = [f for f in features if (controls[f] - controls[f].median()).abs().median() > 0]
    np.testing.assert_allclose(ours[varying].to_numpy(), theirs[varying].to_numpy(), rtol=1e-6, atol=1e-9)
