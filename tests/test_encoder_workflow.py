"""External encoders and precomputed embeddings through the workflow, on the small demo run: the demo's
CellPaintSSL-format encoder (random weights) is a feature set like the others, and a table of our own embeddings
read back as precomputed embeddings scores exactly as the feature set it came from."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from tests.helpers import snakemake

pytestmark = pytest.mark.slow  # reads and extends the small demo run

ENCODER = "cpssl_random"


def test_the_external_encoder_is_a_feature_set_of_the_run(small_demo_run):
    config, results = small_demo_run
    plates = yaml.safe_load(open(config))["plates"]
    for plate in plates:
        wells = pd.read_parquet(results / "profiles" / ENCODER / f"{plate}.parquet")
        ours = pd.read_parquet(results / "profiles" / "vitdino" / f"{plate}.parquet")
        assert sorted(wells["Metadata_Well"]) == sorted(ours["Metadata_Well"])  # every well of the run
        assert wells.filter(like="emb_").shape[1] == 384  # ViT-S
        assert (wells["Metadata_Object_Count"] >= 1).all()  # a field without foreground keeps its middle tile
        assert (results / "qc" / plate / "encoder_embed.tsv").exists()
    log = (results / "logs" / "encoder_embed" / f"{plates[0]}.log").read_text()
    assert "rerun this stage with: python -m paintbench encoder-embed" in log and '"checkpoint": "random"' in log
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    rows = summary[(summary["feature_set"] == ENCODER) & (summary["task"] == "replicate_retrieval")]
    assert set(rows["chain"]) == {"mad", "mad_sphering"} and (rows["n_perturbations"] > 0).all()
    page = (results / "reports" / "index.html").read_text()
    assert f"<b>{ENCODER}</b>: external encoder, format cellpaintssl dino, <b>random weights</b>" in page


def test_our_embeddings_read_back_as_precomputed_score_the_same(small_demo_run, tmp_path):
    """vitdino's well profiles written out as one user table, read back as the feature set `mine`: identical
    well profiles, and identical replicate retrieval under the same chain (mAP, p and q of every perturbation)."""
    config, results = small_demo_run
    settings = yaml.safe_load(open(config))
    tables = [pd.read_parquet(results / "profiles" / "vitdino" / f"{plate}.parquet") for plate in settings["plates"]]
    table = tmp_path / "mine.csv.gz"
    pd.concat(tables, ignore_index=True).to_csv(table, index=False)
    extra = tmp_path / "precomputed.yaml"
    extra.write_text(yaml.safe_dump({"precomputed": {"mine": {"path": str(table), "chains": ["mad"]}}}))
    target = results / "retrieval" / "mine" / "mad" / "replicate_retrieval.parquet"
    snakemake([str(target), "--cores", "2", "--configfile", config, str(extra)], cwd=results.parent)
    for plate, ours in zip(settings["plates"], tables):
        back = pd.read_parquet(results / "profiles" / "mine" / f"{plate}.parquet")
        pd.testing.assert_frame_equal(back.drop(columns="Metadata_Object_Count"),
                                      ours.drop(columns="Metadata_Object_Count"), check_dtype=False, atol=1e-6)
    mine = pd.read_parquet(target).sort_values(["Metadata_modality", "Metadata_broad_sample"]).reset_index(drop=True)
    dino = pd.read_parquet(results / "retrieval" / "vitdino" / "mad" / "replicate_retrieval.parquet").sort_values(
        ["Metadata_modality", "Metadata_broad_sample"]).reset_index(drop=True)
    for column in ("mean_average_precision", "p_value", "corrected_p_value"):
        pd.testing.assert_series_equal(mine[column], dino[column], atol=1e-6)
