"""The `local` source on a real, LZW-compressed Cell Painting field with its own channel map."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile

from paintbench.cli import main as paintbench
from tests.helpers import REAL_CHANNELS, REAL_SITE, REPO, snakemake

# This plate's channels are not CPJUMP1's: ch1 Brightfield, ch2 ER, ch3 AGP, ch4 Mito, ch5 DNA, ch6 RNA.
REAL_CHANNELS = {**REAL_CHANNELS, "Brightfield": 1}


@pytest.fixture
def user_metadata(tmp_path):
    """A metadata folder that knows the user's own plate (mapped onto a JUMP-Target platemap)."""
    folder = tmp_path / "metadata"
    shutil.copytree(REPO / "config" / "metadata", folder)
    plates = pd.read_csv(folder / "experiment-metadata.tsv", sep="\t")
    extra = plates.iloc[[0]].assign(Assay_Plate_Barcode="BR00143976", Number_of_images=384 * 9 * 6)
    pd.concat([plates, extra]).to_csv(folder / "experiment-metadata.tsv", sep="\t", index=False)
    return folder


def test_local_source_reads_the_real_field_in_place(tmp_path, user_metadata):
    output = tmp_path / "load_data.csv"
    channels = ",".join(f"{k}={v}" for k, v in REAL_CHANNELS.items())
    status = paintbench([
        "download", "--source", "local", "--plate", "BR00143976", "--wells", "C03", "--sites", "3",
        "--channels", channels, "--image-dir", str(REAL_SITE), "--metadata-dir", str(user_metadata),
        "--output", str(output),
    ])
    assert status == 0
    table = pd.read_csv(output)
    assert table[["Metadata_Plate", "Metadata_Well", "Metadata_Site"]].values.tolist() == [["BR00143976", "C03", 3]]
    assert table.loc[0, "FileName_OrigDNA"] == "r03c03f03p01-ch5sk1fk1fl1.tiff"
    assert table.loc[0, "FileName_OrigRNA"] == "r03c03f03p01-ch6sk1fk1fl1.tiff"
    assert table.loc[0, "FileName_OrigBrightfield"] == "r03c03f03p01-ch1sk1fk1fl1.tiff"
    # Read in place, not copied, and decodable (LZW needs imagecodecs).
    dna_path = REAL_SITE / table.loc[0, "FileName_OrigDNA"]
    assert table.loc[0, "PathName_OrigDNA"] == str(REAL_SITE.resolve())
    with tifffile.TiffFile(dna_path) as tiff:
        assert tiff.pages[0].compression == 5  # LZW
        dna = tiff.asarray()
    assert dna.dtype == np.uint16 and dna.shape == (540, 540) and dna.max() > 10 * np.median(dna)


def test_local_source_names_the_missing_channel(tmp_path, user_metadata):
    images = tmp_path / "images"
    shutil.copytree(REAL_SITE, images)
    (images / "r03c03f03p01-ch4sk1fk1fl1.tiff").unlink()
    channels = ",".join(f"{k}={v}" for k, v in REAL_CHANNELS.items())
    output = tmp_path / "load_data.csv"
    args = ["download", "--source", "local", "--plate", "BR00143976", "--wells", "C03", "--sites", "3",
            "--channels", channels, "--image-dir", str(images), "--metadata-dir", str(user_metadata),
            "--output", str(output)]
    assert paintbench(args) == 3  # DETERMINISTIC_EXIT: a missing image cannot appear on a retry
    assert not output.exists()


@pytest.mark.slow
def test_local_source_through_snakemake(tmp_path, user_metadata):
    channels = "{" + ", ".join(f"{k}: {v}" for k, v in REAL_CHANNELS.items()) + "}"
    snakemake([
        str(tmp_path / "results" / "load_data" / "BR00143976.csv"),
        "--cores", "1", "--configfile", str(REPO / "config" / "demo.yaml"),
        # C03 (the real field, DMSO) and A02, another DMSO well without images: normalization needs two negative
        # controls per plate (checked before any job), and the missing field is a recorded hole
        "--config", "source=local", "plates=[BR00143976]", "wells=[C03,A02]", "sites=[3]", "genes=null",
        "qc={max_missing_fraction: 0.5}",
        f"channels={channels}", f"metadata_dir={user_metadata}", f"local={{image_dir: {REAL_SITE}}}",
        f"results_dir={tmp_path / 'results'}",
    ], cwd=tmp_path)
    table = pd.read_csv(tmp_path / "results" / "load_data" / "BR00143976.csv")
    assert len(table) == 1 and table.loc[0, "FileName_OrigMito"] == "r03c03f03p01-ch4sk1fk1fl1.tiff"
    log = (tmp_path / "results" / "logs" / "download" / "BR00143976.log").read_text()
    command = log.split("rerun this stage with: ", 1)[1].splitlines()[0]
    assert command.startswith("python -m paintbench download ") and "--source local" in command
    assert "--plate BR00143976" in command
