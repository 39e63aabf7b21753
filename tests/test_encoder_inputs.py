"""What an external encoder is given, on crafted fields (tile positions, the DNA foreground filter, camera units,
nuclei), and precomputed embeddings (checked against the run's wells, aggregated as our own, round trip)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from paintbench.paths import illum_filename
from paintbench.precomputed import read_plate, well_profiles
from paintbench.registry import CHANNELS
from paintbench.vit.stream import Geometry, RawSource
from tests.helpers import CPJUMP1_CHANNELS

PLATE = "BR00117000"


def write_field(folder, well: str, dna: np.ndarray, other: float = 500.0) -> None:
    """One field (site 1) of `well` in CPJUMP1's Phenix file names: the DNA image given, the others flat."""
    row, column = ord(well[0]) - 64, int(well[1:])
    for name, number in CPJUMP1_CHANNELS.items():
        image = dna if name == "DNA" else np.full_like(dna, other)
        tifffile.imwrite(folder / f"r{row:02d}c{column:02d}f01p01-ch{number}sk1fk1fl1.tiff", image.astype(np.uint16))


@pytest.fixture()
def crafted(tmp_path):
    """100 x 100 px fields (tiles of 32: a 3 x 3 grid from the corner, 4 px left over) with flat illumination.
    A01: one nucleus (a bright Gaussian) inside the top-middle tile over a noisy background; A02: no DNA signal at
    all; A03: two nuclei."""
    from paintbench.loaddata import load_data_table

    images, illum = tmp_path / "images", tmp_path / "illum"
    images.mkdir()
    illum.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:100, :100]

    def background() -> np.ndarray:
        return 300.0 + rng.normal(0, 20, (100, 100))

    def nucleus(cy: float, cx: float) -> np.ndarray:
        return 30000.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 5.0**2))

    write_field(images, "A01", background() + nucleus(16, 48))  # inside tile (row 0, column 1): columns 32-63
    write_field(images, "A02", np.full((100, 100), 300.0))
    write_field(images, "A03", background() + nucleus(16, 16) + nucleus(80, 80))  # tiles (0, 0) and (2, 2)
    for name in CHANNELS:
        np.save(illum / illum_filename(PLATE, name), np.ones((100, 100), np.float32))
    load_data = load_data_table(PLATE, images, ["A01", "A02", "A03"], [1], CPJUMP1_CHANNELS)
    return load_data, illum


def crops_of(load_data, illum, geometry: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    source = RawSource(load_data, illum, PLATE, geometry)
    batches = list(source.batches(batch_size=1000, num_workers=0))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def test_tiles_from_the_corner_in_camera_units(crafted):
    load_data, illum = crafted
    crops, fields = crops_of(load_data, illum, Geometry("tiles", 32))
    assert crops.dtype == torch.float32 and crops.shape == (27, 5, 32, 32)  # 9 tiles per field, remainder dropped
    first = crops[fields == 0]
    dna = CHANNELS.index("DNA")
    # tile 1 (row 0, column 1: field columns 32-63) holds the nucleus at (16, 48): its centre pixel is the tile's
    assert first[1, dna, 16, 16] > 29000 and first[1, dna].argmax() == 16 * 32 + 16
    assert first[0, dna].max() < 1000 and first[8, dna].max() < 1000
    assert (crops[:, CHANNELS.index("Mito")] == 500.0).all()  # divided by flat illumination: camera units kept


def test_foreground_filter_keeps_tiles_with_dna_and_the_middle_tile_of_an_empty_field(crafted):
    load_data, illum = crafted
    geometry = Geometry("tiles", 32, (("fraction", 0.01), ("otsu_factor", 0.7)))
    crops, fields = crops_of(load_data, illum, geometry)
    counts = np.bincount(fields.numpy(), minlength=3)
    assert counts[0] == 1 and crops[fields == 0][0, CHANNELS.index("DNA")].max() > 29000  # only the nucleus' tile
    assert counts[1] == 1  # no foreground anywhere: the middle tile (index 4 of 9), never an empty field
    empty = crops[fields == 1][0, CHANNELS.index("DNA")]
    assert torch.equal(empty, torch.full((32, 32), 300.0))
    assert counts[2] == 2  # the two nuclei sit in tiles (0, 0) and (2, 2); the other seven are background


def test_nuclei_crops_are_centred_on_the_nuclei(crafted):
    load_data, illum = crafted
    crops, fields = crops_of(load_data, illum, Geometry("nuclei", 24))
    nuclei = crops[fields == 2][:, CHANNELS.index("DNA")]
    assert len(nuclei) == 2
    for crop in nuclei:
        assert crop[12, 12] > 29000 and crop[0, 0] < 1000


# ------------------------------------------------------------------------------------------------ precomputed
def cell_table(seed: int = 0) -> pd.DataFrame:
    """Per-cell rows: 3 wells x 2 sites x a few cells, 4 features."""
    rng = np.random.default_rng(seed)
    rows = []
    for well in ("A01", "A02", "B07"):
        for site in (1, 2):
            for _ in range(int(rng.integers(1, 5))):
                rows.append({"Metadata_Plate": PLATE, "Metadata_Well": well, "Metadata_Site": site, "Metadata_Cell": 1,
                             **{f"dim_{j}": rng.normal() for j in range(4)}})
    return pd.DataFrame(rows)


def test_cells_become_wells_as_our_embeddings_do():
    cells = cell_table()
    wells = well_profiles(cells, PLATE, ["A01", "A02", "B07"], {"A01", "A02", "B07", "C01"})
    features = [f"dim_{j}" for j in range(4)]
    expected = cells.groupby(["Metadata_Well", "Metadata_Site"])[features].mean().groupby(level=0).mean()
    np.testing.assert_allclose(wells.set_index("Metadata_Well")[features].to_numpy(), expected.to_numpy(), rtol=1e-6)
    assert wells["Metadata_Object_Count"].tolist() == cells.groupby("Metadata_Well").size().tolist()
    assert (wells["Metadata_Field_Count"] == 2).all()
    assert list(wells.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Object_Count", "Metadata_Field_Count",
                                   *features]  # Metadata_Cell and Metadata_Site are not features


def test_precomputed_tables_are_checked_against_the_run(tmp_path, caplog):
    cells = cell_table()
    with pytest.raises(ValueError, match=r"mine.parquet: plate BR00117000: 1 well\(s\) of the run have no row: C01"):
        well_profiles(cells, PLATE, ["A01", "C01"], {"A01", "A02", "B07", "C01"}, source="mine.parquet")
    with pytest.raises(ValueError, match=r"plate BR00117000: well\(s\) not on the plate's platemap: B07"):
        well_profiles(cells, PLATE, ["A01"], {"A01", "A02"}, source="mine.parquet")
    with caplog.at_level("INFO"):
        kept = well_profiles(cells, PLATE, ["A01"], {"A01", "A02", "B07"})
    assert kept["Metadata_Well"].tolist() == ["A01"] and "2 well(s) the run does not select left out" in caplog.text
    path = tmp_path / "mine.parquet"
    cells.to_parquet(path)
    with pytest.raises(ValueError, match=r"mine.parquet: no row of plate BR00116991"):
        read_plate(path, "BR00116991")
    cells.drop(columns="Metadata_Well").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: no Metadata_Well column"):
        read_plate(tmp_path / "bad.csv", PLATE)
    with pytest.raises(ValueError, match=r"no numeric feature column"):
        well_profiles(cells[["Metadata_Plate", "Metadata_Well"]], PLATE, ["A01"], {"A01"})
