"""The CellProfiler branch with real, headless CellProfiler 5: a real field, synthetic plates, bad fields."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from paintbench import CHANNELS
from paintbench.aggregate import well_profiles
from paintbench.cellprofiler import run_shard
from paintbench.paths import illum_filename
from paintbench.images import BadFieldError
from paintbench.loaddata import load_data_table
from tests.helpers import REAL_CHANNELS, REAL_SITE, REPO, synthetic_crispr_plate

CELLPROFILER = str(REPO / ".venvs" / "cellprofiler" / "bin" / "cellprofiler")
ANALYSIS = REPO / "config" / "cellprofiler" / "analysis.cppipe"
DEMO_ANALYSIS = REPO / "config" / "cellprofiler" / "analysis_demo.cppipe"
FAMILIES = ("AreaShape", "Intensity", "Texture", "Granularity", "Correlation", "RadialDistribution")
PLATE = "BR00117000"


def reference_nuclei_count(outlines_path) -> int:
    """Nuclei outlined by the consortium's CellProfiler run, wholly inside the crop (closed outlines, filled)."""
    outlines = tifffile.imread(outlines_path).max(axis=-1) > 0
    filled = ndimage.binary_fill_holes(outlines) & ~outlines
    labels, n = ndimage.label(filled)
    touching = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    sizes = ndimage.sum(filled, labels, range(1, n + 1))
    return sum(1 for i, size in enumerate(sizes, start=1) if size >= 30 and i not in touching)


def flat_illum(folder, plate: str, shape) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for channel in CHANNELS:
        np.save(folder / illum_filename(plate, channel), np.ones(shape, dtype=np.float32))


@pytest.mark.slow
def test_real_field_segmentation_and_feature_families(tmp_path):
    load_data = load_data_table("BR00143976", REAL_SITE, ["C03"], [3], REAL_CHANNELS)
    flat_illum(tmp_path / "illum", "BR00143976", (540, 540))
    cells = run_shard(load_data, ["C03"], tmp_path / "illum", CELLPROFILER, ANALYSIS,
                      tmp_path / "cells.parquet", tmp_path / "qc.parquet")
    reference = reference_nuclei_count(REAL_SITE / "NucleiOutlines_BR00143976_C03_3.tiff")
    found = cells["Metadata_ObjectNumber"].nunique()
    # Both runs discard nuclei touching the border; 15% allows for CellProfiler 4 -> 5 threshold differences.
    assert reference >= 8 and abs(found - reference) <= max(1, round(0.15 * reference)), (found, reference)
    assert cells[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].drop_duplicates().values.tolist() == [["BR00143976", "C03", 3]]
    for compartment in ("Nuclei", "Cells", "Cytoplasm"):
        for family in FAMILIES:
            assert any(c.startswith(f"{compartment}_{family}_") for c in cells.columns), (compartment, family)
    assert any(c.startswith("Nuclei_Neighbors_") for c in cells.columns)
    assert any(c.startswith("Cells_Neighbors_") for c in cells.columns)
    assert len(cells.columns) > 2000


@pytest.fixture(scope="module")
def synthetic_plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    wells, fields, load_data = synthetic_crispr_plate(folder, PLATE, 4, [1], field_size=256, cells_per_field=16)
    return folder, wells, fields, load_data


@pytest.mark.slow
def test_synthetic_nuclei_counts_and_skipped_field(synthetic_plate, tmp_path):
    folder, wells, fields, load_data = synthetic_plate
    broken = load_data.copy()
    bad = broken.index[-1]
    truncated = tmp_path / broken.loc[bad, "FileName_OrigMito"]
    truncated.write_bytes((folder / "images" / truncated.name).read_bytes()[:1000])
    broken.loc[bad, "PathName_OrigMito"] = str(tmp_path)

    cells = run_shard(broken, wells, folder / "illum", CELLPROFILER, DEMO_ANALYSIS, tmp_path / "cells.parquet",
                      tmp_path / "qc.parquet", skip_bad_fields=True)
    qc = pd.read_parquet(tmp_path / "qc.parquet")
    assert qc[["Metadata_Well", "Metadata_Site"]].values.tolist() == [[broken.loc[bad, "Metadata_Well"], 1]]
    assert str(truncated) in qc.loc[0, "reason"]

    found = cells.groupby("Metadata_Well")["Metadata_ObjectNumber"].nunique()
    expected = fields.set_index("Metadata_Well")["n_cells"]
    assert set(found.index) == set(wells) - {broken.loc[bad, "Metadata_Well"]}
    for well, count in found.items():
        assert abs(count - expected[well]) <= max(1, round(0.1 * expected[well])), (well, count, expected[well])

    profiles = well_profiles([tmp_path / "cells.parquet"], tmp_path / "wells.parquet")
    assert profiles["Metadata_Well"].tolist() == sorted(found.index)
    assert profiles["Metadata_Object_Count"].tolist() == found.sort_index().tolist()
    features = [c for c in profiles.columns if not c.startswith("Metadata_")]
    assert not profiles[features].isna().all().any()


def test_truncated_field_fails_the_shard_naming_it(synthetic_plate, tmp_path):
    folder, wells, _, load_data = synthetic_plate
    broken = load_data.copy()
    truncated = tmp_path / broken.loc[0, "FileName_OrigER"]
    truncated.write_bytes((folder / "images" / truncated.name).read_bytes()[:500])
    broken.loc[0, "PathName_OrigER"] = str(tmp_path)
    with pytest.raises(BadFieldError) as error:
        run_shard(broken, wells, folder / "illum", CELLPROFILER, DEMO_ANALYSIS, tmp_path / "c.parquet", tmp_path / "q.parquet")
    assert f"plate {PLATE}, well {wells[0]}, site 1" in str(error.value) and str(truncated) in str(error.value)
    assert not (tmp_path / "c.parquet").exists() and not (tmp_path / "q.parquet").exists()


def test_missing_channel_fails_the_shard_naming_it(synthetic_plate, tmp_path):
    folder, wells, _, load_data = synthetic_plate
    broken = load_data.copy()
    broken.loc[1, "PathName_OrigAGP"] = str(tmp_path / "nowhere")
    with pytest.raises(BadFieldError, match=rf"plate {PLATE}, well {wells[1]}, site 1: missing file .*nowhere"):
        run_shard(broken, wells, folder / "illum", CELLPROFILER, DEMO_ANALYSIS, tmp_path / "c.parquet", tmp_path / "q.parquet")


@pytest.mark.parametrize(("n_wells", "per_shard", "sizes"), [(12, 10, [6, 6]), (19, 10, [10, 9]), (384, 16, [16] * 24), (3, 16, [3])])
def test_shards_are_even_and_cover_every_well_once(n_wells, per_shard, sizes):
    from paintbench.cellprofiler import shard_wells

    wells = [f"W{i}" for i in range(n_wells)]
    shards = shard_wells(wells, per_shard)
    assert [len(s) for s in shards] == sizes
    assert [w for shard in shards for w in shard] == wells
