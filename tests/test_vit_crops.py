"""The ViT branch's crop cache: tiles and nuclei on a synthetic plate, a real field, bad fields."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch

from paintbench import CHANNELS
from paintbench.illum import correct, load_functions
from paintbench.paths import illum_filename
from paintbench.images import BadFieldError, read_field
from paintbench.loaddata import load_data_table
from paintbench.vit import build_encoder
from paintbench.vit.crops import CLIP, CropDataset, build_crop_cache, cache_files, fingerprint, tile_centres
from paintbench.vit.embed import embed_plate
from paintbench.vit.stream import CacheSource, ImageSource
from tests.helpers import REAL_CHANNELS, REAL_SITE, synthetic_crispr_plate

PLATE = "BR00117000"
FIELD = 192


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit_plate")
    _, fields, load_data = synthetic_crispr_plate(folder, PLATE, 3, [1, 2], field_size=FIELD, cells_per_field=20)
    return folder, fields, load_data


@pytest.fixture(scope="module")
def nuclei_cache(plate, tmp_path_factory):
    folder, _, load_data = plate
    prefix = tmp_path_factory.mktemp("nuclei") / PLATE
    index = build_crop_cache(load_data, folder / "illum", prefix, "nuclei", 48, num_workers=2).index
    return prefix, index


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(".tmp-*"))


def test_tile_grid_is_centred():
    centres = tile_centres((200, 140), 64)
    assert sorted(set(centres[:, 0])) == [4 + 32, 4 + 96, 4 + 160] and sorted(set(centres[:, 1])) == [6 + 32, 6 + 96]


def test_tiles_cache(plate, tmp_path):
    folder, _, load_data = plate
    index = build_crop_cache(load_data, folder / "illum", tmp_path / PLATE, "tiles", 64, num_workers=2).index
    files = cache_files(tmp_path / PLATE)
    array = np.load(files["array"], mmap_mode="r")
    per_field = (FIELD // 64) ** 2
    assert array.dtype == np.float16 and array.shape == (len(load_data) * per_field, 5, 64, 64)
    assert index.equals(pd.read_parquet(files["index"])) and len(index) == len(array)
    assert index["Metadata_Crop"].tolist() == list(range(len(index)))
    assert index.groupby(["Metadata_Well", "Metadata_Site"]).size().eq(per_field).all()
    assert index["Metadata_Well"].is_monotonic_increasing  # a well's crops are consecutive
    assert CLIP[0] <= float(array.min()) and float(array.max()) <= CLIP[1]
    norm = json.loads(files["norm"].read_text())
    assert norm["channels"] == list(CHANNELS) and all(lo < hi for lo, hi in zip(norm["low"], norm["high"]))
    assert leftovers(tmp_path) == []

    # One tile by hand: read, correct, normalize, slice.
    row = index.iloc[per_field + 4]
    field_row = load_data[(load_data["Metadata_Well"] == row["Metadata_Well"])
                          & (load_data["Metadata_Site"] == row["Metadata_Site"])].iloc[0]
    field = correct(read_field(field_row, list(CHANNELS)), load_functions(folder / "illum", PLATE, list(CHANNELS)))
    low, high = np.array(norm["low"])[:, None, None], np.array(norm["high"])[:, None, None]
    expected = np.clip((field - low) / (high - low), *CLIP)
    y, x = row["Metadata_Y"] - 32, row["Metadata_X"] - 32
    np.testing.assert_allclose(array[per_field + 4].astype(np.float32), expected[:, y : y + 64, x : x + 64],
                               rtol=2e-3, atol=2e-3)

    dataset = CropDataset([tmp_path / PLATE, tmp_path / PLATE])
    assert len(dataset) == 2 * len(array) and len(dataset.index) == len(dataset)
    item = dataset[len(array) + 3]
    assert item.dtype == torch.float32 and item.shape == (5, 64, 64)
    assert torch.equal(item, torch.from_numpy(array[3].astype(np.float32)))


def test_nuclei_cache_counts_centring_and_determinism(plate, nuclei_cache, tmp_path):
    folder, fields, load_data = plate
    prefix, index = nuclei_cache
    array = np.load(cache_files(prefix)["array"])
    assert array.dtype == np.float16 and array.shape == (len(index), 5, 48, 48) and len(index) > 20
    found = index.groupby(["Metadata_Well", "Metadata_Site"]).size()
    for _, field in fields.iterrows():
        count = found.get((field["Metadata_Well"], field["Metadata_Site"]), 0)
        assert abs(count - field["n_cells"]) <= max(1, round(0.15 * field["n_cells"])), (field.to_dict(), count)
    dna = array[:, CHANNELS.index("DNA")].astype(np.float32)
    centre = dna[:, 20:28, 20:28].mean(axis=(1, 2))
    corners = np.concatenate([dna[:, :6, :6], dna[:, :6, -6:], dna[:, -6:, :6], dna[:, -6:, -6:]], axis=1).mean(axis=(1, 2))
    assert (centre > corners + 0.2).mean() > 0.9, (centre, corners)

    again = build_crop_cache(load_data, folder / "illum", tmp_path / PLATE, "nuclei", 48, num_workers=0).index
    assert again.equals(index)
    assert cache_files(tmp_path / PLATE)["array"].read_bytes() == cache_files(prefix)["array"].read_bytes()
    assert cache_files(tmp_path / PLATE)["norm"].read_text() == cache_files(prefix)["norm"].read_text()

    capped = build_crop_cache(load_data, folder / "illum", tmp_path / "capped", "nuclei", 48, num_workers=1,
                              max_crops_per_field=3).index
    assert capped.groupby(["Metadata_Well", "Metadata_Site"]).size().max() == 3
    key = ["Metadata_Well", "Metadata_Site", "Metadata_Y", "Metadata_X"]
    assert len(capped[key].merge(index[key])) == len(capped)  # a subset of the same nuclei
    assert leftovers(tmp_path) == []


def test_given_nuclei_centres(plate, nuclei_cache, tmp_path):
    folder, _, load_data = plate
    prefix, index = nuclei_cache
    centres = index.rename(columns={"Metadata_Y": "Nuclei_Location_Center_Y", "Metadata_X": "Nuclei_Location_Center_X"})
    centres = centres.astype({"Nuclei_Location_Center_Y": float, "Nuclei_Location_Center_X": float})
    centres["Nuclei_Location_Center_Y"] += 0.3
    outside = centres.iloc[[0]].assign(Nuclei_Location_Center_X=FIELD + 5.0)
    given = build_crop_cache(load_data, folder / "illum", tmp_path / PLATE, "nuclei", 48, num_workers=2,
                             nuclei_centres=pd.concat([outside, centres])).index
    assert given.equals(index)
    assert cache_files(tmp_path / PLATE)["array"].read_bytes() == cache_files(prefix)["array"].read_bytes()


def test_corrupt_tiff_names_the_file(plate, tmp_path):
    folder, _, load_data = plate
    broken = load_data.copy()
    truncated = tmp_path / broken.loc[3, "FileName_OrigRNA"]
    truncated.write_bytes((folder / "images" / truncated.name).read_bytes()[:700])
    broken.loc[3, "PathName_OrigRNA"] = str(tmp_path)
    well, site = broken.loc[3, "Metadata_Well"], broken.loc[3, "Metadata_Site"]
    # norm_fields=1: the survey reads one other field, so the crop pass (writing the memmap) meets the bad one.
    with pytest.raises(BadFieldError) as error:
        build_crop_cache(broken, folder / "illum", tmp_path / "out" / PLATE, "tiles", 64, num_workers=2,
                         norm_fields=1, seed=1)
    assert f"plate {PLATE}, well {well}, site {site}" in str(error.value) and str(truncated) in str(error.value)
    assert "Traceback" not in str(error.value)
    files = cache_files(tmp_path / "out" / PLATE)
    assert files["norm"].exists()  # the survey passed: the error came from the pass writing the memmap
    assert not files["array"].exists() and not files["index"].exists() and leftovers(tmp_path) == []


def test_well_without_nuclei_is_left_out_and_logged(plate, tmp_path, caplog):
    folder, _, load_data = plate
    blank = load_data.copy()
    well = blank.loc[0, "Metadata_Well"]
    for i in blank.index[blank["Metadata_Well"] == well]:
        name = blank.loc[i, "FileName_OrigDNA"]
        tifffile.imwrite(tmp_path / name, np.full((FIELD, FIELD), 100, np.uint16))
        blank.loc[i, "PathName_OrigDNA"] = str(tmp_path)
    with caplog.at_level("WARNING", logger="paintbench.vit.crops"):
        index = build_crop_cache(blank, folder / "illum", tmp_path / PLATE, "nuclei", 48, num_workers=1).index
    assert well not in set(index["Metadata_Well"]) and index["Metadata_Well"].nunique() == load_data["Metadata_Well"].nunique() - 1
    assert any(well in record.getMessage() and "without any crop" in record.getMessage() for record in caplog.records)


def test_real_field_crops_and_embedding(tmp_path):
    load_data = load_data_table("BR00143976", REAL_SITE, ["C03"], [3], REAL_CHANNELS)
    (tmp_path / "illum").mkdir()
    for channel in CHANNELS:
        np.save(tmp_path / "illum" / illum_filename("BR00143976", channel), np.ones((540, 540), np.float32))
    index = build_crop_cache(load_data, tmp_path / "illum", tmp_path / "BR00143976", "nuclei", 64, num_workers=2).index
    assert 9 <= len(index) <= 13  # the consortium's CellProfiler run outlines 11 nuclei wholly inside the crop
    torch.manual_seed(0)
    config = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, kwargs=dict(depth=2, embed_dim=64, num_heads=2))
    source = ImageSource(load_data, tmp_path / "illum", tmp_path / "BR00143976")
    (wells,) = embed_plate(source, [(build_encoder(**config), config)], [tmp_path / "wells.parquet"],
                           batch_size=4, device="cpu", num_workers=1)
    assert wells[["Metadata_Plate", "Metadata_Well"]].values.tolist() == [["BR00143976", "C03"]]
    assert wells.loc[0, "Metadata_Object_Count"] == len(index) and wells.loc[0, "Metadata_Field_Count"] == 1
    features = wells.filter(like="emb_")
    assert features.shape[1] == 64 and np.isfinite(features.to_numpy()).all()


def test_sample_on_disk_and_every_crop_streamed_from_the_images(plate, nuclei_cache, tmp_path):
    """The pretraining sample keeps at most N crops per field; embedding streams every crop from the images and
    gets exactly what a cache of every crop gives."""
    folder, _, load_data = plate
    prefix, full_index = nuclei_cache
    sampled = build_crop_cache(load_data, folder / "illum", tmp_path / PLATE, "nuclei", 48, num_workers=2,
                               sample_per_field=2)
    assert sampled.index.groupby(["Metadata_Well", "Metadata_Site"]).size().max() == 2
    assert len(sampled.centres) == len(full_index)  # every nucleus is still planned for embedding
    key = ["Metadata_Well", "Metadata_Site", "Metadata_Y", "Metadata_X"]
    assert len(sampled.index[key].merge(full_index[key])) == len(sampled.index)
    sample = np.load(cache_files(tmp_path / PLATE)["array"])
    full = np.load(cache_files(prefix)["array"])
    rows = full_index.reset_index().merge(sampled.index[key], on=key)["index"].to_numpy()
    assert np.array_equal(sample, full[rows])  # the same crops, bit for bit
    assert cache_files(tmp_path / PLATE)["array"].stat().st_size < 0.6 * cache_files(prefix)["array"].stat().st_size

    torch.manual_seed(0)
    config = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, kwargs=dict(depth=2, embed_dim=64, num_heads=2))
    encoder = build_encoder(**config).eval()
    (streamed,) = embed_plate(ImageSource(load_data, folder / "illum", tmp_path / PLATE), [(encoder, config)],
                              [tmp_path / "streamed.parquet"], batch_size=7, device="cpu", num_workers=2)
    (cached,) = embed_plate(CacheSource(prefix), [(encoder, config)], [tmp_path / "cached.parquet"], batch_size=5,
                            device="cpu", num_workers=0)
    assert streamed[["Metadata_Well", "Metadata_Object_Count", "Metadata_Field_Count"]].equals(
        cached[["Metadata_Well", "Metadata_Object_Count", "Metadata_Field_Count"]])
    np.testing.assert_allclose(streamed.filter(like="emb_").to_numpy(), cached.filter(like="emb_").to_numpy(),
                               rtol=1e-5, atol=1e-6)


def test_unreadable_fields_are_skipped_and_recorded_by_both_passes(plate, tmp_path):
    folder, _, load_data = plate
    broken = load_data.copy()
    victim = tmp_path / broken.loc[4, "FileName_OrigER"]
    victim.write_bytes((folder / "images" / victim.name).read_bytes()[:700])
    broken.loc[4, "PathName_OrigER"] = str(tmp_path)
    well, site = broken.loc[4, "Metadata_Well"], int(broken.loc[4, "Metadata_Site"])
    cache = build_crop_cache(broken, folder / "illum", tmp_path / PLATE, "nuclei", 48, num_workers=2, norm_fields=1,
                             skip_bad_fields=True)
    # norm_fields=1: the survey reads only DNA here, so the crop pass meets the damaged ER channel.
    assert [(r["Metadata_Well"], r["Metadata_Site"], r["stage"]) for r in cache.skipped] == [(well, site, "vit_crops")]
    assert str(victim) in cache.skipped[0]["reason"]
    fields = set(zip(cache.centres["Metadata_Well"], cache.centres["Metadata_Site"]))
    assert (well, site) not in fields and (well, site) not in set(zip(cache.index["Metadata_Well"], cache.index["Metadata_Site"]))
    assert len(CropDataset([tmp_path / PLATE])) == len(cache.index)
    # The stream meets a field that went bad after the plan: skipped and recorded too (as vit_embed).
    other = broken.copy()
    victim2 = tmp_path / other.loc[0, "FileName_OrigMito"]
    victim2.write_bytes(b"II*\x00 not a tiff")
    other.loc[0, "PathName_OrigMito"] = str(tmp_path)
    source = ImageSource(other, folder / "illum", tmp_path / PLATE, skip_bad_fields=True)
    config = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, kwargs=dict(depth=1, embed_dim=32, num_heads=2))
    (wells,) = embed_plate(source, [(build_encoder(**config), config)], [tmp_path / "wells.parquet"], batch_size=8,
                           device="cpu", num_workers=0)
    assert [(r["Metadata_Well"], r["stage"]) for r in source.skipped] == [(other.loc[0, "Metadata_Well"], "vit_embed")]
    expected = cache.centres.groupby("Metadata_Well").size()
    expected[other.loc[0, "Metadata_Well"]] -= int(((cache.centres["Metadata_Well"] == other.loc[0, "Metadata_Well"])
                                                    & (cache.centres["Metadata_Site"] == other.loc[0, "Metadata_Site"])).sum())
    assert wells.set_index("Metadata_Well")["Metadata_Object_Count"].to_dict() == expected[expected > 0].to_dict()
    with pytest.raises(BadFieldError, match=str(victim2).replace(".", r"\.")):
        embed_plate(ImageSource(other, folder / "illum", tmp_path / PLATE), [(build_encoder(**config), config)],
                    [tmp_path / "fails.parquet"], device="cpu", num_workers=0)


def test_fingerprint_changes_with_illumination_normalization_and_content(plate, tmp_path):
    folder, _, load_data = plate
    illum = tmp_path / "illum"
    shutil.copytree(folder / "illum", illum)
    prefix = tmp_path / "crops" / PLATE
    build_crop_cache(load_data, illum, prefix, "tiles", 64, num_workers=0, sample_per_field=2)
    base = fingerprint([prefix])
    assert base == fingerprint([prefix])  # deterministic
    changed = {}
    function = np.load(illum / illum_filename(PLATE, "ER"))
    np.save(illum / illum_filename(PLATE, "ER"), function * 1.01)  # illumination functions recomputed
    build_crop_cache(load_data, illum, prefix, "tiles", 64, num_workers=0, sample_per_field=2)
    changed["illum"] = fingerprint([prefix])
    build_crop_cache(load_data, illum, prefix, "tiles", 64, num_workers=0, sample_per_field=2,
                     norm_percentiles=(2.0, 99.5))  # another normalization
    changed["norm"] = fingerprint([prefix])
    array = np.load(cache_files(prefix)["array"], mmap_mode="r+")
    array[0, 0, 0, 0] += 1  # the crop cache content itself
    array.flush()
    del array
    changed["content"] = fingerprint([prefix])
    assert changed["illum"]["illumination functions"] != base["illumination functions"]
    assert changed["norm"]["normalization"] != changed["illum"]["normalization"]
    assert changed["content"]["crop content"] != changed["norm"]["crop content"]
    assert changed["content"]["normalization"] == changed["norm"]["normalization"]
