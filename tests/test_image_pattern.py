"""Your own plates: file names as a regular expression (config key image_pattern) and 96-well plates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from paintbench.cli import main as paintbench
from paintbench.config import ConfigError, load_config
from paintbench.s3 import RemoteObject, select_objects
from paintbench.image_pattern import DEFAULT_IMAGE_PATTERN, ImagePatternError, index_image_folder
from paintbench.layout import image_filename
from paintbench.metadata import MetadataError, plate_info
from tests.helpers import CPJUMP1_CHANNELS, REPO, snakemake

IMAGEXPRESS = r"^(?P<plate>[^_]+)_(?P<well>[A-P]\d{2})_s(?P<site>\d+)_w(?P<channel>\d)\.tif$"
PLATE96 = "MYPLATE01"  # the worked example of docs/usage.md
PLATEMAP96 = "pilot_compound_platemap"
# Two compounds and two DMSO wells, one of them in the 96-well plate's last corner.
WELLS96 = {"A01": "BRD-X0001", "A02": "BRD-X0002", "B01": "", "H12": ""}
CHANNEL_ARG = ",".join(f"{k}={v}" for k, v in CPJUMP1_CHANNELS.items())


def imagexpress_name(plate: str, well: str, site: int, channel: int) -> str:
    return f"{plate}_{well}_s{site}_w{channel}.tif"


def user_metadata(folder: Path, plate_format: str = "", sites: str = "2", wells: dict[str, str] = WELLS96) -> Path:
    """config/metadata plus a 96-well compound plate: its experiment-metadata row, platemap and library."""
    shutil.copytree(REPO / "config" / "metadata", folder)
    plates = pd.read_csv(folder / "experiment-metadata.tsv", sep="\t", dtype=str, keep_default_na=False)
    row = {column: "" for column in plates.columns}
    row.update(Batch="2026_11_pilot", Plate_Map_Name=PLATEMAP96, Assay_Plate_Barcode=PLATE96, Perturbation="compound",
               Cell_type="U2OS", Time="24", Plate_format=plate_format, Sites_per_well=sites)
    plates = pd.concat([plates.assign(Plate_format="", Sites_per_well=""), pd.DataFrame([row])])
    plates.to_csv(folder / "experiment-metadata.tsv", sep="\t", index=False)
    jump = folder / "jump_target"
    pd.DataFrame({"well_position": list(wells), "broad_sample": list(wells.values())}).to_csv(
        jump / f"{PLATEMAP96}.tsv", sep="\t", index=False)
    pd.DataFrame({"broad_sample": ["BRD-X0001", "BRD-X0002", ""], "pert_iname": ["cmpd-1", "cmpd-2", "DMSO"],
                  "pert_type": ["trt", "trt", "control"], "control_type": ["", "", "negcon"],
                  "target_list": ["EZH2", "PLK1", ""]}).to_csv(
        jump / f"{PLATEMAP96.replace('_platemap', '_metadata')}.tsv", sep="\t", index=False)
    return folder


def synthetic_images(folder: Path, metadata: Path, wells: list[str], sites: list[int], field_size: int = 96) -> Path:
    """Phenix-named synthetic fields of PLATE96 (the generator's own layout)."""
    from paintbench.synthetic import generate_plate, ground_truth

    truth = ground_truth([PLATEMAP96], seed=3, strong_fraction=0.5, null_fraction=0.0, metadata_dir=metadata)
    generate_plate(PLATE96, wells, sites, CPJUMP1_CHANNELS, truth, folder, field_size=field_size, cells_per_field=12,
                   seed=3, metadata_dir=metadata)
    return folder


def as_imagexpress(phenix: Path, out: Path, wells: list[str], sites: list[int]) -> Path:
    """The same files under ImageXpress names, plus a thumbnail and another plate's file that must be ignored."""
    out.mkdir()
    for well in wells:
        for site in sites:
            for channel in CPJUMP1_CHANNELS.values():
                shutil.copy(phenix / image_filename(well, site, channel), out / imagexpress_name(PLATE96, well, site, channel))
    shutil.copy(out / imagexpress_name(PLATE96, wells[0], 1, 1), out / f"{PLATE96}_{wells[0]}_s1_w1_thumb.tif")
    shutil.copy(out / imagexpress_name(PLATE96, wells[0], 1, 1), out / imagexpress_name("OTHERPLATE", "C03", 1, 1))
    (out / "acquisition.htd").write_text("not an image")
    return out


def download(image_dir: Path, metadata: Path, output: Path, pattern: str | None, wells: list[str],
             sites: str = "all", *extra: str) -> int:
    args = ["download", "--source", "local", "--plate", PLATE96, "--wells", ",".join(wells), "--sites", sites,
            "--channels", CHANNEL_ARG, "--image-dir", str(image_dir), "--metadata-dir", str(metadata),
            "--output", str(output), "--qc-output", str(output.with_suffix(".qc.tsv"))]
    return paintbench(args + (["--image-pattern", pattern] if pattern else []) + list(extra))


def test_phenix_and_imagexpress_names_give_the_same_load_data(tmp_path):
    metadata = user_metadata(tmp_path / "metadata")
    wells, sites = ["A01", "H12"], [1, 2]
    phenix = synthetic_images(tmp_path / "phenix", metadata, wells, sites)
    imagexpress = as_imagexpress(phenix, tmp_path / "imagexpress", wells, sites)
    assert download(phenix, metadata, tmp_path / "phenix.csv", None, wells) == 0
    assert download(imagexpress, metadata, tmp_path / "ixm.csv", IMAGEXPRESS, wells) == 0
    a, b = pd.read_csv(tmp_path / "phenix.csv"), pd.read_csv(tmp_path / "ixm.csv")
    meta = ["Metadata_Plate", "Metadata_Well", "Metadata_Site"]
    assert a[meta].values.tolist() == b[meta].values.tolist() == [[PLATE96, w, s] for w in wells for s in sites]
    assert b.loc[0, "FileName_OrigDNA"] == "MYPLATE01_A01_s1_w5.tif" and b.loc[0, "PathName_OrigDNA"] == str(imagexpress.resolve())
    for name in CPJUMP1_CHANNELS:  # the same image behind every cell of both tables
        for (_, x), (_, y) in zip(a.iterrows(), b.iterrows()):
            first = Path(x[f"PathName_Orig{name}"]) / x[f"FileName_Orig{name}"]
            second = Path(y[f"PathName_Orig{name}"]) / y[f"FileName_Orig{name}"]
            assert first.read_bytes() == second.read_bytes()


def test_a_missing_channel_is_recorded_and_its_field_left_out(tmp_path):
    metadata = user_metadata(tmp_path / "metadata")
    wells, sites = ["A01", "H12"], [1, 2]
    images = as_imagexpress(synthetic_images(tmp_path / "phenix", metadata, wells, sites), tmp_path / "ixm", wells, sites)
    (images / imagexpress_name(PLATE96, "H12", 2, 3)).unlink()
    output = tmp_path / "load_data.csv"
    assert download(images, metadata, output, IMAGEXPRESS, wells, "all", "--max-missing-fraction", "0.5") == 0
    table = pd.read_csv(output)
    assert ("H12", 2) not in set(zip(table["Metadata_Well"], table["Metadata_Site"])) and len(table) == 3
    qc = pd.read_csv(output.with_suffix(".qc.tsv"), sep="\t")
    assert qc[["Metadata_Well", "Metadata_Site", "channel"]].values.tolist() == [["H12", 2, "RNA"]]


def test_a_file_that_matches_nothing_names_the_file_and_the_pattern(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("MYPLATE01_A01_s1_w1.tif", "MYPLATE01_A01_s1_w2.TIF", "MYPLATE01-A01-s1-w3.tiff"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ImagePatternError) as error:
        index_image_folder(folder, IMAGEXPRESS, PLATE96)
    message = str(error.value)
    assert "MYPLATE01-A01-s1-w3.tiff" in message and IMAGEXPRESS in message and "image_pattern" in message
    # Through the command line: it fails and writes no LoadData table.
    output = tmp_path / "load_data.csv"
    assert download(folder, user_metadata(tmp_path / "metadata"), output, IMAGEXPRESS, ["A01"], "1") == 3
    assert not output.exists()


def test_two_files_of_one_field_channel_are_an_error_naming_both(tmp_path):
    (tmp_path / "MYPLATE01_A01_s1_w1.tif").write_bytes(b"")
    (tmp_path / "MYPLATE01_A1_s1_w1.tif").write_bytes(b"")
    with pytest.raises(ImagePatternError, match="MYPLATE01_A01_s1_w1.tif and .*MYPLATE01_A1_s1_w1.tif"):
        index_image_folder(tmp_path, IMAGEXPRESS.replace(r"\d{2}", r"\d{1,2}"), PLATE96)


def test_row_and_column_groups_and_planes(tmp_path):
    pattern = r"^(?P<row>[a-p])_(?P<column>\d+)_f(?P<site>\d+)_p(?P<plane>\d+)_c(?P<channel>\d+)\.tiff$"
    for name in ("c_3_f1_p1_c5.tiff", "c_3_f1_p2_c5.tiff", "p_24_f9_p1_c1.tiff"):
        (tmp_path / name).write_bytes(b"")
    assert index_image_folder(tmp_path, pattern, "any") == {("C03", 1, 5): "c_3_f1_p1_c5.tiff",
                                                            ("P24", 9, 1): "p_24_f9_p1_c1.tiff"}


def test_s3_keys_are_read_with_the_pattern(tmp_path):
    prefix = "x/Images/"
    keys = [imagexpress_name(PLATE96, "A01", 1, c) for c in (1, 2)] + [imagexpress_name("OTHER", "A01", 1, 1), "Index.xml"]
    objects = [RemoteObject(prefix + key, 10) for key in keys]
    selected = select_objects(objects, prefix, ["A01"], [1], [1, 2], tmp_path, PLATE96, IMAGEXPRESS)
    assert {key: name for key, (name, _) in selected.items()} == {("A01", 1, 1): "MYPLATE01_A01_s1_w1.tif",
                                                                  ("A01", 1, 2): "MYPLATE01_A01_s1_w2.tif"}


@pytest.mark.parametrize(("pattern", "problem"), [
    (r"^(?P<well>[A-P]\d{2})_w(?P<channel>\d)\.tif$", "lacks the named group(s) site"),
    (r"^(?P<row>[A-P])_s(?P<site>\d+)_w(?P<channel>\d)\.tif$", "well (or row and column)"),
    (r"^(?P<well>[A-P]\d{2}_s(?P<site>\d+)_w(?P<channel>\d)\.tif$", "not a regular expression"),
])
def test_config_rejects_a_pattern_without_the_groups_a_field_needs(pattern, problem):
    with pytest.raises(ConfigError, match="config key 'image_pattern'") as error:
        load_config(REPO / "config" / "demo.yaml", {"source": "local", "image_pattern": pattern})
    assert problem in str(error.value)


def test_config_synthetic_source_needs_the_default_pattern():
    with pytest.raises(ConfigError, match="config key 'image_pattern': source: synthetic"):
        load_config(REPO / "config" / "demo.yaml", {"image_pattern": IMAGEXPRESS})
    assert load_config(REPO / "config" / "demo.yaml")["image_pattern"] == DEFAULT_IMAGE_PATTERN
    # (preflight off: no local images exist for this key check)
    assert load_config(REPO / "config" / "demo.yaml", {"source": "local", "image_pattern": IMAGEXPRESS}, preflight=False)


def test_one_folder_for_several_plates_needs_a_plate_group():
    shared = {"source": "local", "local": {"image_dir": "/images/all_plates"}}
    with pytest.raises(ConfigError, match="config key 'local.image_dir': must contain '{plate}'.*plate>"):
        load_config(REPO / "config" / "demo.yaml", shared)
    config = load_config(REPO / "config" / "demo.yaml", {**shared, "image_pattern": IMAGEXPRESS}, preflight=False)
    assert config["local"]["image_dir"] == "/images/all_plates" and len(config["plates"]) == 8


def test_plate_format_and_sites_from_the_metadata(tmp_path):
    inferred = plate_info(PLATE96, user_metadata(tmp_path / "a"))
    assert (inferred.format, inferred.sites_per_well) == (96, 2)
    assert plate_info(PLATE96, user_metadata(tmp_path / "b", plate_format="384", sites="")).format == 384
    assert plate_info("BR00116991").format == 384  # CPJUMP1: inferred from its platemap, unchanged
    wider = user_metadata(tmp_path / "c", wells={**WELLS96, "I13": ""})
    assert plate_info(PLATE96, wider).format == 384  # a well beyond H12 makes the platemap a 384-well one


def test_a_96_well_platemap_with_a_well_outside_the_format_names_file_and_well(tmp_path):
    metadata = user_metadata(tmp_path / "metadata", plate_format="96", wells={**WELLS96, "I13": ""})
    with pytest.raises(MetadataError) as error:
        plate_info(PLATE96, metadata)
    assert f"{PLATEMAP96}.tsv" in str(error.value) and "'I13'" in str(error.value) and "96-well" in str(error.value)
    with pytest.raises(ConfigError, match="config key 'plates'.*I13"):
        load_config(REPO / "config" / "demo.yaml", {"source": "local", "plates": [PLATE96], "metadata_dir": str(metadata)})


def test_plate_heatmap_of_a_96_well_plate_is_8_by_12(tmp_path, monkeypatch):
    from paintbench.report import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem: drawn.append(
        [ax.images[0].get_array().shape for ax in fig.axes if ax.images]) or [])
    wells = pd.DataFrame({"Metadata_Plate": [PLATE96, PLATE96, "BR00116991"], "Metadata_Well": ["A01", "H12", "P24"],
                          "Metadata_Object_Count": [10.0, 20.0, 30.0]})
    figures.plate_heatmaps_figure(wells, tmp_path / "maps", "Metadata_Object_Count", "cells", {PLATE96: 96})
    assert drawn == [[(16, 24), (8, 12)]]  # BR00116991 (384), then PLATE96
    grid = figures.plate_grid(wells[wells["Metadata_Plate"] == PLATE96], "Metadata_Object_Count", 96)
    assert grid.shape == (8, 12) and grid[7, 11] == 20.0 and np.isnan(grid[0, 1])
    with pytest.raises(ValueError, match="'P24' is not a 96-well position"):
        figures.plate_grid(wells, "Metadata_Object_Count", 96)


@pytest.mark.slow
def test_a_96_well_plate_with_imagexpress_names_through_snakemake(tmp_path):
    """Your own 96-well plate, named ImageXpress-style, to CellProfiler well profiles."""
    metadata = user_metadata(tmp_path / "metadata")  # Plate_format left empty: inferred 96; Sites_per_well 2
    wells, sites = list(WELLS96), [1, 2]
    phenix = synthetic_images(tmp_path / "phenix", metadata, wells, sites, field_size=96)
    images = as_imagexpress(phenix, tmp_path / "user_images", wells, sites)
    shutil.rmtree(phenix)
    overrides = tmp_path / "overrides.yaml"  # a file, not --config: a regular expression is no command-line friend
    overrides.write_text(yaml.safe_dump({
        "source": "local", "plates": [PLATE96], "wells": "all", "sites": "all", "genes": None, "negcon_wells": None,
        "metadata_dir": str(metadata), "local": {"image_dir": str(images)}, "image_pattern": IMAGEXPRESS,
        "feature_sets": ["cellprofiler"], "results_dir": str(tmp_path / "results"),
    }))
    profiles = tmp_path / "results" / "profiles" / "cellprofiler" / f"{PLATE96}.parquet"
    snakemake([str(profiles), "--cores", "2", "--configfile", str(REPO / "config" / "demo.yaml"), str(overrides)],
              cwd=tmp_path)
    load_data = pd.read_csv(tmp_path / "results" / "load_data" / f"{PLATE96}.csv")
    assert sorted(zip(load_data["Metadata_Well"], load_data["Metadata_Site"])) == [(w, s) for w in sorted(wells) for s in sites]
    assert set(load_data["FileName_OrigDNA"]) == {imagexpress_name(PLATE96, w, s, 5) for w in wells for s in sites}
    table = pd.read_parquet(profiles)
    assert sorted(table["Metadata_Well"]) == sorted(wells) and (table["Metadata_Object_Count"] > 0).all()
    cells = pd.read_parquet(tmp_path / "results" / "cellprofiler" / PLATE96 / "single_cells.parquet",
                            columns=["Metadata_Well", "Metadata_Site"])
    assert cells.groupby("Metadata_Well")["Metadata_Site"].nunique().to_dict() == {w: 2 for w in wells}
    log = (tmp_path / "results" / "logs" / "download" / f"{PLATE96}.log").read_text()
    assert "--image-pattern" in log and "1 thumbnail or other derived TIFF(s)" in log
