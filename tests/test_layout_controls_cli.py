"""`paintbench layout-controls` on a real LINCS plate (one plate, replicates in varied well positions)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd

from tests.helpers import LINCS_PLATE


def test_layout_controls_command_on_a_real_plate(tmp_path):
    out = tmp_path / "controls.parquet"
    subprocess.run([sys.executable, "-m", "paintbench", "layout-controls", "--profiles", str(LINCS_PLATE),
                    "--control-col", "Metadata_broad_sample", "--control-value", "DMSO", "--labels-col", "Metadata_moa",
                    "--null-size", "2000", "--output", str(out)], check=True, capture_output=True, timeout=300)
    controls = pd.read_parquet(out).set_index("control")
    # One plate: no same-position pairs across plates and no plate to predict, each said so rather than scored.
    for control in ("same_position_controls", "plate_predictability"):
        assert controls.at[control, "n"] == 0 and "1 plate" in controls.at[control, "detail"]
    # LINCS replicates sit in different wells: the control scores all 58 compounds and retrieves most of them...
    assert controls.at["different_position_replicates", "n"] == 58
    assert controls.at["different_position_replicates", "fraction_retrieved"] > 0.4
    # ... while the same wells with shuffled labels (a null) retrieve none.
    assert controls.at["shuffled_replicates", "fraction_retrieved"] <= 0.05
