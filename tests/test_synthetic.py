"""The synthetic plate generator: planted ground truth, files, determinism, and that the planted
phenotypes are really in the pixels (measured with a plain Otsu segmentation, not the generator's
own bookkeeping)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage
from skimage.filters import threshold_otsu

from paintbench.layout import image_filename
from paintbench.metadata import plate_layout
from paintbench.synthetic import (
    EFFECT_COLUMNS,
    PARAMETERS,
    expected_cells,
    generate_plate,
    ground_truth,
    is_edge_well,
    plate_nuisance,
)
from paintbench.synthetic.phenotypes import MAGNITUDE
from tests.helpers import CPJUMP1_CHANNELS

PLATEMAPS = ["JUMP-Target-1_compound_platemap", "JUMP-Target-1_crispr_platemap", "JUMP-Target-1_orf_platemap"]
COMPOUND_PLATE = "BR00116991"  # JUMP-Target-1 compound plate
MIN_NUCLEUS_PX = 30  # below IdentifyPrimaryObjects' smallest typical diameter (10 px): specks, not nuclei


@pytest.fixture(scope="module")
def truth() -> pd.DataFrame:
    return ground_truth(PLATEMAPS, seed=0, strong_fraction=0.4, null_fraction=0.3)


def _effects(frame: pd.DataFrame) -> np.ndarray:
    return frame[EFFECT_COLUMNS].to_numpy(dtype=float)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _treated(truth: pd.DataFrame, modality: str) -> pd.DataFrame:
    return truth[(truth["Metadata_modality"] == modality) & (truth["effect_class"] != "negcon")]


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------


def test_truth_has_one_row_per_perturbation_and_all_columns(truth):
    assert not truth.duplicated(["Metadata_modality", "Metadata_broad_sample"]).any()
    assert set(truth["Metadata_modality"]) == {"compound", "crispr", "orf"}
    assert set(truth["effect_class"]) == {"negcon", "null", "weak", "strong"}
    assert len(PARAMETERS) >= 10 and all(f"effect_{p}" in truth for p in PARAMETERS)
    # every well of every platemap finds its row
    for platemap, plate in [(PLATEMAPS[0], COMPOUND_PLATE)]:
        layout = plate_layout(plate)
        assert layout["Metadata_broad_sample"].isin(truth["Metadata_broad_sample"]).all()


def test_controls_and_nulls_have_exactly_zero_effect(truth):
    still = truth[truth["effect_class"].isin(["negcon", "null"])]
    assert len(still) > 50
    assert np.all(_effects(still) == 0.0)
    assert (still["direction"] == "").all()
    assert (truth.loc[truth["Metadata_control_type"] == "negcon", "effect_class"] == "negcon").all()
    for klass, (low, high) in MAGNITUDE.items():
        norms = np.linalg.norm(_effects(truth[truth["effect_class"] == klass]), axis=1)
        assert np.all((norms >= low - 1e-9) & (norms <= high + 1e-9)), klass


def test_gene_classes_follow_the_requested_fractions(truth):
    genes = _treated(truth, "crispr").drop_duplicates("Metadata_gene")["effect_class"].value_counts(normalize=True)
    assert genes["strong"] == pytest.approx(0.4, abs=0.02)
    assert genes["null"] == pytest.approx(0.3, abs=0.02)


def test_crispr_guides_of_a_gene_share_one_direction(truth):
    crispr = _treated(truth, "crispr")
    multi = crispr.groupby("Metadata_gene").filter(lambda g: len(g) == 2 and g["effect_class"].iloc[0] != "null")
    assert multi["Metadata_gene"].nunique() > 50
    for gene, guides in multi.groupby("Metadata_gene"):
        assert set(guides["direction"]) == {f"gene:{gene}"}
        assert guides["effect_class"].nunique() == 1
        first, second = _effects(guides)
        assert _cosine(first, second) == pytest.approx(1.0)


def test_orf_is_the_gene_direction_with_a_sign(truth):
    orf = _treated(truth, "orf")
    crispr = _treated(truth, "crispr").drop_duplicates("Metadata_gene").set_index("Metadata_gene")
    assert set(orf["orf_sign"]) == {-1, 1}  # CPJUMP1 saw both: same and opposite phenotypes
    assert (truth.loc[truth["Metadata_modality"] != "orf", "orf_sign"] == 0).all()
    active = orf[orf["effect_class"] != "null"]
    assert len(active) > 50
    for _, row in active.iterrows():
        guide = crispr.loc[row["Metadata_gene"]]
        assert row["direction"] == guide["direction"] and row["effect_class"] == guide["effect_class"]
        cos = _cosine(row[EFFECT_COLUMNS].to_numpy(float), guide[EFFECT_COLUMNS].to_numpy(float))
        assert cos == pytest.approx(row["orf_sign"])


def test_compounds_share_their_targets_directions(truth):
    compounds = _treated(truth, "compound")
    crispr = _treated(truth, "crispr").drop_duplicates("Metadata_gene").set_index("Metadata_gene")
    active = crispr[crispr["magnitude"] > 0]
    unit = dict(zip(active.index, _effects(active) / active[["magnitude"]].to_numpy()))
    single = compounds[compounds["direction"].str.startswith("gene:")]
    mixed = compounds[compounds["direction"].str.startswith("mix:")]
    assert len(single) > 50 and len(mixed) > 10  # polypharmacology is represented
    checked = 0
    for _, row in pd.concat([single, mixed]).iterrows():
        genes = row["direction"].split(":", 1)[1].split("|")
        assert set(genes) <= set(row["Metadata_target_list"].split("|"))
        if not set(genes) <= unit.keys():  # targets outside the genetic library have their own draw
            continue
        checked += 1
        expected = sum(unit[g] for g in genes)
        assert _cosine(row[EFFECT_COLUMNS].to_numpy(float), expected) == pytest.approx(1.0)
    assert checked > 0.9 * (len(single) + len(mixed))
    # a compound is null exactly when all its targets (in the genetic library) are null
    for _, row in compounds[compounds["effect_class"] == "null"].iterrows():
        targets = [g for g in row["Metadata_target_list"].split("|") if g in crispr.index]
        assert all(crispr.loc[g, "effect_class"] == "null" for g in targets)


def test_truth_is_deterministic_and_independent_of_platemap_selection(truth):
    again = ground_truth(PLATEMAPS, seed=0, strong_fraction=0.4, null_fraction=0.3)
    pd.testing.assert_frame_equal(truth, again)
    crispr_only = ground_truth([PLATEMAPS[1]], seed=0, strong_fraction=0.4, null_fraction=0.3)
    pd.testing.assert_frame_equal(crispr_only, truth[truth["Metadata_modality"] == "crispr"].reset_index(drop=True))
    other = ground_truth([PLATEMAPS[1]], seed=1, strong_fraction=0.4, null_fraction=0.3)
    assert not np.allclose(_effects(other), _effects(crispr_only))


def test_impossible_fractions_are_refused():
    with pytest.raises(ValueError, match="fraction"):
        ground_truth([PLATEMAPS[1]], seed=0, strong_fraction=0.8, null_fraction=0.3)


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_files_names_dtype_and_channel_map(truth, tmp_path):
    wells, sites = ["A01", "B02"], [1, 2]
    small = dict(field_size=128, cells_per_field=6)
    table = generate_plate(COMPOUND_PLATE, wells, sites, CPJUMP1_CHANNELS, truth, tmp_path / "a", **small)
    expected = {image_filename(w, s, c) for w in wells for s in sites for c in range(1, 6)}
    assert {p.name for p in (tmp_path / "a").iterdir()} == expected  # no leftover temporary files
    image = tifffile.imread(tmp_path / "a" / image_filename("B02", 2, 5))
    assert image.dtype == np.uint16 and image.shape == (128, 128)
    assert list(table.columns) == [
        "Metadata_Plate", "Metadata_Well", "Metadata_Site", "n_cells", "n_cells_touching_border"
    ]
    assert len(table) == 4 and (table["Metadata_Plate"] == COMPOUND_PLATE).all()

    # Another map: other numbers, plus brightfield; the channel's pixels follow its name, not its number.
    other = {"DNA": 1, "ER": 2, "RNA": 3, "AGP": 4, "Mito": 5, "Brightfield": 6}
    generate_plate(COMPOUND_PLATE, ["B02"], [2], other, truth, tmp_path / "b", **small)
    assert {p.name for p in (tmp_path / "b").iterdir()} == {image_filename("B02", 2, c) for c in range(1, 7)}
    dna_a = tifffile.imread(tmp_path / "a" / image_filename("B02", 2, 5))
    dna_b = tifffile.imread(tmp_path / "b" / image_filename("B02", 2, 1))
    np.testing.assert_array_equal(dna_a, dna_b)
    brightfield = tifffile.imread(tmp_path / "b" / image_filename("B02", 2, 6)).astype(float)
    assert brightfield.std() / brightfield.mean() < 0.1  # plain, low contrast


def test_generation_is_deterministic_per_field(truth, tmp_path):
    args = dict(field_size=96, cells_per_field=4)
    wells, sites = ["C03", "D04"], [1, 2]
    generate_plate(COMPOUND_PLATE, wells, sites, CPJUMP1_CHANNELS, truth, tmp_path / "one", seed=3, **args)
    generate_plate(COMPOUND_PLATE, wells, sites, CPJUMP1_CHANNELS, truth, tmp_path / "two", seed=3, **args)
    generate_plate(COMPOUND_PLATE, ["D04"], [2], CPJUMP1_CHANNELS, truth, tmp_path / "subset", seed=3, **args)
    generate_plate(COMPOUND_PLATE, wells, sites, CPJUMP1_CHANNELS, truth, tmp_path / "other", seed=4, **args)
    one, two, subset, other = (_files(tmp_path / name) for name in ("one", "two", "subset", "other"))
    assert one == two
    assert all(one[name] == data for name, data in subset.items())  # a field does not depend on the selection
    assert one.keys() == other.keys() and all(one[name] != other[name] for name in one)


def test_illumination_is_per_plate_smooth_and_uneven():
    a = plate_nuisance(COMPOUND_PLATE, 0, 64, ["DNA", "ER"])
    again = plate_nuisance(COMPOUND_PLATE, 0, 64, ["DNA", "ER"])
    other_plate = plate_nuisance("BR00116992", 0, 64, ["DNA", "ER"])
    np.testing.assert_array_equal(a["gain"]["DNA"], again["gain"]["DNA"])
    assert not np.allclose(a["gain"]["DNA"], other_plate["gain"]["DNA"])
    assert not np.allclose(a["gain"]["DNA"], a["gain"]["ER"])
    gain = a["gain"]["DNA"]
    assert gain.max() / gain.min() > 1.1  # something for illumination correction to correct
    assert np.abs(np.diff(gain, axis=0)).max() < 0.02  # smooth


def test_edge_wells_hold_fewer_cells_and_big_cells_crowd():
    assert is_edge_well("A05") and is_edge_well("P24") and is_edge_well("H01") and not is_edge_well("B02")
    none = np.zeros(len(PARAMETERS))
    bigger = none.copy()
    bigger[PARAMETERS.index("cell_area")] = 1.5

    def mean_cells(effect, edge):
        return expected_cells(24, effect, edge, np.random.default_rng(7))  # same density draw

    assert mean_cells(none, True) < mean_cells(none, False)
    assert mean_cells(bigger, False) < mean_cells(none, False)


def _nuclei(path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """Otsu + connected components on DNA; objects touching the border or smaller than a nucleus dropped."""
    image = tifffile.imread(path).astype(float)
    labels, n = ndimage.label(image > threshold_otsu(image))
    index = np.arange(1, n + 1)
    areas = ndimage.sum_labels(np.ones_like(image), labels, index)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    keep = index[(areas >= MIN_NUCLEUS_PX) & ~np.isin(index, border)]
    return len(keep), areas[keep - 1], ndimage.mean(image, labels, keep)


@pytest.fixture(scope="module")
def phenotype_plate(truth, tmp_path_factory):
    """Inner (non-edge) wells of one compound plate: 6 DMSO, the strongest DNA/nucleus-size hit, 2 nulls."""
    compounds = truth[truth["Metadata_modality"] == "compound"]
    layout = plate_layout(COMPOUND_PLATE).merge(compounds, on="Metadata_broad_sample")
    inner = layout[~layout["Metadata_Well"].str.match(r"^[AP]|^.(01|24)$")]
    negcon = inner.loc[inner["effect_class"] == "negcon", "Metadata_Well"].tolist()[:6]
    strong = inner[inner["effect_class"] == "strong"]
    reach = strong[["effect_nucleus_area", "effect_dna_intensity"]].abs()
    hit = strong.loc[reach.max(axis=1).idxmax()]
    feature = reach.loc[hit.name].idxmax()
    null = inner.loc[inner["effect_class"] == "null", "Metadata_Well"].tolist()[:2]
    folder = tmp_path_factory.mktemp("phenotypes")
    wells = negcon + [hit["Metadata_Well"]] + null
    fields = generate_plate(COMPOUND_PLATE, wells, [1, 2, 3], CPJUMP1_CHANNELS, truth, folder)
    return {"folder": folder, "fields": fields, "negcon": negcon, "hit": hit, "feature": feature, "null": null}


def test_nuclei_are_countable_by_threshold(phenotype_plate):
    fields = phenotype_plate["fields"]
    assert fields["n_cells"].between(5, 60).all() and fields["n_cells"].nunique() > 3  # counts vary by well/field
    for _, field in fields.iterrows():
        dna = image_filename(field["Metadata_Well"], field["Metadata_Site"], CPJUMP1_CHANNELS["DNA"])
        found, areas, _ = _nuclei(phenotype_plate["folder"] / dna)
        assert abs(found - field["n_cells"]) <= max(2, 0.15 * field["n_cells"]), field.to_dict()
        diameters = 2 * np.sqrt(areas / np.pi)
        assert 14 <= np.median(diameters) <= 24


def _well_measure(plate: dict, well: str, feature: str) -> float:
    """Mean nucleus area or mean nuclear DNA intensity over the well's three fields."""
    values = []
    for site in (1, 2, 3):
        _, areas, intensities = _nuclei(plate["folder"] / image_filename(well, site, CPJUMP1_CHANNELS["DNA"]))
        values.append(areas if feature == "effect_nucleus_area" else intensities)
    return float(np.concatenate(values).mean())


def test_strong_phenotype_is_visible_and_null_is_not(phenotype_plate):
    plate, feature = phenotype_plate, phenotype_plate["feature"]
    effect = plate["hit"][feature]
    assert abs(effect) > 0.8
    negcon = np.array([_well_measure(plate, w, feature) for w in plate["negcon"]])
    center, spread = negcon.mean(), negcon.std(ddof=1)
    hit_z = (_well_measure(plate, plate["hit"]["Metadata_Well"], feature) - center) / spread
    assert np.sign(hit_z) == np.sign(effect) and abs(hit_z) > 3
    for well in plate["null"]:
        assert abs(_well_measure(plate, well, feature) - center) / spread < 3


@pytest.mark.slow
def test_demo_download_stage_through_snakemake(tmp_path):
    """The demo's first stage as a user runs it: planted ground truth + plates following the real platemaps."""
    import yaml

    from paintbench.metadata import plate_layout, select_wells
    from tests.helpers import REPO, snakemake

    results = tmp_path / "results"
    snakemake(
        [str(results / "load_data" / "BR00117000.csv"), "--cores", "2", "--configfile", str(REPO / "config" / "demo.yaml"),
         "--config", f"data_dir={tmp_path / 'data'}", f"results_dir={results}"],
        cwd=tmp_path,
    )
    table = pd.read_csv(results / "load_data" / "BR00117000.csv")
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    expected = select_wells(plate_layout("BR00117000"), "all", demo["genes"], demo["negcon_wells"])
    assert len(demo["genes"]) == 22 and demo["negcon_wells"] == 20
    assert table["Metadata_Well"].tolist() == expected and set(table["Metadata_Site"]) == {1}
    truth = pd.read_parquet(results / "synthetic" / "ground_truth.parquet")
    assert {"compound", "crispr", "orf"} == set(truth["Metadata_modality"])
    positions = pd.read_parquet(results / "synthetic" / "position_effects.parquet")  # the planted layout artefact
    assert len(positions) == 384 and positions.filter(like="effect_").abs().mean().mean() > 0.1
    fields = pd.read_parquet(tmp_path / "data" / "images" / "BR00117000" / "synthetic_fields.parquet")
    # 128 px fields of 16 planted cells: ~7 lie wholly inside a field (n_cells), the rest touch its border
    assert len(fields) == len(table) and (fields["n_cells"] > 2).all() and fields["n_cells"].mean() > 5


def test_gene_classes_plant_the_bi2536_pattern():
    """BRD4 set null (drawn weak at seed 7): BI-2536 (BRD4|PLK1|PLK2|PLK3) then follows PLK1 alone; PFI-1 (BRD4) is
    null. Unknown genes and classes are errors naming the key."""
    from paintbench.synthetic import ground_truth

    platemaps = ["JUMP-Target-1_compound_platemap", "JUMP-Target-1_crispr_platemap"]
    truth = ground_truth(platemaps, 7, 0.4, 0.3, gene_classes={"BRD4": "null"}).set_index("Metadata_pert_iname")
    drawn = ground_truth(platemaps, 7, 0.4, 0.3).set_index("Metadata_pert_iname")
    assert drawn.loc["BI-2536", "direction"] == "mix:BRD4|PLK1"
    assert truth.loc["BI-2536", "direction"] == "gene:PLK1" and truth.loc["BI-2536", "effect_class"] == "strong"
    assert truth.loc["PFI-1", "effect_class"] == "null"
    crispr = truth[truth["Metadata_modality"] == "crispr"].set_index("Metadata_gene")
    assert set(crispr.loc[["BRD4"], "effect_class"]) == {"null"} and set(crispr.loc[["PLK1"], "effect_class"]) == {"strong"}
    with pytest.raises(ValueError, match=r"synthetic.gene_classes: \['NOTAGENE'\]"):
        ground_truth(platemaps, 7, 0.4, 0.3, gene_classes={"NOTAGENE": "null"})
    with pytest.raises(ValueError, match="synthetic.gene_classes.*one of strong, weak, null"):
        ground_truth(platemaps, 7, 0.4, 0.3, gene_classes={"BRD4": "medium"})
