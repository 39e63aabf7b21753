"""Paths and small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paintbench import schema

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def snakemake(args: list[str], cwd: Path, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real snakemake of the test environment on this repository's Snakefile, working in `cwd`."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


# CPJUMP1's channel map is the configuration's default (config key `channels`).
CPJUMP1_CHANNELS: dict[str, int] = schema.default("channels")
# The real JUMP field of tests/data (another dataset's channel order, brightfield on ch1).
REAL_SITE = DATA / "real_site_BR00143976_C03_f03"
REAL_CHANNELS = {"DNA": 5, "ER": 2, "RNA": 6, "AGP": 3, "Mito": 4}


LINCS_PLATE = DATA / "lincs_plate" / "SQ00015054_normalized_feature_select.csv.gz"  # a real LINCS plate
PERT, PLATE = "Metadata_broad_sample", "Metadata_Plate"


def replicate_ap(df, feats, query_mask=None):
    """Replicate retrieval's per-query APs on a table with a boolean `control` column: positives share the
    perturbation, negatives are the query plate's controls."""
    from paintbench.metrics import retrieval_ap

    control = df["control"].to_numpy()
    query = ~control if query_mask is None else query_mask
    return retrieval_ap(df, feats, query_mask=query, pos_same=[PERT], neg_mask=control, neg_same=[PLATE])


def synthetic_crispr_plate(folder: Path, plate: str, n_wells: int, sites: list[int], field_size: int,
                           cells_per_field: int):
    """A small synthetic CRISPR plate (HIF1A/ALDH2 guides + controls) with its LoadData table and illumination
    functions: (images' ground-truth field table, LoadData table). Shared by the branch tests."""
    from paintbench import CHANNELS
    from paintbench.illum import compute_plate_illum
    from paintbench.loaddata import load_data_table
    from paintbench.metadata import plate_layout, select_wells
    from paintbench.synthetic import generate_plate, ground_truth

    truth = ground_truth(["JUMP-Target-1_crispr_platemap"], seed=5, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(plate), "all", ["HIF1A", "ALDH2"], 2)[:n_wells]
    fields = generate_plate(plate, wells, sites, CPJUMP1_CHANNELS, truth, folder / "images", field_size=field_size,
                            cells_per_field=cells_per_field, seed=5)
    load_data = load_data_table(plate, folder / "images", wells, sites, CPJUMP1_CHANNELS)
    compute_plate_illum(load_data, folder / "illum", list(CHANNELS))
    return wells, fields, load_data
