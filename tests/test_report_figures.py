"""Report figures: each writes a readable PNG and a well-formed SVG from small synthetic inputs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from paintbench import CHANNELS
from paintbench.report.figures import (comparison_figure, condition_label, fraction_retrieved_figure,
                                       map_vs_p_figure, plate_heatmaps_figure, plt, save_figure)
from paintbench.report.image_figures import (composite, examples_figure, illumination_figure,
                                             reconstruction_figure, training_figure)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5,
            kwargs=dict(depth=1, embed_dim=48, num_heads=3))


def check_outputs(paths: list[Path], stem: Path) -> None:
    """PNG + SVG beside the stem, both complete, no temporary files left behind."""
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    png, svg = paths
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert matplotlib.image.imread(png).shape[1] > 400
    assert ET.parse(svg).getroot().tag.endswith("svg")
    assert not list(stem.parent.glob(".tmp-*"))


def summary_table() -> pd.DataFrame:
    rows = []
    for feature_set, shift in (("cellprofiler", 0.0), ("vitmae", 0.1), ("paper_cellprofiler", 0.05)):
        for modality, time in (("compound", 24), ("crispr", 144)):
            rows.append(dict(feature_set=feature_set, task="replicate_retrieval", Metadata_cell_type="A549",
                             Metadata_modality=modality, Metadata_timepoint=time, Metadata_matched_modality=None,
                             Metadata_matched_timepoint=None, n_perturbations=20 if shift != 0.05 else None,
                             mean_average_precision=0.3 + shift, fraction_retrieved=0.5 + shift))
        rows.append(dict(feature_set=feature_set, task="compound_gene_matching", Metadata_cell_type="A549",
                         Metadata_modality="compound", Metadata_timepoint=24, Metadata_matched_modality="crispr",
                         Metadata_matched_timepoint=144, n_perturbations=8 if shift != 0.05 else None,
                         mean_average_precision=0.1, fraction_retrieved=np.nan if shift == 0.05 else 0.2 + shift))
    table = pd.DataFrame(rows)
    # As build_summary writes it: nullable integers and strings holding pd.NA.
    table["Metadata_matched_timepoint"] = table["Metadata_matched_timepoint"].astype("Int64")
    table["Metadata_matched_modality"] = table["Metadata_matched_modality"].astype("string")
    table["n_perturbations"] = table["n_perturbations"].astype("Int64")
    return table


def per_perturbation(seed: int, n: int = 30, modality: str = "compound") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.uniform(1e-7, 1, n)
    return pd.DataFrame({"Metadata_cell_type": "A549", "Metadata_modality": modality, "Metadata_timepoint": 24,
                         "Metadata_broad_sample": [f"BRD-{i:03d}" for i in range(n)],
                         "Metadata_pert_iname": [f"drug{i}" if i % 3 else None for i in range(n)],
                         "Metadata_gene": [f"GENE{i}" for i in range(n)],
                         "mean_average_precision": rng.uniform(0, 1, n), "p_value": p,
                         "corrected_p_value": np.minimum(1, p * 3), "below_corrected_p": p * 3 < 0.05})


def test_condition_labels() -> None:
    """Whole hours ("144 h", never "144.0 h"); a plate group only where it departs from the benchmark plates."""
    assert condition_label({"Metadata_cell_type": "A549", "Metadata_modality": "compound", "Metadata_timepoint": 24.0,
                            "Metadata_plate_group": "benchmark", "Metadata_matched_modality": np.nan}) == "A549 compound 24 h"
    matched = pd.Series({"Metadata_cell_type": "A549", "Metadata_modality": "compound", "Metadata_timepoint": 48,
                         "Metadata_plate_group": "density 80", "Metadata_matched_modality": "crispr",
                         "Metadata_matched_timepoint": 144.0, "Metadata_matched_plate_group": "benchmark"})
    assert condition_label(matched) == "A549 compound 48 h (density 80) -> crispr 144 h"


def test_save_figure_atomic(tmp_path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    stem = tmp_path / "sub" / "line.with.dots"
    check_outputs(save_figure(fig, stem), stem)
    assert sorted(p.name for p in stem.parent.iterdir()) == ["line.with.dots.png", "line.with.dots.svg"]
    assert not plt.fignum_exists(fig.number)


def test_fraction_retrieved_and_map_vs_p(tmp_path: Path) -> None:
    check_outputs(fraction_retrieved_figure(summary_table(), tmp_path / "fr"), tmp_path / "fr")
    results = {"cellprofiler": per_perturbation(1), "vitmae": per_perturbation(2)}
    check_outputs(map_vs_p_figure(results, "replicate_retrieval", tmp_path / "mvp"), tmp_path / "mvp")


def test_comparison(tmp_path: Path) -> None:
    a = pd.concat([per_perturbation(1), per_perturbation(3, 10, "crispr")], ignore_index=True)
    b = pd.concat([per_perturbation(2), per_perturbation(4, 10, "crispr")], ignore_index=True)
    check_outputs(comparison_figure(a, b, "cellprofiler", "vitmae", tmp_path / "cmp"), tmp_path / "cmp")
    other = b.assign(Metadata_broad_sample="BRD-none")
    with pytest.raises(ValueError, match="cellprofiler.*vitmae"):
        comparison_figure(a, other, "cellprofiler", "vitmae", tmp_path / "none")


def test_plate_heatmaps_missing_well(tmp_path: Path) -> None:
    rows = [f"{chr(ord('A') + r)}{c + 1:02d}" for r in range(16) for c in range(24)]
    wells = pd.concat([pd.DataFrame({"Metadata_Plate": plate, "Metadata_Well": rows,
                                     "Metadata_Object_Count": np.arange(384.0) + k})
                       for k, plate in enumerate(["BR001", "BR002", "BR003", "BR004", "BR005"])])
    wells = wells[~((wells["Metadata_Plate"] == "BR001") & (wells["Metadata_Well"] == "C07"))]
    wells.loc[wells["Metadata_Well"] == "D05", "Metadata_Object_Count"] = np.nan
    stem = tmp_path / "cells"
    check_outputs(plate_heatmaps_figure(wells, stem, "Metadata_Object_Count", "cells per well"), stem)


def test_composite_colours() -> None:
    image = np.zeros((5, 16, 16), np.float16)
    image[0, 4:12, 4:12] = 3.0  # DNA only
    rgb = composite(image)
    assert rgb.shape == (16, 16, 3) and rgb.min() >= 0 and rgb.max() <= 1
    bright = rgb[8, 8]
    assert bright[2] > 0.9 and bright[0] < 0.1 and bright[1] < 0.1
    noisy = composite(np.random.default_rng(0).normal(size=(5, 20, 20)) * 100)
    assert 0 <= noisy.min() and noisy.max() <= 1


def test_illumination(tmp_path: Path) -> None:
    for plate in ("P1", "P2"):
        (tmp_path / "illum" / plate).mkdir(parents=True)
        for k, channel in enumerate(CHANNELS):
            yy, xx = np.mgrid[0:40, 0:50]
            np.save(tmp_path / "illum" / plate / f"{plate}_Illum{channel}.npy",
                    1 + 0.1 * k + 0.01 * np.hypot(yy - 20, xx - 25))
    functions = {p: {c: tmp_path / "illum" / p / f"{p}_Illum{c}.npy" for c in CHANNELS} for p in ("P1", "P2")}
    check_outputs(illumination_figure(functions, ["P1", "P2"], tmp_path / "illum_fig"), tmp_path / "illum_fig")
    (tmp_path / "illum" / "P2" / "P2_IllumAGP.npy").unlink()
    with pytest.raises(FileNotFoundError, match="P2_IllumAGP.npy"):
        illumination_figure(functions, ["P1", "P2"], tmp_path / "again")


class RandomCrops(Dataset):
    def __init__(self, n: int) -> None:
        self.data = torch.rand(n, 5, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_training_and_reconstruction(tmp_path: Path, norm_pix_loss: bool) -> None:
    from paintbench.report.image_figures import _reconstruct
    from paintbench.vit.train import pretrain

    out = tmp_path / "mae"
    pretrain(RandomCrops(8), TINY, out, steps=2, batch_size=4, lr=1e-3, warmup_steps=1, checkpoint_every=2, seed=0,
             device="cpu", settings=dict(decoder_dim=32, decoder_depth=1, decoder_heads=2, norm_pix_loss=norm_pix_loss), progress=False)
    check_outputs(training_figure(out / "train_log.tsv", tmp_path / "train"), tmp_path / "train")
    crops = np.random.default_rng(1).normal(size=(3, 5, 40, 40)).astype(np.float16)  # resized to 32
    check_outputs(reconstruction_figure(out / "checkpoint.pt", crops, tmp_path / "recon"), tmp_path / "recon")
    # Visible patches come from the input unchanged; about 3/4 of the pixels are hidden.
    original, recon, hidden, patch = _reconstruct(out / "checkpoint.pt", crops, 0.75, 0)
    assert original.shape == recon.shape == (3, 5, 32, 32) and hidden.shape == (3, 32, 32) and patch == 8
    assert np.array_equal(original.transpose(1, 0, 2, 3)[:, ~hidden], recon.transpose(1, 0, 2, 3)[:, ~hidden])
    assert hidden.mean() == 0.75 and np.isfinite(recon).all()


def test_training_log_without_steps(tmp_path: Path) -> None:
    log = tmp_path / "train_log.tsv"
    log.write_text("step\tloss\tlr\tseconds\n")
    check_outputs(training_figure(log, tmp_path / "empty"), tmp_path / "empty")


def test_examples(tmp_path: Path) -> None:
    crops = np.random.default_rng(2).uniform(size=(8, 5, 24, 24)).astype(np.float16)
    groups = [("EZH2 crispr  mAP 0.95", crops), ("drug1 compound  mAP 0.40", crops[:2]),
              ("GENE9 orf", np.zeros((0, 5, 24, 24), np.float16))]
    check_outputs(examples_figure(groups, tmp_path / "ex", "Strongest perturbations"), tmp_path / "ex")
