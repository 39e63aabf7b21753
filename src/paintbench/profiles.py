"""Well profiles -> one annotated table per feature set, and the steps the profile chains share: the per-plate
robust z-score and the consortium's feature selection (paintbench.chains runs them in chains).

Normalization is per plate against its negative controls, a robust z-score as pycytominer's `mad_robustize`:
(x - median_negcon) / (1.4826 * MAD_negcon). pycytominer adds 1e-18 to the MAD, so a feature constant across a
plate's controls becomes ~1e18 there; here such a feature falls back to the MAD of all the plate's wells, and is
set to 0 on that plate when that is zero too (it carries no information there), so no profile is dominated by it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.metadata import NEGCON, plate_layout

log = logging.getLogger(__name__)

MAD_SCALE = 1.4826  # makes the MAD of a normal distribution equal its standard deviation
SELECTION_OPERATIONS = ["variance_threshold", "correlation_threshold", "drop_na_columns", "blocklist"]


def feature_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not c.startswith("Metadata_") and pd.api.types.is_numeric_dtype(table[c])]


def annotate(wells: pd.DataFrame, metadata_dir: str | Path | None = None) -> pd.DataFrame:
    """Add the platemap and perturbation metadata (Metadata_broad_sample, _control_type, _gene, ...)."""
    layouts = pd.concat([plate_layout(p, metadata_dir) for p in wells["Metadata_Plate"].unique()], ignore_index=True)
    annotated = layouts.merge(wells, on=["Metadata_Plate", "Metadata_Well"], how="inner", validate="one_to_one")
    lost = len(wells) - len(annotated)
    if lost:
        raise ValueError(f"{lost} well profile(s) have no platemap entry (check Metadata_Plate / Metadata_Well)")
    metadata = [c for c in annotated.columns if c.startswith("Metadata_")]
    return annotated[metadata + feature_columns(annotated)]


def robust_scale(values: np.ndarray, reference: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(values - median(reference)) / (1.4826 MAD(reference)); zero MADs fall back to `fallback`'s MAD, then to 0."""
    centre = np.nanmedian(reference, axis=0)
    scale = MAD_SCALE * np.nanmedian(np.abs(reference - centre), axis=0)
    flat = ~(scale > 0)
    if flat.any():  # only the features whose controls are constant need the plate's own MAD
        wide = fallback[:, flat]
        scale[flat] = MAD_SCALE * np.nanmedian(np.abs(wide - np.nanmedian(wide, axis=0)), axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (values - centre) / scale
    scaled[:, ~(scale > 0)] = 0.0
    return scaled


def normalize(profiles: pd.DataFrame, features: list[str], plate_col: str = "Metadata_Plate") -> pd.DataFrame:
    """Robust z-scores per plate against that plate's negative controls (Metadata_control_type == 'negcon')."""
    values = profiles[features].to_numpy(np.float64)
    scaled = np.empty_like(values)
    controls = (profiles["Metadata_control_type"] == NEGCON).to_numpy()
    for plate, rows in profiles.groupby(plate_col, sort=False).indices.items():
        reference = rows[controls[rows]]
        if len(reference) < 2:
            raise ValueError(f"plate {plate}: {len(reference)} negative-control well(s); normalization needs at least 2")
        block = values[rows]
        scaled[rows] = robust_scale(block, values[reference], block)
    out = profiles.drop(columns=features)
    return pd.concat([out, pd.DataFrame(scaled, columns=features, index=profiles.index)], axis=1)[profiles.columns]


def select_features(profiles: pd.DataFrame, features: list[str], operations: list[str] = SELECTION_OPERATIONS,
                    corr_threshold: float = 0.9, na_cutoff: float = 0.05) -> list[str]:
    """The consortium's feature selection (pycytominer.feature_select) fitted on all plates of a run."""
    from pycytominer import feature_select

    selected = feature_select(profiles[features], features=features, operation=operations,
                              corr_threshold=corr_threshold, na_cutoff=na_cutoff)
    kept = [c for c in features if c in selected.columns]
    log.info("feature selection (%s): %d of %d features kept", ", ".join(operations), len(kept), len(features))
    return kept


def annotated_profiles(well_tables: list[pd.DataFrame], metadata_dir: str | Path | None) -> pd.DataFrame:
    """Every plate's well profiles of one feature set, annotated; features missing in every well are dropped. Each
    profile chain (paintbench.chains) starts from this table."""
    annotated = annotate(pd.concat(well_tables, ignore_index=True), metadata_dir)
    empty = [c for c in feature_columns(annotated) if annotated[c].isna().all()]
    if empty:
        log.info("%d feature(s) missing in every well dropped: %s", len(empty), empty[:5])
    return annotated.drop(columns=empty)
