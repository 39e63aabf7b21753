"""Streaming well aggregation against independent references (pandas groupby, pycytominer)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pycytominer import aggregate as pycytominer_aggregate

from paintbench.aggregate import COUNT_COLUMN, feature_columns, well_profiles

STRATA = ["Metadata_Plate", "Metadata_Well"]
FEATURES = ["Cells_AreaShape_Area", "Nuclei_Intensity_MeanIntensity_CorrDNA", "Cytoplasm_Texture_X", "Cells_Sparse"]


def single_cells(seed: int = 0, wells: int = 12, plates: tuple[str, ...] = ("P1", "P2")) -> pd.DataFrame:
    """Cells grouped by (plate, well), uneven well sizes (even and odd counts), with NaN cases:
    scattered NaN everywhere, a feature all-NaN in one well, one well of a single cell."""
    rng = np.random.default_rng(seed)
    frames = []
    for plate in plates:
        for w in range(wells):
            n = 1 if w == 3 else int(rng.integers(2, 40))
            frame = pd.DataFrame(
                {
                    "Metadata_Plate": plate,
                    "Metadata_Well": f"{'ABCDEFGH'[w % 8]}{w // 8 + 1:02d}",
                    "Metadata_Site": rng.integers(1, 10, n),
                    "Metadata_ObjectNumber": np.arange(1, n + 1),
                }
            )
            for f in FEATURES:
                # float32 like CellProfiler output; rounding creates ties, which medians must handle
                frame[f] = np.round(rng.normal(w, 3, n), 1).astype(np.float32)
            frame.loc[rng.random(n) < 0.15, "Cells_Sparse"] = np.nan
            if w == 5:
                frame["Cytoplasm_Texture_X"] = np.nan
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_shards(frame: pd.DataFrame, folder: Path, shards: int, row_group_size: int = 1000) -> list[Path]:
    """Split at well boundaries into `shards` files (a well never straddles a file)."""
    wells = frame.groupby(STRATA, sort=False).ngroup().to_numpy()
    cuts = np.array_split(np.unique(wells), shards)
    paths = []
    for i, ids in enumerate(cuts):
        path = folder / f"shard{i}.parquet"
        pq.write_table(pa.Table.from_pandas(frame[np.isin(wells, ids)], preserve_index=False), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def pandas_reference(frame: pd.DataFrame, operation: str) -> pd.DataFrame:
    grouped = frame.astype({f: "float64" for f in FEATURES}).groupby(STRATA)
    reference = getattr(grouped[FEATURES], operation)()
    reference.insert(0, COUNT_COLUMN, grouped.size())
    return reference.reset_index()


def assert_same(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    reference = reference.sort_values(STRATA, ignore_index=True)
    assert list(ours.columns) == [*STRATA, COUNT_COLUMN, *FEATURES]
    assert ours[STRATA].astype(str).equals(reference[STRATA].astype(str))
    assert np.array_equal(ours[COUNT_COLUMN].to_numpy(), reference[COUNT_COLUMN].to_numpy())
    np.testing.assert_allclose(ours[FEATURES].to_numpy(), reference[FEATURES].to_numpy(np.float64), rtol=1e-9, atol=1e-9)
    assert (ours[FEATURES].dtypes == np.float64).all()


@pytest.mark.parametrize("operation", ["median", "mean"])
@pytest.mark.parametrize("shards,batch_rows", [(1, 65536), (3, 7), (5, 1)])
def test_matches_pandas_groupby(tmp_path: Path, operation: str, shards: int, batch_rows: int) -> None:
    # batch_rows 7 and 1: wells straddle batches and row groups; 3-5 shards: several files
    frame = single_cells()
    paths = write_shards(frame, tmp_path, shards, row_group_size=11)
    ours = well_profiles(paths, tmp_path / "wells.parquet", operation=operation, batch_rows=batch_rows)
    assert_same(ours, pandas_reference(frame, operation))
    assert_same(pd.read_parquet(tmp_path / "wells.parquet"), pandas_reference(frame, operation))


@pytest.mark.parametrize("operation", ["median", "mean"])
def test_matches_pycytominer(tmp_path: Path, operation: str) -> None:
    frame = single_cells(seed=1)
    reference = pycytominer_aggregate(
        frame, strata=STRATA, features="infer", operation=operation,
        compute_object_count=True, object_feature="Metadata_ObjectNumber",
    )
    ours = well_profiles(write_shards(frame, tmp_path, 2), tmp_path / "wells.parquet", operation=operation, batch_rows=16)
    assert_same(ours, reference[[*STRATA, COUNT_COLUMN, *FEATURES]])


def test_nan_semantics(tmp_path: Path) -> None:
    frame = single_cells()
    ours = well_profiles(write_shards(frame, tmp_path, 1), tmp_path / "wells.parquet")
    well5 = ours["Metadata_Well"] == "F01"
    assert ours.loc[well5, "Cytoplasm_Texture_X"].isna().all()  # all-NaN in the well stays NaN
    assert ours.loc[~well5, "Cytoplasm_Texture_X"].notna().all()
    assert ours["Cells_Sparse"].notna().sum() >= len(ours) - 2  # scattered NaN are skipped, not propagated
    single = frame[(frame["Metadata_Plate"] == "P1") & (frame["Metadata_Well"] == "D01")]
    row = ours[(ours["Metadata_Plate"] == "P1") & (ours["Metadata_Well"] == "D01")]
    assert int(row[COUNT_COLUMN].iloc[0]) == 1
    assert row["Cells_AreaShape_Area"].iloc[0] == pytest.approx(float(single["Cells_AreaShape_Area"].iloc[0]))


def test_parquet_nulls_count_as_missing(tmp_path: Path) -> None:
    # Arrow nulls (not NaN) in float and int columns: ignored like NaN
    table = pa.table({
        "Metadata_Plate": ["P"] * 4, "Metadata_Well": ["A01"] * 4,
        "Cells_F": pa.array([1.0, None, 3.0, 10.0], pa.float32()),
        "Cells_I": pa.array([1, 2, None, None], pa.int32()),
    })
    pq.write_table(table, tmp_path / "s.parquet")
    ours = well_profiles([tmp_path / "s.parquet"], tmp_path / "w.parquet")
    assert ours["Cells_F"].iloc[0] == 3.0 and ours["Cells_I"].iloc[0] == 1.5 and ours[COUNT_COLUMN].iloc[0] == 4


def test_feature_columns_drop_metadata_text_and_bookkeeping(caplog: pytest.LogCaptureFixture) -> None:
    schema = pa.schema([
        ("Metadata_Well", pa.string()), ("Metadata_Site", pa.int64()), ("ImageNumber", pa.int64()),
        ("Cells_A", pa.float32()), ("emb_0000", pa.float32()), ("Cells_N", pa.int64()),
        ("FileName_OrigDNA", pa.string()), ("Cells_Flag", pa.bool_()),
    ])
    with caplog.at_level(logging.INFO, logger="paintbench.aggregate"):
        assert feature_columns(schema) == ["Cells_A", "emb_0000", "Cells_N"]
    assert "FileName_OrigDNA" in caplog.text and "Cells_Flag" in caplog.text


def test_well_straddling_two_files_is_one_well(tmp_path: Path) -> None:
    frame = single_cells(wells=3, plates=("P1",))
    half = len(frame) - 5  # the last well's rows split between the two files, still consecutive
    pq.write_table(pa.Table.from_pandas(frame.iloc[:half], preserve_index=False), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[half:], preserve_index=False), tmp_path / "b.parquet")
    ours = well_profiles([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "w.parquet", batch_rows=4)
    assert_same(ours, pandas_reference(frame, "median"))


@pytest.mark.parametrize("across_files", [False, True])
def test_non_consecutive_well_raises_and_writes_nothing(tmp_path: Path, across_files: bool) -> None:
    frame = single_cells(wells=4, plates=("P1",))
    first_well = frame["Metadata_Well"] == "A01"
    # A01's first cell moved after the other wells: A01 now appears twice
    scrambled = pd.concat([frame[first_well].iloc[1:], frame[~first_well], frame[first_well].iloc[:1]], ignore_index=True)
    if across_files:
        paths = write_shards(scrambled.iloc[:-1], tmp_path, 1) + [tmp_path / "late.parquet"]
        pq.write_table(pa.Table.from_pandas(scrambled.iloc[-1:], preserve_index=False), paths[-1])
    else:
        paths = write_shards(scrambled, tmp_path, 1)
    output = tmp_path / "out" / "wells.parquet"
    with pytest.raises(ValueError, match=r"'Metadata_Well': 'A01'.*reappears.*consecutive") as error:
        well_profiles(paths, output, batch_rows=5)
    assert str(paths[-1]) in str(error.value)
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_output_atomic_no_temp_left(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    paths = write_shards(single_cells(), tmp_path / "in", 2)
    output = tmp_path / "out" / "wells.parquet"
    well_profiles(paths, output)
    assert output.exists()
    assert [p.name for p in output.parent.iterdir()] == ["wells.parquet"]


def test_failure_midway_leaves_previous_output_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import paintbench.aggregate as aggregate_module

    paths = write_shards(single_cells(), tmp_path, 1)
    output = tmp_path / "wells.parquet"
    calls = {"n": 0}
    real = aggregate_module._reduce

    def failing_reduce(chunks, operation):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed midway")
        return real(chunks, operation)

    monkeypatch.setattr(aggregate_module, "_reduce", failing_reduce)
    with pytest.raises(RuntimeError, match="midway"):
        well_profiles(paths, output)
    assert not output.exists() and not list(tmp_path.glob(".tmp-*"))


def test_mismatched_feature_columns_and_bad_operation(tmp_path: Path) -> None:
    frame = single_cells(wells=2, plates=("P1",))
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.drop(columns="Cells_Sparse"), preserve_index=False), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"b\.parquet: feature columns differ.*Cells_Sparse"):
        well_profiles([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "w.parquet")
    with pytest.raises(ValueError, match="operation"):
        well_profiles([tmp_path / "a.parquet"], tmp_path / "w.parquet", operation="max")
    with pytest.raises(ValueError, match="grouping column"):
        well_profiles([tmp_path / "a.parquet"], tmp_path / "w.parquet", group_by=("Metadata_Plate", "Metadata_Col"))
