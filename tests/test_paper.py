"""`config/paper.yaml` end to end on a loopback S3 server: the paper's 40 benchmark plates as published profile
tables (the Gallery's file names and format, planted phenotypes inside), no images, the cpjump1 protocol, and a
summary that puts every condition beside the paper's value."""

from __future__ import annotations

import gzip
import io
import json

import boto3
import numpy as np
import pandas as pd
import pytest
import yaml

from paintbench.metadata import paper_plates, plate_info, plate_layout
from paintbench.published import published_key
from paintbench.synthetic import PARAMETERS, ground_truth
from tests.helpers import snakemake

pytestmark = pytest.mark.slow  # the paper's 40 published tables through the workflow

PLATEMAPS = ["JUMP-Target-1_compound_platemap", "JUMP-Target-1_crispr_platemap", "JUMP-Target-1_orf_platemap"]
N_FEATURES = 24


def published_tables(plates: list[str], seed: int = 0) -> dict[str, bytes]:
    """One gzipped CSV per plate like `<plate>_normalized_feature_select_negcon_batch.csv.gz`: the platemap's
    Metadata_ columns and CellProfiler-named features = planted effect (mixed) + well noise."""
    truth = ground_truth(PLATEMAPS, seed=7, strong_fraction=0.4, null_fraction=0.3, effect_scale=0.8)
    effects = truth.set_index(["Metadata_modality", "Metadata_broad_sample"])[[f"effect_{p}" for p in PARAMETERS]]
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(len(PARAMETERS), N_FEATURES))
    names = [f"Cells_Feature_{i:02d}" for i in range(N_FEATURES)]
    tables = {}
    for plate in plates:
        layout = plate_layout(plate)
        keys = list(zip(layout["Metadata_modality"], layout["Metadata_broad_sample"]))
        effect = effects.reindex(keys).fillna(0).to_numpy()
        values = (effect + rng.normal(0, 0.3, effect.shape)) @ mixing + rng.normal(0, 0.6, (len(layout), N_FEATURES))
        table = pd.concat([layout[["Metadata_Plate", "Metadata_Well", "Metadata_broad_sample"]].rename(
            columns={"Metadata_broad_sample": "Metadata_broad_sample"}), pd.DataFrame(values, columns=names)], axis=1)
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb") as handle:
            handle.write(table.to_csv(index=False).encode())
        tables[plate] = buffer.getvalue()
    return tables


@pytest.fixture(scope="module")
def paper_run(s3_gallery, tmp_path_factory):
    admin = boto3.client("s3", endpoint_url=s3_gallery.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    for plate, body in published_tables(paper_plates()).items():
        admin.put_object(Bucket=s3_gallery.bucket, Key=published_key(s3_gallery.prefix, plate_info(plate).batch, plate),
                         Body=body, ACL="public-read")
    folder = tmp_path_factory.mktemp("paper")
    override = folder / "loopback.yaml"
    override.write_text(yaml.safe_dump({"endpoint_url": s3_gallery.endpoint_url, "data_dir": str(folder / "data"),
                                        "results_dir": str(folder / "results"),
                                        "retrieval": {"null_size": 2000}}))
    from tests.helpers import REPO

    snakemake(["--cores", "2", "--configfile", str(REPO / "config" / "paper.yaml"), str(override)], cwd=folder,
              timeout=1200)
    return folder


def test_paper_config_scores_every_condition_beside_the_paper(paper_run):
    results = paper_run / "results"
    summary = pd.read_csv(results / "reports" / "summary.tsv", sep="\t")
    ours = summary[summary["row_kind"] == "published_profiles"]
    paper = summary[summary["row_kind"] == "paper"]
    assert set(ours["feature_set"]) == {"published_cellprofiler"} and set(ours["protocol"]) == {"cpjump1"}
    counts = ours.groupby("task").size().to_dict()
    assert counts == {"replicate_retrieval": 12, "sister_matching": 8, "compound_gene_matching": 16}
    assert len(paper) == 36 and paper["comparable"].all()  # every condition has the paper's value beside it
    keys = ["task", "condition"]
    assert ours[keys].merge(paper[keys]).shape[0] == 36
    # The paper's denominators: 306 compounds, 305 guides, 160 ORFs per condition, positive controls included.
    replicate = ours[ours["task"] == "replicate_retrieval"].set_index("Metadata_modality")["n_perturbations"]
    assert replicate.groupby(level=0).unique().map(list).to_dict() == {"compound": [306], "crispr": [305], "orf": [160]}
    # The planted phenotypes are found, and every value is a number with its interval.
    assert ours.loc[ours["task"] == "replicate_retrieval", "fraction_retrieved"].min() > 0.2
    assert ours["fraction_retrieved_low"].notna().all() and (ours["fraction_retrieved_low"] <= ours["fraction_retrieved"]).all()


def test_paper_run_reads_no_image_and_draws_the_comparison(paper_run):
    results = paper_run / "results"
    assert not (paper_run / "data" / "images").exists() and not (results / "illum").exists()
    assert len(list((paper_run / "data" / "published_profiles").glob("*.csv.gz"))) == 40
    manifest = json.loads((results / "reports" / "figures" / "figures.json").read_text())
    assert "paper_comparison" in [figure["stem"] for figure in manifest]
    assert (results / "reports" / "figures" / "paper_comparison.png").stat().st_size > 10_000
    page = (results / "reports" / "index.html").read_text()
    assert "This run is comparable with them" in page and "cpjump1" in page
    ap = pd.read_parquet(results / "retrieval" / "published_cellprofiler" / "none" / "compound_gene_matching_ap.parquet")
    # paper_code negatives: each compound query's list holds every reagent of the other modality plus its positives.
    compound = ap[ap["Metadata_query_modality"] == "compound"]
    assert (compound["n_total_pairs"] > compound["n_pos_pairs"]).all()
