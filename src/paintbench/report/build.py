"""The report's figures from a finished run's files, each with a title and a one-sentence caption.

`make_figures` reads only what earlier stages wrote (retrieval results, well profiles, illumination functions,
crop caches, the MAE's log and checkpoint) and returns a manifest (one entry per figure: file stem, section,
title, caption) that the HTML report and Snakemake's report share.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.atomic import atomic_path, read_table
from paintbench.report.figures import (comparison_figure, fraction_retrieved_figure, map_vs_p_figure,
                                       plate_heatmaps_figure)
from paintbench.report.image_figures import (examples_figure, illumination_figure, reconstruction_figure,
                                             training_figure)
from paintbench.report.reference import paper_comparison_figure, paper_differences
from paintbench.report.summary import REFERENCE, TASKS, result_path
from paintbench.report.targets import polypharmacology_figure, shortlist_figure, target_files
from paintbench.retrieval import PERT

log = logging.getLogger(__name__)

MANIFEST = "figures.json"
TASK_TITLES = {"replicate_retrieval": "replicate retrieval", "sister_matching": "sister matching",
               "compound_gene_matching": "compound-gene matching"}
EXAMPLES_PER_GROUP = 6


@dataclass(frozen=True)
class Figure:
    stem: str  # file name without .png / .svg, inside the figures folder
    section: str
    title: str
    caption: str


def _retrieval_figures(results_dir: Path, feature_sets: list[str], summary: pd.DataFrame, out: Path) -> list[Figure]:
    figures = []
    fraction_retrieved_figure(summary, out / "fraction_retrieved")
    figures.append(Figure("fraction_retrieved", "Retrieval", "Fraction retrieved per task and condition",
                          "Share of scored units (perturbations; target genes or genes for the matching tasks) "
                          "retrieved at BH q < 0.05 for each feature set, with 95% Wilson intervals; black diamonds "
                          "are the CPJUMP1 paper's CellProfiler values where this run is comparable with them."))
    if not paper_differences(summary).empty:
        paper_comparison_figure(summary, out / "paper_comparison")
        figures.append(Figure("paper_comparison", "Retrieval", "This run against the CPJUMP1 paper",
                              "Fraction retrieved per task and condition of every comparable feature set (dots, 95% "
                              "intervals) and the paper's CellProfiler value (black diamonds); labels give the largest "
                              "absolute difference. The paper's own reruns differ by about 0.01."))
    for task in TASKS:
        results = {fs: read_table(result_path(results_dir, fs, task)) for fs in feature_sets}
        results = {fs: table for fs, table in results.items() if not table.empty}
        if not results:
            continue
        map_vs_p_figure(results, task, out / f"map_vs_p_{task}")
        figures.append(Figure(f"map_vs_p_{task}", "Retrieval", f"mAP and significance: {TASK_TITLES[task]}",
                              "Each point is a perturbation: its mAP against -log10 of its permutation p-value; "
                              "coloured points are retrieved (q < 0.05)."))
    replicate = {fs: read_table(result_path(results_dir, fs, "replicate_retrieval")) for fs in feature_sets}
    for a, b in zip(feature_sets, feature_sets[1:]):
        try:
            comparison_figure(replicate[a], replicate[b], a, b, out / f"compare_{a}_vs_{b}")
        except ValueError as error:
            log.warning("no comparison figure of %s and %s: %s", a, b, error)
            continue
        figures.append(Figure(f"compare_{a}_vs_{b}", "Retrieval", f"Who wins where: {a} vs {b}",
                              f"Replicate-retrieval mAP per perturbation with {a} (x) and {b} (y); points above the "
                              "diagonal are better retrieved by the latter, the largest differences are labelled."))
    return figures


def _target_figures(results_dir: Path, feature_sets: list[str], summary: pd.DataFrame, out: Path) -> list[Figure]:
    present = [fs for fs in feature_sets if target_files(results_dir, fs)["summary"].exists()]
    if not present or not (summary["task"].isin(["target_identification", "virtual_screening"])
                           & (summary["n_perturbations"] > 0)).any():
        return []
    shortlist_figure(summary, out / "shortlists")
    figures = [Figure("shortlists", "Target identification", "Shortlist quality per feature set",
                      "Recall@k of target identification (a compound's annotated targets among its k closest genes) "
                      "and virtual screening (a gene's annotated compounds among its k closest compounds), pooled "
                      "over conditions; black ticks: random shortlists.")]
    poly = {fs: read_table(target_files(results_dir, fs)["polypharmacology"]) for fs in present}
    if any(not table.empty for table in poly.values()):
        polypharmacology_figure(poly, out / "polypharmacology")
        figures.append(Figure("polypharmacology", "Target identification", "Which target does a multi-target compound follow?",
                              "Rank among all perturbed genes of each annotated target of every compound with two or "
                              "more (1 = the compound's closest gene; best over conditions), per feature set."))
    return figures


def _plate_figures(results_dir: Path, feature_sets: list[str], plates: list[str], out: Path,
                   plate_formats: dict[str, int] | None = None) -> list[Figure]:
    figures = []
    counts = [results_dir / "profiles" / "cellprofiler" / f"{plate}.parquet" for plate in plates]
    if all(path.exists() for path in counts):
        wells = pd.concat([pd.read_parquet(p, columns=["Metadata_Plate", "Metadata_Well", "Metadata_Object_Count"])
                           for p in counts])
        plate_heatmaps_figure(wells, out / "plate_cell_counts", "Metadata_Object_Count", "cells", plate_formats)
        figures.append(Figure("plate_cell_counts", "Plates", "Cells per well (CellProfiler)",
                              "Cells segmented per well on each plate's layout: edge, row or column patterns point "
                              "to plating or imaging artefacts rather than biology."))
    for fs in feature_sets:
        ap = read_table(results_dir / "retrieval" / fs / "replicate_retrieval_ap.parquet")
        if ap.empty:
            continue
        wells = ap.groupby(["Metadata_Plate", "Metadata_Well"], as_index=False)["average_precision"].mean()
        plate_heatmaps_figure(wells, out / f"plate_replicate_ap_{fs}", "average_precision", f"replicate AP ({fs})",
                              plate_formats)
        figures.append(Figure(f"plate_replicate_ap_{fs}", "Plates", f"Replicate AP per well ({fs})",
                              "Average precision of each treated well in replicate retrieval, on the plate layout: "
                              "low values clustered at edges suggest position effects."))
    return figures


def _crops_of_wells(crop_dir: Path, wells: pd.DataFrame, limit: int, seed: int = 0) -> np.ndarray:
    """Up to `limit` crops drawn evenly from the given (plate, well) rows' crop caches."""
    rng = np.random.default_rng(seed)
    picked = []
    for plate, group in wells.groupby("Metadata_Plate", sort=True):
        index = read_table(crop_dir / f"{plate}.parquet")
        rows = index.loc[index["Metadata_Well"].isin(group["Metadata_Well"]), "Metadata_Crop"].to_numpy()
        if rows.size:
            array = np.load(crop_dir / f"{plate}.npy", mmap_mode="r")
            take = np.sort(rng.choice(rows, size=min(limit, rows.size), replace=False))
            picked.append(np.asarray(array[take], dtype=np.float32))
    if not picked:
        return np.zeros((0, 5, 1, 1), np.float32)
    crops = np.concatenate(picked)
    return crops[np.sort(rng.choice(len(crops), size=min(limit, len(crops)), replace=False))]


def _example_figure(results_dir: Path, feature_sets: list[str], out: Path, n: int = 3) -> list[Figure]:
    crop_dir = results_dir / "vit" / "crops"
    if not crop_dir.is_dir():
        return []
    maps = pd.concat([read_table(result_path(results_dir, fs, "replicate_retrieval")) for fs in feature_sets])
    if maps.empty:
        return []
    ranked = maps.groupby([PERT, "Metadata_modality"], as_index=False).agg(
        mean_average_precision=("mean_average_precision", "mean"), name=("Metadata_pert_iname", "first"),
        gene=("Metadata_gene", "first")).sort_values("mean_average_precision", ascending=False)
    wells = pd.concat([read_table(results_dir / "retrieval" / fs / "replicate_retrieval_ap.parquet") for fs in feature_sets])
    groups = []
    chosen = pd.concat([ranked.head(n), ranked.tail(n)]).drop_duplicates(PERT)
    for _, row in chosen.iterrows():
        label = row["gene"] if isinstance(row["gene"], str) else row["name"]
        crops = _crops_of_wells(crop_dir, wells[wells[PERT] == row[PERT]].drop_duplicates(["Metadata_Plate", "Metadata_Well"]),
                                EXAMPLES_PER_GROUP)
        groups.append((f"{label} ({row['Metadata_modality']})\nmAP {row['mean_average_precision']:.2f}", crops))
    profiles = read_table(results_dir / "profiles" / feature_sets[0] / "normalized.parquet")
    negcon = profiles.loc[profiles["Metadata_control_type"] == "negcon", ["Metadata_Plate", "Metadata_Well"]]
    groups.append(("negative controls", _crops_of_wells(crop_dir, negcon, EXAMPLES_PER_GROUP)))
    examples_figure(groups, out / "examples", "Best and worst retrieved perturbations")
    return [Figure("examples", "Images", "Best- and worst-retrieved perturbations",
                   f"Single-cell crops (DNA blue, ER green, RNA cyan, AGP orange, Mito magenta) of the {n} perturbations retrieved best and "
                   f"the {n} retrieved worst (mean replicate mAP over feature sets), and of negative controls.")]


METHOD_TITLES = {"mae": "ViT-MAE", "dino": "ViT-DINO", "simclr": "ViT-SimCLR"}
LOSS_CAPTIONS = {"mae": "reconstruction loss on masked patches", "dino": "DINO cross-entropy between teacher and student views",
                 "simclr": "NT-Xent contrastive loss"}


def _image_figures(results_dir: Path, plates: list[str], train_dirs: list[Path], out: Path) -> list[Figure]:
    if not (results_dir / "illum").is_dir():
        return []  # a run of published profiles reads no images
    illumination_figure(results_dir / "illum", plates, out / "illumination")
    figures = [Figure("illumination", "Images", "Illumination functions",
                      "Per-plate, per-channel illumination functions that both branches divide by; smooth, "
                      "centre-bright surfaces are expected, sharp structure is not.")]
    for train_dir in train_dirs:  # one folder per method: results_dir/vit/<method>
        method = train_dir.name
        if not (train_dir / "train_log.tsv").exists():
            continue
        title = METHOD_TITLES.get(method, method)
        training_figure(train_dir / "train_log.tsv", out / f"{method}_training", title)
        figures.append(Figure(f"{method}_training", "Pretraining", f"{title} training",
                              f"{LOSS_CAPTIONS.get(method, 'Loss').capitalize()} per optimizer step (and its running "
                              "mean) with the learning-rate schedule; where tracked (vit.track_every), replicate "
                              "mAP of a fixed sample of wells at those steps (reported only, never used for training)."))
    mae_dir = next((d for d in train_dirs if d.name == "mae"), None)
    if mae_dir is not None and (mae_dir / "train_log.tsv").exists():
        crop_dir = results_dir / "vit" / "crops"
        caches = sorted(crop_dir.glob("*.npy"))
        rows = read_table(caches[0].with_suffix(".parquet"))["Metadata_Crop"].to_numpy() if caches else []
        if (mae_dir / "checkpoint.pt").exists() and len(rows):
            array = np.load(caches[0], mmap_mode="r")
            take = rows[np.linspace(0, len(rows) - 1, num=min(6, len(rows))).astype(int)]
            reconstruction_figure(mae_dir / "checkpoint.pt", np.asarray(array[take], np.float32), out / "mae_reconstructions")
            figures.append(Figure("mae_reconstructions", "ViT-MAE", "Masked inputs and reconstructions",
                                  "Crops as the MAE sees them in pretraining: original, with 75% of patches hidden, "
                                  "and the decoder's reconstruction of the hidden patches."))
    return figures


def make_figures(results_dir: str | Path, feature_sets: list[str], plates: list[str], summary: pd.DataFrame,
                 out_dir: str | Path, train_dirs: list[str | Path] | None = None,
                 plate_formats: dict[str, int] | None = None) -> list[Figure]:
    """Write every figure (PNG + SVG) into out_dir and the manifest figures.json; returns the manifest.
    `plate_formats` (plate -> 96 or 384) shapes the plate maps; 384 for plates it lacks."""
    results, out = Path(results_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored = [fs for fs in feature_sets if fs != REFERENCE]
    retrieval = summary[summary["task"].isin(TASKS)]
    figures = [*_retrieval_figures(results, scored, retrieval, out), *_target_figures(results, scored, summary, out),
               *_plate_figures(results, scored, plates, out, plate_formats),
               *_example_figure(results, scored, out),
               *_image_figures(results, plates, [Path(d) for d in train_dirs or []], out)]
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps([asdict(f) for f in figures], indent=1))
    return figures


def read_manifest(figures_dir: str | Path) -> list[Figure]:
    path = Path(figures_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no figure manifest; run `paintbench report-figures` first")
    return [Figure(**entry) for entry in json.loads(path.read_text())]
