"""Fine-tuning, the second phase: the split keeps related perturbations on one side, no held-out label or image
reaches the fine-tuning loader, fine-tuning learns its task, and the fine-tuned encoder embeds like any other; then
through the workflow, scored on the held-out side beside its parent."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from paintbench.holdout import leaks, split_perturbations
from paintbench.metadata import plate_layout
from tests.helpers import snakemake, synthetic_crispr_plate

PLATE = "BR00117000"
TINY = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5, kwargs={"depth": 2})


def annotation() -> pd.DataFrame:
    """Compounds c1 (targets A, B), c2 (B), c3 (C), c4 (none); guides gA1, gA2 (A), gC (C), gD (D); ORF oD (D);
    a negative control."""
    rows = [("c1", "compound", None, "A|B"), ("c2", "compound", None, "B"), ("c3", "compound", None, "C"),
            ("c4", "compound", None, None), ("gA1", "crispr", "A", None), ("gA2", "crispr", "A", None),
            ("gC", "crispr", "C", None), ("gD", "crispr", "D", None), ("oD", "orf", "D", None)]
    table = pd.DataFrame(rows, columns=["Metadata_broad_sample", "Metadata_modality", "Metadata_gene",
                                        "Metadata_target_list"]).assign(Metadata_control_type=None)
    control = pd.DataFrame([{"Metadata_broad_sample": "DMSO", "Metadata_modality": "compound",
                             "Metadata_control_type": "negcon"}])
    return pd.concat([table, control], ignore_index=True)


def test_the_split_keeps_a_target_and_its_reagents_on_one_side():
    table = annotation()
    for seed in range(20):
        split = split_perturbations(table, 0.5, seed)
        assert leaks(split, table) == []
        side = split.set_index("Metadata_broad_sample")["side"]
        assert side["c1"] == side["c2"] == side["gA1"] == side["gA2"]  # A and B joined through c1
        assert side["c3"] == side["gC"] and side["gD"] == side["oD"]
        assert "DMSO" not in side.index  # controls belong to no side
    groups = split.drop_duplicates("group")
    assert len(groups) == 4  # {c1, c2, gA1, gA2}, {c3, gC}, {c4}, {gD, oD}
    sides = {tuple(split_perturbations(table, 0.5, seed)["side"]) for seed in range(20)}
    assert len(sides) > 1  # the seed moves groups between sides
    assert split_perturbations(table, 0.5, 3).equals(split_perturbations(table, 0.5, 3))


def test_the_split_of_real_platemaps_has_no_leak():
    layouts = pd.concat([plate_layout(p) for p in ("BR00116991", "BR00117000", "BR00117020")], ignore_index=True)
    split = split_perturbations(layouts, 0.5, 0)
    assert leaks(split, layouts) == []
    share = (split["side"] == "heldout").mean()
    # JUMP-Target's multi-target compounds join 515 of its 772 perturbations into one group, which cannot be split
    # without a leak: it stays on the training side, and a third is held out
    assert split.groupby("group").size().max() == 515 and 0.25 < share <= 0.5
    assert set(split["Metadata_modality"]) == {"compound", "crispr", "orf"}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A synthetic CRISPR plate's crop cache (HIF1A and ALDH2 guides, controls), its layout and a split."""
    from paintbench.vit.crops import CropDataset, build_crop_cache

    folder = tmp_path_factory.mktemp("finetune")
    _, _, load_data = synthetic_crispr_plate(folder, PLATE, 8, [1, 2], field_size=160, cells_per_field=20)
    build_crop_cache(load_data, folder / "illum", folder / PLATE, "nuclei", 48, num_workers=2)
    crops = CropDataset([folder / PLATE])
    layout = plate_layout(PLATE)
    selected = layout[layout["Metadata_Well"].isin(set(crops.index["Metadata_Well"]))]
    split = split_perturbations(selected, 0.5, 1)
    return folder, crops, layout, split, load_data


class Spy(torch.utils.data.Dataset):
    """A crop dataset that records every row it is asked for."""

    def __init__(self, inner):
        self.inner, self.index, self.read = inner, inner.index, []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, k):
        self.read.append(k)
        return self.inner[k]


def test_no_held_out_label_or_image_reaches_the_loader_and_fine_tuning_learns(labelled, tmp_path):
    from paintbench.vit.core import build_encoder
    from paintbench.vit.finetune import CONTROL_CLASS, LabelledCrops, finetune

    folder, crops, layout, split, _ = labelled
    held = set(split.loc[split["side"] == "heldout", "Metadata_broad_sample"])
    assert held and set(split["side"]) == {"train", "heldout"}
    spy = Spy(crops)
    data = LabelledCrops(spy, layout, split)
    assert not set(data.index["Metadata_broad_sample"]) & held and CONTROL_CLASS in data.labels
    assert not set(data.labels) & held
    torch.manual_seed(0)
    encoder = build_encoder(**TINY)
    path = finetune(encoder, TINY, data, tmp_path / "ft", steps=120, batch_size=32, lr=1e-3, warmup_steps=5,
                    device="cpu")
    wells = crops.index.set_index("Metadata_Well")
    read_wells = set(crops.index.loc[spy.read, "Metadata_Well"])
    read_perts = set(layout.set_index("Metadata_Well").loc[sorted(read_wells), "Metadata_broad_sample"])
    assert spy.read and not read_perts & held  # checked on the rows the loader actually read
    assert len(wells)  # (the cache holds held-out wells too: they were there to be read, and were not)
    # It learns its task: accuracy on the training side's crops, every crop once, far above the majority class.
    log = pd.read_csv(tmp_path / "ft" / "finetune_log.tsv", sep="\t")
    assert log["loss"].tail(20).mean() < log["loss"].head(20).mean()
    from paintbench.vit.model import load_encoder
    from paintbench.vit.core import pool_tokens, resize_to

    tuned, config = load_encoder(path)
    assert config == TINY
    x = resize_to(torch.stack([data[k][0] for k in range(len(data))]), TINY["img_size"])
    with torch.inference_mode():
        features = pool_tokens(tuned, x, "mean").numpy()
    centroids = np.stack([features[data.targets == k].mean(axis=0) for k in range(len(data.labels))])
    nearest = ((features[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    accuracy = (nearest == data.targets).mean()
    majority = np.bincount(data.targets).max() / len(data)
    assert accuracy > majority + 0.15, (accuracy, majority)


def test_the_fine_tuned_encoder_embeds_like_any_other(labelled, tmp_path):
    from paintbench.vit.core import build_encoder
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.finetune import LabelledCrops, finetune
    from paintbench.vit.model import load_encoder
    from paintbench.vit.stream import CacheSource

    folder, crops, layout, split, _ = labelled
    path = finetune(build_encoder(**TINY), TINY, LabelledCrops(crops, layout, split), tmp_path / "ft", steps=3,
                    batch_size=8, lr=1e-4, warmup_steps=1, device="cpu")
    encoder = load_encoder(path)
    (wells,) = embed_plate(CacheSource(folder / PLATE), [encoder], [tmp_path / "wells.parquet"], batch_size=16,
                           device="cpu", num_workers=0)
    assert wells.filter(like="emb_").shape[1] == 192 and len(wells) == crops.index["Metadata_Well"].nunique()


def test_an_external_encoder_fine_tunes_on_training_wells_only_and_embeds_from_its_file(labelled, tmp_path,
                                                                                        monkeypatch):
    from paintbench.encoder_formats import resolve
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.encoders import load_embedder
    from paintbench.vit.fields import FieldReader
    from paintbench.vit.finetune import CONTROL_CLASS, finetune_encoder, sample_encoder_crops, well_labels
    from paintbench.vit.stream import Geometry, RawSource

    folder, _, layout, split, load_data = labelled
    held = set(split.loc[split["side"] == "heldout", "Metadata_broad_sample"])
    entry = {"format": "timm", "checkpoint": "random", "model": "vit_tiny_patch16_224", "model_kwargs": {"depth": 2},
             "patch_size": 8, "crop_size": 32, "input_size": 32}
    spec = resolve("tiny", entry)
    read = []
    corrected = FieldReader.corrected
    monkeypatch.setattr(FieldReader, "corrected", lambda self, row, channels: read.append(row["Metadata_Well"])
                        or corrected(self, row, channels))
    labels = well_labels(layout, split)
    data = sample_encoder_crops([(load_data, folder / "illum")], labels, Geometry(*spec.geometry), 400, seed=0)
    pert = layout.set_index("Metadata_Well")["Metadata_broad_sample"]
    assert read and not set(pert[read]) & held  # checked on the fields the reader was actually asked for
    assert len(data) <= 400 and CONTROL_CLASS in data.labels and not set(data.labels) & held
    assert data.fields["Metadata_Well"].nunique() > 2  # the sample spans the wells
    embedder = load_embedder(spec)
    path = finetune_encoder(embedder, data, tmp_path / "tiny_ft", steps=80, batch_size=32, lr=1e-3, warmup_steps=5,
                            device="cpu")
    log = pd.read_csv(tmp_path / "tiny_ft" / "finetune_log.tsv", sep="\t")
    assert log["loss"].tail(15).mean() < log["loss"].head(15).mean()
    tuned = load_embedder(resolve("tiny_ft", {**entry, "checkpoint": str(path)}))  # the format's own loader
    x = torch.stack([data[k][0] for k in range(len(data))])
    with torch.inference_mode():
        torch.testing.assert_close(tuned(x), embedder.eval()(x), rtol=1e-5, atol=1e-5)
        features = tuned(x).numpy()
    centroids = np.stack([features[data.targets == k].mean(axis=0) for k in range(len(data.labels))])
    nearest = ((features[:, None] - centroids[None]) ** 2).sum(axis=2).argmin(axis=1)
    majority = np.bincount(data.targets).max() / len(data)
    assert (nearest == data.targets).mean() > majority + 0.15
    source = RawSource(load_data, folder / "illum", PLATE, Geometry(*spec.geometry))
    (wells,) = embed_plate(source, [tuned], [tmp_path / "wells.parquet"], batch_size=64, device="cpu", num_workers=0)
    assert len(wells) == load_data["Metadata_Well"].nunique() and wells.filter(like="emb_").shape[1] == 192


def test_encoder_fine_tuning_is_configured_for_formats_it_can_build(tmp_path):
    from paintbench.config import ConfigError, load_config

    from tests.conftest import small_demo_config

    config = small_demo_config(tmp_path, plates=["BR00117000"])
    layers = {"vit": {"finetune": {"encoders": ["absent"]}}}
    with pytest.raises(ConfigError, match=r"'vit.finetune.encoders': 'absent' is not an encoder"):
        load_config(config, layers, preflight=False)
    (tmp_path / "scripted.pt").write_bytes(b"checked when loaded, not by the configuration")
    scripted = {"encoders": {"scripted": {"format": "torchscript", "checkpoint": str(tmp_path / "scripted.pt"),
                                          "crop_size": 32}},
                "vit": {"finetune": {"encoders": ["scripted"]}}}
    with pytest.raises(ConfigError, match="torchscript model, whose architecture paintbench does not build"):
        load_config(config, scripted, preflight=False)
    clash = {"encoders": {"cpssl_random_ft": {"format": "timm", "checkpoint": "random", "model": "vit_tiny_patch16_224"}},
             "vit": {"finetune": {"encoders": ["cpssl_random"]}}}
    with pytest.raises(ConfigError, match="cpssl_random_ft has the name of a configured feature set"):
        load_config(config, clash, preflight=False)


@pytest.mark.slow
def test_fine_tuned_and_parent_are_scored_on_the_held_out_side_through_the_workflow(tmp_path):
    import yaml

    from tests.conftest import small_demo_config

    config = small_demo_config(tmp_path, plates=["BR00117000", "BR00117003", "BR00116991", "BR00116992"],
                               feature_sets=["vitsimclr"])  # and the demo's external encoder, cpssl_random
    data = yaml.safe_load(open(config))
    data["vit"].update(steps=40, checkpoint_every=40, finetune={"methods": ["simclr"], "encoders": ["cpssl_random"],
                                                                "steps": 40, "batch_size": 16, "max_crops": 256})
    open(config, "w").write(yaml.safe_dump(data))
    results = tmp_path / "results"
    snakemake([str(results / "reports" / "summary.tsv"), "--cores", "2", "--configfile", config], cwd=tmp_path,
              timeout=1500)
    split = pd.read_csv(results / "vit" / "finetune" / "split.tsv", sep="\t")
    held = set(split.loc[split["side"] == "heldout", "Metadata_broad_sample"])
    for name in ("vitsimclr/mad_heldout", "vitsimclr_ft/mad_heldout", "cpssl_random/mad_heldout",
                 "cpssl_random_ft/mad_heldout"):
        scored = pd.read_parquet(results / "retrieval" / name / "replicate_retrieval.parquet")
        assert len(scored) and set(scored["Metadata_broad_sample"]) <= held, name
    comparisons = pd.read_csv(results / "reports" / "comparisons.tsv", sep="\t")
    assert {"fine-tuning of vitsimclr", "fine-tuning of cpssl_random"} <= set(comparisons["family"])
    assert (results / "encoders" / "cpssl_random_ft" / "backbone.pt").is_file()
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    tuned = summary[(summary["profile_set"] == "vitsimclr_ft/mad_heldout") & (summary["task"] == "replicate_retrieval")]
    assert (tuned["paired_reference"].dropna() == "vitsimclr/mad_heldout").all()


def test_the_heldout_step_keeps_controls_and_the_held_out_side(tmp_path):
    from paintbench.chains import apply_chain

    split = pd.DataFrame({"Metadata_broad_sample": ["a", "b", "c"], "Metadata_modality": "compound",
                          "group": [0, 1, 2], "side": ["train", "heldout", "train"]})
    split.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    wells = pd.DataFrame({"Metadata_Plate": ["P1"] * 8 + ["P2"] * 8, "Metadata_Well": [f"A{i:02d}" for i in range(16)],
                          "Metadata_broad_sample": ["DMSO", "DMSO", "a", "b", "c", "a", "b", "c"] * 2,
                          "Metadata_control_type": (["negcon"] * 2 + [None] * 6) * 2,
                          **{f"f{j}": rng.normal(size=16) for j in range(6)}})
    out, features, records = apply_chain(wells, ["heldout", "mad"], {"heldout": {"split": str(tmp_path / "split.tsv")}})
    assert out["Metadata_broad_sample"].tolist() == ["DMSO", "DMSO", "b", "b"] * 2 and len(features) == 6
    assert records.loc[0, "detail"] == "8 well(s) of training-side perturbations dropped; 8 kept"
    with pytest.raises(ValueError, match="step 'heldout' needs the fine-tuning split"):
        apply_chain(wells, ["heldout"])


def test_the_report_says_what_each_fine_tuned_set_is_and_where_it_is_scored():
    from paintbench.report.html import sources_html

    text = sources_html("encoders: {cpssl_random: {format: cellpaintssl, checkpoint: random}}\n"
                        "vit: {finetune: {methods: [dino], encoders: [cpssl_random]}}\n")
    for tuned, parent in (("vitdino_ft", "vitdino"), ("cpssl_random_ft", "cpssl_random")):
        assert f"<b>{tuned}</b>: {parent} fine-tuned to classify the perturbations of the split's training side" in text
    assert text.count("held-out perturbations only") == 2 and "<b>random weights</b>" in text
