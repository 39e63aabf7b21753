"""The consortium's published profiles as a feature set, fetched from a loopback S3 server in the Gallery layout."""

from __future__ import annotations

import gzip
import io

import boto3
import numpy as np
import pandas as pd
import pytest

from paintbench.cli import main as paintbench
from paintbench.metadata import plate_layout
from paintbench.published import published_key

PLATES = ["BR00116991", "BR00116992"]


def published_table(plate: str, seed: int) -> bytes:
    """A small table in the published file's format: Metadata_ columns (theirs) + normalized features."""
    rng = np.random.default_rng(seed)
    layout = plate_layout(plate).head(40)
    table = pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": layout["Metadata_Well"],
                          "Metadata_broad_sample": layout["Metadata_broad_sample"], "Metadata_pert_type": "x",
                          "Cells_AreaShape_Area": rng.normal(size=40), "Nuclei_Texture_Contrast": rng.normal(size=40)})
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as handle:
        handle.write(table.to_csv(index=False).encode())
    return buffer.getvalue()


def test_published_profiles_become_a_feature_set(s3_gallery, tmp_path):
    admin = boto3.client("s3", endpoint_url=s3_gallery.endpoint_url, region_name="us-east-1",
                         aws_access_key_id="testing", aws_secret_access_key="testing")
    for i, plate in enumerate(PLATES):
        admin.put_object(Bucket=s3_gallery.bucket, Key=published_key(s3_gallery.prefix, s3_gallery.batch, plate),
                         Body=published_table(plate, i), ACL="public-read")
    output = tmp_path / "scored.parquet"
    args = ["published-profiles", "--plates", *PLATES, "--endpoint-url", s3_gallery.endpoint_url,
            "--cache-dir", str(tmp_path / "cache"), "--output", str(output)]
    assert paintbench(args) == 0
    profiles = pd.read_parquet(output)
    assert len(profiles) == 80 and set(profiles["Metadata_Plate"]) == set(PLATES)
    assert [c for c in profiles.columns if not c.startswith("Metadata_")] == ["Cells_AreaShape_Area", "Nuclei_Texture_Contrast"]
    # Annotation comes from the bundled metadata, not from the file's own Metadata_ columns.
    assert set(profiles["Metadata_pert_type"]) <= {"trt", "control"} and (profiles["Metadata_modality"] == "compound").all()
    assert (profiles.loc[profiles["Metadata_broad_sample"] == "DMSO", "Metadata_control_type"] == "negcon").all()
    # A rerun reuses the downloaded files (resume), a missing plate names its key (BR00117001 is not a paper
    # plate, so the session's other tests never upload it).
    assert paintbench(args) == 0
    with pytest.raises(Exception, match="no published profiles at .*BR00117001_normalized_feature_select_negcon_batch.csv.gz"):
        from paintbench.published import fetch_published

        fetch_published(["BR00117001"], [s3_gallery.batch], tmp_path, s3_gallery.bucket, s3_gallery.prefix,
                        s3_gallery.endpoint_url)
