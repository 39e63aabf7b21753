"""The consortium's published well-level CellProfiler profiles as a feature set of their own.

`workspace/profiles/<batch>/<plate>/<plate>_normalized_feature_select_negcon_batch.csv.gz` on the Gallery is
already normalized (to the plate's negative controls) and feature-selected (across the batch), so it goes straight
to retrieval. Scoring it reproduces the paper's numbers and checks the metric stage end to end, independent of
this pipeline's image processing.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd

from paintbench.profiles import annotate, feature_columns

log = logging.getLogger(__name__)

SUFFIX = "_normalized_feature_select_negcon_batch.csv.gz"


def published_key(gallery_prefix: str, batch: str, plate: str) -> str:
    return f"{gallery_prefix}/workspace/profiles/{batch}/{plate}/{plate}{SUFFIX}"


def fetch_published(plates: list[str], batches: list[str], folder: Path, bucket: str, gallery_prefix: str,
                    endpoint_url: str | None = None, anonymous: bool = True, max_attempts: int = 6) -> list[Path]:
    """Download each plate's published profile table (resumable, atomic, like the images)."""
    from paintbench.s3 import DownloadError, download_file, list_objects, make_client

    client = make_client(endpoint_url, anonymous, max_attempts, workers=2)
    paths = []
    for plate, batch in zip(plates, batches):
        key = published_key(gallery_prefix, batch, plate)
        listed = [obj for obj in list_objects(client, bucket, key) if obj.key == key]
        if not listed:
            raise DownloadError(f"plate {plate}: no published profiles at s3://{bucket}/{key}")
        target = folder / Path(key).name
        if not (target.is_file() and target.stat().st_size == listed[0].size):
            download_file(client, bucket, listed[0], target, max_attempts)
        paths.append(target)
    return paths


def published_profiles(tables: list[pd.DataFrame], metadata_dir: str | Path | None = None) -> pd.DataFrame:
    """Keep the published features; take every Metadata_ annotation from the bundled metadata, so the
    retrieval tasks see the same columns as for the pipeline's own feature sets."""
    wells = pd.concat(tables, ignore_index=True)
    features = feature_columns(wells)
    keys = wells[["Metadata_Plate", "Metadata_Well"]].astype(str)
    return annotate(pd.concat([keys, wells[features]], axis=1), metadata_dir)


def build_published(plates: list[str], batches: list[str], output: Path, bucket: str, gallery_prefix: str,
                    endpoint_url: str | None = None, anonymous: bool = True, metadata_dir: str | Path | None = None,
                    cache_dir: Path | None = None) -> pd.DataFrame:
    from paintbench.atomic import write_table

    folder = cache_dir or Path(tempfile.mkdtemp(prefix="paintbench-published-"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = fetch_published(plates, batches, folder, bucket, gallery_prefix, endpoint_url, anonymous)
    profiles = published_profiles([pd.read_csv(p, low_memory=False) for p in paths], metadata_dir)
    write_table(profiles, output)
    log.info("published profiles: %d wells x %d features -> %s", len(profiles), len(feature_columns(profiles)), output)
    return profiles
