"""Profiles: annotation, per-plate robust normalization (vs pycytominer), feature selection, sphering."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from paintbench.metadata import plate_layout
from paintbench.profiles import annotate, annotated_profiles, normalize, select_features

PLATES = ["BR00116991", "BR00116992"]


def well_table(plate: str, seed: int, n_features: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    wells = plate_layout(plate)["Metadata_Well"].tolist()[:96]
    table = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": wells, "Metadata_Object_Count": 100})
    for i in range(n_features):
        table[f"Cells_Intensity_Feature{i}"] = rng.normal(10 * i, 1 + i, len(wells))
    return table


def test_annotation_adds_platemap_and_perturbation_metadata():
    annotated = annotate(well_table(PLATES[0], 0))
    row = annotated.set_index("Metadata_Well").loc["A02"]  # a DMSO well of JUMP-Target-1 compound plates
    assert row["Metadata_broad_sample"] == "DMSO" and row["Metadata_control_type"] == "negcon"
    assert row["Metadata_modality"] == "compound" and row["Metadata_cell_type"] == "A549" and row["Metadata_timepoint"] == 24
    assert annotated.columns[0].startswith("Metadata_") and annotated.columns[-1].startswith("Cells_")


def test_unknown_well_is_an_error():
    table = well_table(PLATES[0], 0)
    table.loc[0, "Metadata_Well"] = "Z99"  # not on the platemap
    with pytest.raises(ValueError, match="no platemap entry"):
        annotate(table)


def test_normalization_equals_pycytominer_mad_robustize():
    from pycytominer import normalize as pycytominer_normalize

    annotated = pd.concat([annotate(well_table(p, i)) for i, p in enumerate(PLATES)], ignore_index=True)
    features = [c for c in annotated.columns if c.startswith("Cells_")]
    ours = normalize(annotated, features)
    for plate in PLATES:
        block = annotated[annotated["Metadata_Plate"] == plate]
        reference = pycytominer_normalize(block, features=features, meta_features=[c for c in block if c.startswith("Metadata_")],
                                          samples="Metadata_control_type == 'negcon'", method="mad_robustize")
        np.testing.assert_allclose(ours.loc[block.index, features].to_numpy(), reference[features].to_numpy(), rtol=1e-9, atol=1e-9)
    controls = ours[ours["Metadata_control_type"] == "negcon"]
    medians = controls.groupby("Metadata_Plate")[features].median()
    np.testing.assert_allclose(medians.to_numpy(), 0, atol=1e-12)


def test_constant_control_feature_is_guarded():
    annotated = annotate(well_table(PLATES[0], 0))
    annotated["Cells_Constant_Controls"] = np.where(annotated["Metadata_control_type"] == "negcon", 5.0, np.arange(len(annotated)))
    annotated["Cells_Constant_Everywhere"] = 3.0
    out = normalize(annotated, ["Cells_Constant_Controls", "Cells_Constant_Everywhere"])
    assert np.isfinite(out["Cells_Constant_Controls"]).all() and out["Cells_Constant_Controls"].abs().max() < 1e3
    assert (out["Cells_Constant_Everywhere"] == 0).all()


def test_feature_selection_drops_correlated_constant_and_missing():
    annotated = annotate(well_table(PLATES[0], 0))
    annotated["Cells_Intensity_Copy"] = annotated["Cells_Intensity_Feature3"] * 2 + 1
    annotated["Cells_Intensity_Flat"] = 1.0
    annotated["Cells_Intensity_Gappy"] = np.where(np.arange(len(annotated)) % 3 == 0, np.nan, 1.0 * np.arange(len(annotated)))
    features = [c for c in annotated.columns if c.startswith("Cells_")]
    kept = select_features(annotated, features)
    assert "Cells_Intensity_Flat" not in kept and "Cells_Intensity_Gappy" not in kept
    assert ("Cells_Intensity_Copy" in kept) != ("Cells_Intensity_Feature3" in kept)
    assert {"Cells_Intensity_Feature0", "Cells_Intensity_Feature1"} <= set(kept)


def test_annotated_profiles_of_every_plate_drop_features_missing_everywhere():
    tables = [well_table(p, i).assign(Cells_Intensity_Missing=np.nan) for i, p in enumerate(PLATES)]
    annotated = annotated_profiles(tables, None)
    assert len(annotated) == 192 and "Cells_Intensity_Missing" not in annotated
    assert annotated["Metadata_control_type"].eq("negcon").any() and annotated["Metadata_broad_sample"].notna().any()
