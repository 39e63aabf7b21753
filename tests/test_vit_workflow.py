"""The ViT branch through Snakemake: crops -> MAE pretraining -> embeddings, GPU resources declared."""

from __future__ import annotations

import pytest

import pandas as pd
import torch
import yaml

from paintbench.vit import build_encoder
from tests.helpers import REPO, snakemake

pytestmark = pytest.mark.slow  # the ViT branch through Snakemake

PLATE = "BR00117000"


def demo_config(tmp_path, **vit) -> str:
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(plates=[PLATE], data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"))
    config["vit"].update(steps=12, checkpoint_every=6, warmup_steps=2, **vit)
    for method in ("dino", "simclr"):
        config["vit"][method]["steps"] = None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_vit_branch_pretrains_and_embeds_one_plate(tmp_path):
    target = str(tmp_path / "results" / "profiles" / "vitmae" / f"{PLATE}.parquet")
    for device, gpus in (("auto", "gpu=1"), ("cpu", "gpu=0")):  # a CPU-only run's ViT jobs take no GPU slot
        dry = snakemake([target, "-n", "--cores", "2", "--configfile", demo_config(tmp_path, device=device)], cwd=tmp_path)
        for rule in ("vit_pretrain", "vit_embed"):
            block = dry.stdout.split(f"rule {rule}:")[1].split("\n\n")[0]
            assert gpus in block, f"{rule} on {device}: {block}"
    snakemake([target, "--cores", "2", "--configfile", demo_config(tmp_path)], cwd=tmp_path)
    wells = pd.read_parquet(target)
    crops = pd.read_parquet(tmp_path / "results" / "vit" / "crops" / f"{PLATE}.centres.parquet")
    assert wells["Metadata_Well"].tolist() == sorted(crops["Metadata_Well"].unique())
    assert wells["Metadata_Object_Count"].tolist() == crops.groupby("Metadata_Well").size().sort_index().tolist()
    embedding = [c for c in wells.columns if c.startswith("emb_")]
    assert len(embedding) == 192 and wells[embedding].notna().all().all()
    log = pd.read_csv(tmp_path / "results" / "vit" / "mae" / "train_log.tsv", sep="\t")
    assert log["step"].max() == 12 and log["step"].is_unique


def test_user_checkpoint_skips_pretraining(tmp_path):
    encoder = build_encoder("vit_tiny_patch16_224", 32, 8, kwargs={"depth": 3})
    checkpoint = tmp_path / "my_encoder.pth"
    torch.save(encoder.state_dict(), checkpoint)  # a plain timm state_dict, as a user would bring
    target = str(tmp_path / "results" / "profiles" / "vitmae" / f"{PLATE}.parquet")
    dry = snakemake([target, "-n", "--cores", "2", "--configfile", demo_config(tmp_path, mae={"checkpoint": str(checkpoint)})],
                    cwd=tmp_path)
    # The plate's one embedding job also needs the methods still pretrained here (dino, simclr), not mae.
    assert "rule vit_embed:" in dry.stdout and "method=dino" in dry.stdout
    assert "method=mae" not in dry.stdout
