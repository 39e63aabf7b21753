"""ViT embeddings of a crop cache: pooling, field-then-well means, batch independence, throughput helpers
(the stream from images is tested against a cache in test_vit_crops.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from paintbench.atomic import write_table
from paintbench.vit import build_encoder
from paintbench.vit.crops import cache_files
from paintbench.vit.embed import bare_forward_throughput, embed_batches, embed_plate, end_to_end_throughput, feature_names
from paintbench.vit.stream import CacheSource

CONFIG = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, kwargs=dict(depth=2, embed_dim=64, num_heads=2))
# (well, site, crops): unequal crop counts per field, so field-then-well means differ from crop means.
LAYOUT = [("A01", 1, 1), ("A01", 2, 5), ("A02", 1, 3), ("B01", 1, 2), ("B01", 2, 2), ("B01", 4, 4)]


def write_cache(prefix, crop_size: int, seed: int = 0) -> pd.DataFrame:
    rows = [(well, site) for well, site, n in LAYOUT for _ in range(n)]
    index = pd.DataFrame(rows, columns=["Metadata_Well", "Metadata_Site"])
    index.insert(0, "Metadata_Plate", "P1")
    index["Metadata_Crop"] = np.arange(len(index))
    index["Metadata_Y"] = index["Metadata_X"] = 50
    rng = np.random.default_rng(seed)
    array = rng.normal(0.3, 0.4, (len(index), 5, crop_size, crop_size)).astype(np.float16)
    files = cache_files(prefix)
    np.save(files["array"], array)
    write_table(index, files["index"])
    return index


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return build_encoder(**CONFIG).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("cache") / "P1"
    return prefix, write_cache(prefix, 32)


def embed(cache_prefix, encoder, out_dir, **options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the well table embed_plate writes, every crop's embedding from embed_batches with the cache's index)."""
    options = {"device": "cpu", "num_workers": 0, **options}
    index = pd.read_parquet(cache_files(cache_prefix)["index"])
    (wells,) = embed_plate(CacheSource(cache_prefix), [(encoder, CONFIG)], [out_dir / "wells.parquet"], **options)
    assert wells.equals(pd.read_parquet(out_dir / "wells.parquet"))
    per_crop = [emb for _, (emb,) in embed_batches(CacheSource(cache_prefix), [(encoder, CONFIG)], progress=False,
                                                   **options)]
    features = pd.DataFrame(torch.cat(per_crop).numpy(), columns=feature_names(encoder.num_features))
    return wells, pd.concat([index, features], axis=1)


def test_well_table_and_field_then_well_means(cache, encoder, tmp_path):
    prefix, index = cache
    wells, crops = embed(prefix, encoder, tmp_path, batch_size=4)
    features = [f"emb_{j:04d}" for j in range(64)]
    assert list(wells.columns) == ["Metadata_Plate", "Metadata_Well", "Metadata_Object_Count", "Metadata_Field_Count", *features]
    assert wells["Metadata_Well"].tolist() == ["A01", "A02", "B01"]
    assert wells["Metadata_Object_Count"].tolist() == [6, 3, 8] and wells["Metadata_Field_Count"].tolist() == [2, 1, 3]
    assert all(wells[c].dtype == np.float32 for c in features)
    assert crops[index.columns].equals(index) and len(crops) == len(index)
    assert np.isfinite(crops[features].to_numpy()).all()

    fields = crops.groupby(["Metadata_Well", "Metadata_Site"])[features].mean()
    by_hand = fields.groupby(level="Metadata_Well").mean()
    np.testing.assert_allclose(wells.set_index("Metadata_Well")[features].to_numpy(), by_hand.to_numpy(), rtol=1e-5, atol=1e-6)
    crop_means = crops.groupby("Metadata_Well")[features].mean()
    assert not np.allclose(crop_means.loc["A01"], by_hand.loc["A01"], atol=1e-4)  # fields weigh equally, not crops


def test_pooling_and_batch_size(cache, encoder, tmp_path):
    prefix, _ = cache
    results = {}
    for name, options in {"cls4": dict(batch_size=4, pooling="cls"), "cls1": dict(batch_size=1, pooling="cls"),
                          "cls256": dict(batch_size=256, num_workers=2, pooling="cls"),
                          "mean": dict(batch_size=5, pooling="mean")}.items():
        (tmp_path / name).mkdir()
        results[name] = embed(prefix, encoder, tmp_path / name, **options)[1].filter(like="emb_").to_numpy()
    for name in ("cls1", "cls256"):
        np.testing.assert_allclose(results[name], results["cls4"], rtol=1e-5, atol=1e-5)
    assert np.abs(results["mean"] - results["cls4"]).max() > 1e-2


def test_resized_crops_match_a_manual_forward(encoder, tmp_path):
    write_cache(tmp_path / "P1", crop_size=40, seed=1)
    _, crops = embed(tmp_path / "P1", encoder, tmp_path, batch_size=7, pooling="mean")
    array = torch.from_numpy(np.load(cache_files(tmp_path / "P1")["array"])[:3].astype(np.float32))
    x = torch.nn.functional.interpolate(array, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        expected = encoder.forward_features(x)[:, encoder.num_prefix_tokens:].mean(dim=1).numpy()
    np.testing.assert_allclose(crops.filter(like="emb_").to_numpy()[:3], expected, rtol=1e-4, atol=1e-5)


def test_throughput_helpers(cache, encoder):
    prefix, index = cache
    bare = bare_forward_throughput(encoder, 32, 8, device="cpu", seconds=0.2)
    assert bare["crops_per_s"] > 0 and bare["crops"] >= 8
    loop = end_to_end_throughput(CacheSource(prefix), encoder, CONFIG, batch_size=4, device="cpu", num_workers=1,
                                 warmup=1)
    assert loop["crops"] == len(index) - 4 and loop["crops_per_s"] > 0


def test_several_encoders_share_one_pass(cache, encoder, tmp_path):
    """The pipeline embeds a plate with every method's encoder in one job: each output equals a pass of its own."""
    prefix, _ = cache
    torch.manual_seed(1)
    other = build_encoder(**CONFIG).eval()
    alone = [embed_plate(CacheSource(prefix), [(model, CONFIG)], [tmp_path / f"alone{k}.parquet"], batch_size=4,
                         device="cpu", num_workers=0)[0] for k, model in enumerate((encoder, other))]
    together = embed_plate(CacheSource(prefix), [(encoder, CONFIG), (other, CONFIG)],
                           [tmp_path / "a.parquet", tmp_path / "b.parquet"], batch_size=4, device="cpu", num_workers=0)
    for single, shared in zip(alone, together):
        pd.testing.assert_frame_equal(single, shared)
    assert not np.allclose(together[0].filter(like="emb_"), together[1].filter(like="emb_"))
    with pytest.raises(ValueError, match="2 encoders but 1 outputs"):
        embed_plate(CacheSource(prefix), [(encoder, CONFIG), (other, CONFIG)], [tmp_path / "c.parquet"])
