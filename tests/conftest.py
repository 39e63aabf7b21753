"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import io
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------
# S3: a moto server on loopback holding a public Cell Painting Gallery look-alike bucket
# --------------------------------------------------------------------------------------------
# Real key layout: {prefix}/images/{batch}/images/{plate}__{timestamp}-Measurement1/Images/<file>.
# Plates:
#   BR00116991  3 wells x 2 sites x 5 channels of tiny uint16 TIFFs, plus Index.idx.xml and a
#               plane-2 image that downloads must ignore
#   BR00116992  another barcode with its own timestamp (a few files)
#   BR00117000  two Measurement folders: the later one must be chosen
#   BR00199999  one valid image plus a key that climbs out of Images/ ('../../evil.tiff')

GALLERY_BUCKET = "cellpainting-gallery"
GALLERY_PREFIX = "cpg0000-jump-pilot/source_4"
GALLERY_BATCH = "2020_11_04_CPJUMP1"


@dataclass
class S3Gallery:
    endpoint_url: str
    bucket: str = GALLERY_BUCKET
    prefix: str = GALLERY_PREFIX
    batch: str = GALLERY_BATCH
    plate: str = "BR00116991"
    folder: str = ""  # the plate's '...-Measurement1/' folder key
    wells: list[str] = field(default_factory=lambda: ["A01", "B02", "P24"])
    sites: list[int] = field(default_factory=lambda: [1, 2])
    channels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    objects: dict[str, bytes] = field(default_factory=dict)  # every key put -> its bytes

    def plate_folder(self, plate: str, timestamp: str) -> str:
        return f"{self.prefix}/images/{self.batch}/images/{plate}__{timestamp}-Measurement1/"

    @property
    def images_prefix(self) -> str:
        return f"{self.folder}Images/"


def _tiny_tiff(seed: int, size: int = 16) -> bytes:
    import tifffile

    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, rng.integers(0, 4096, (size, size), dtype=np.uint16))
    return buffer.getvalue()


def _public_policy(bucket: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicRead",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
    )


@pytest.fixture(scope="session")
def s3_gallery():
    """A moto S3 server on 127.0.0.1 (free port) with a public `cellpainting-gallery` bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    from paintbench.layout import image_filename

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        gallery = S3Gallery(endpoint_url=f"http://{host}:{port}")
        admin = boto3.session.Session().client(
            "s3",
            endpoint_url=gallery.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        admin.create_bucket(Bucket=gallery.bucket, ACL="public-read")
        admin.put_bucket_policy(Bucket=gallery.bucket, Policy=_public_policy(gallery.bucket))

        def put(key: str, body: bytes) -> None:
            admin.put_object(Bucket=gallery.bucket, Key=key, Body=body, ACL="public-read")
            gallery.objects[key] = body

        seed = 0
        gallery.folder = gallery.plate_folder(gallery.plate, "2020-11-05T19_51_35")
        for well in gallery.wells:
            for site in gallery.sites:
                for channel in gallery.channels:
                    seed += 1
                    put(f"{gallery.images_prefix}{image_filename(well, site, channel)}", _tiny_tiff(seed))
        put(f"{gallery.images_prefix}Index.idx.xml", b"<?xml version='1.0'?><EvaluationInputData/>")
        put(f"{gallery.images_prefix}{image_filename('A01', 1, 1, plane=2)}", _tiny_tiff(999))

        other = gallery.plate_folder("BR00116992", "2020-11-06T01_02_03")
        for channel in (1, 2):
            put(f"{other}Images/{image_filename('A01', 1, channel)}", _tiny_tiff(1000 + channel))

        for n, timestamp in enumerate(("2020-11-05T10_00_00", "2020-12-01T08_30_00")):
            put(f"{gallery.plate_folder('BR00117000', timestamp)}Images/{image_filename('A01', 1, 1)}", _tiny_tiff(2000 + n))

        evil = gallery.plate_folder("BR00199999", "2020-11-05T00_00_00")
        put(f"{evil}Images/{image_filename('A01', 1, 1)}", _tiny_tiff(3000))
        put(f"{evil}Images/../../evil.tiff", _tiny_tiff(3001))

        yield gallery
    finally:
        server.stop()


@pytest.fixture
def fault_proxy(s3_gallery):
    """Factory: `fault_proxy(fail_every=3, truncate_every=4, chunk_delay=...)` -> a started FaultProxy."""
    from tests.s3_fault_proxy import FaultProxy

    started: list[FaultProxy] = []

    def make(**options) -> FaultProxy:
        proxy = FaultProxy(s3_gallery.endpoint_url, **options).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


# --------------------------------------------------------------------------------------------
# A real LINCS plate (Cell Painting profiles of 58 compounds with DMSO controls) for the metric oracles
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lincs():
    """(profiles with row_id and a boolean control column, feature names) of the LINCS plate in tests/data."""
    import pandas as pd

    from tests.helpers import LINCS_PLATE, PERT

    df = pd.read_csv(LINCS_PLATE)
    feats = [c for c in df.columns if not c.startswith("Metadata_")]
    meta = df.drop(columns=feats).assign(row_id=np.arange(len(df)), control=df[PERT].eq("DMSO"))
    return pd.concat([meta, df[feats]], axis=1), feats


# --------------------------------------------------------------------------------------------
# A small demo run through both branches to the report: shared by the report and cluster tests
# --------------------------------------------------------------------------------------------
# Two replicate plates per modality: the smallest layout on which every task has something to score.
SMALL_DEMO_PLATES = ["BR00116991", "BR00116992", "BR00117000", "BR00117003", "BR00117020", "BR00117021"]


SMALL_DEMO_GENES = ["EZH2", "PTPN2", "FOXM1", "CSK", "PLK1", "BRD4"]


def small_demo_config(folder, **overrides) -> str:
    """config/demo.yaml (its planted classes and position artefact, BI-2536's pattern) cut to six of its genes, 4
    controls per plate, two replicate plates per modality and 128 px fields: 120 fields.

    Too few controls and replicates for any permutation p-value to reach q < 0.05 (replicate retrieval's
    smallest p is 1/5), so sister matching is empty: the report must show that as zero rows. The compound-gene
    pairs are enough for the polypharmacology call (54 unrelated pairs per condition)."""
    import yaml

    from tests.helpers import REPO

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    config.update(plates=SMALL_DEMO_PLATES, negcon_wells=4, genes=SMALL_DEMO_GENES, data_dir=str(folder / "data"),
                  results_dir=str(folder / "results"))
    classes = config["synthetic"]["gene_classes"]
    config["synthetic"].update(field_size=128, cells_per_field=14,
                               gene_classes={gene: classes[gene] for gene in SMALL_DEMO_GENES})
    config["vit"].update(steps=60, warmup_steps=5, checkpoint_every=30)
    for method in ("dino", "simclr"):  # every method at vit.steps
        config["vit"][method]["steps"] = None
    config["retrieval"] = {"null_size": 5000, "seed": 0}
    config.update(overrides)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="session")
def small_demo_run(tmp_path_factory):
    """(config path, results dir) of a finished small demo run, built once per test session (~4 min on 2 cores)."""
    from tests.helpers import snakemake

    # PAINTBENCH_SMALL_DEMO=DIR keeps the run in DIR between sessions: Snakemake then reruns only what changed.
    kept = os.environ.get("PAINTBENCH_SMALL_DEMO")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("small_demo")
    folder.mkdir(parents=True, exist_ok=True)
    config = small_demo_config(folder)
    snakemake(["--cores", "2", "--configfile", config], cwd=folder, timeout=1800)
    return config, folder / "results"
