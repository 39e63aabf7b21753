"""The report's figures from a finished run's files, each with a title and a one-sentence caption.

`make_figures` reads only the files it is given (paintbench.report.inputs.RunFiles: retrieval results, well
profiles, illumination functions, crop caches, the training logs and the MAE's checkpoint) and returns a manifest (one entry per figure: file stem, section,
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
from paintbench.registry import METHOD_TITLES, SHORTLIST_TASKS, TASK_TITLES, TASKS
from paintbench.report.bakeoff import headline_view
from paintbench.report.bakeoff_view import bakeoff_figure
from paintbench.report.inputs import RunFiles
from paintbench.report.reference import paper_comparison_figure, paper_differences
from paintbench.report.summary import REFERENCE
from paintbench.report.targets import polypharmacology_figure, shortlist_figure
from paintbench.retrieval import PERT

log = logging.getLogger(__name__)

MANIFEST = "figures.json"
EXAMPLES_PER_GROUP = 6


@dataclass(frozen=True)
class Figure:
    stem: str  # file name without .png / .svg, inside the figures folder
    section: str
    title: str
    caption: str


def _retrieval_figures(files: RunFiles, feature_sets: list[str], summary: pd.DataFrame, out: Path) -> list[Figure]:
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
        results = {fs: read_table(files.result(fs, task)) for fs in feature_sets}
        results = {fs: table for fs, table in results.items() if not table.empty}
        if not results:
            continue
        map_vs_p_figure(results, task, out / f"map_vs_p_{task}")
        figures.append(Figure(f"map_vs_p_{task}", "Retrieval", f"mAP and significance: {TASK_TITLES[task]}",
                              "Each point is a perturbation: its mAP against -log10 of its permutation p-value; "
                              "coloured points are retrieved (q < 0.05)."))
    replicate = {fs: read_table(files.result(fs, "replicate_retrieval")) for fs in feature_sets}
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


def _target_figures(files: RunFiles, feature_sets: list[str], summary: pd.DataFrame, out: Path) -> list[Figure]:
    present = [fs for fs in feature_sets if fs in files.polypharmacology]
    if not present or not (summary["task"].isin(SHORTLIST_TASKS)
                           & (summary["n_perturbations"] > 0)).any():
        return []
    shortlist_figure(summary, out / "shortlists")
    figures = [Figure("shortlists", "Target identification", "Shortlist quality per feature set",
                      "Recall@k of target identification (a compound's annotated targets among its k closest genes) "
                      "and virtual screening (a gene's annotated compounds among its k closest compounds), pooled "
                      "over conditions; black ticks: random shortlists.")]
    poly = {fs: read_table(files.polypharmacology[fs]) for fs in present}
    if any(not table.empty for table in poly.values()):
        polypharmacology_figure(poly, out / "polypharmacology")
        figures.append(Figure("polypharmacology", "Target identification", "Which target does a multi-target compound follow?",
                              "Rank among all perturbed genes of each annotated target of every compound with two or "
                              "more (1 = the compound's closest gene; best over conditions), per feature set."))
    return figures


def _plate_figures(files: RunFiles, feature_sets: list[str], out: Path,
                   plate_formats: dict[str, int] | None = None) -> list[Figure]:
    figures = []
    if files.cell_counts:
        wells = pd.concat([pd.read_parquet(files.cell_counts[plate], columns=["Metadata_Plate", "Metadata_Well",
                                                                             "Metadata_Object_Count"])
                           for plate in files.plates if plate in files.cell_counts])
        plate_heatmaps_figure(wells, out / "plate_cell_counts", "Metadata_Object_Count", "cells", plate_formats)
        figures.append(Figure("plate_cell_counts", "Plates", "Cells per well (CellProfiler)",
                              "Cells segmented per well on each plate's layout: edge, row or column patterns point "
                              "to plating or imaging artefacts rather than biology."))
    for fs in feature_sets:
        ap = read_table(files.replicate_ap[fs]) if fs in files.replicate_ap else pd.DataFrame()
        if ap.empty:
            continue
        wells = ap.groupby(["Metadata_Plate", "Metadata_Well"], as_index=False)["average_precision"].mean()
        plate_heatmaps_figure(wells, out / f"plate_replicate_ap_{fs}", "average_precision", f"replicate AP ({fs})",
                              plate_formats)
        figures.append(Figure(f"plate_replicate_ap_{fs}", "Plates", f"Replicate AP per well ({fs})",
                              "Average precision of each treated well in replicate retrieval, on the plate layout: "
                              "low values clustered at edges suggest position effects."))
    return figures


def _crops_of_wells(crops: dict[str, Path], wells: pd.DataFrame, limit: int, seed: int = 0) -> np.ndarray:
    """Up to `limit` crops drawn evenly from the given (plate, well) rows' crop caches (plate -> PREFIX.npy, its
    index PREFIX.parquet beside it)."""
    rng = np.random.default_rng(seed)
    picked = []
    for plate, group in wells.groupby("Metadata_Plate", sort=True):
        if plate not in crops:
            continue
        index = read_table(crops[plate].with_suffix(".parquet"))
        rows = index.loc[index["Metadata_Well"].isin(group["Metadata_Well"]), "Metadata_Crop"].to_numpy()
        if rows.size:
            array = np.load(crops[plate], mmap_mode="r")
            take = np.sort(rng.choice(rows, size=min(limit, rows.size), replace=False))
            picked.append(np.asarray(array[take], dtype=np.float32))
    if not picked:
        return np.zeros((0, 5, 1, 1), np.float32)
    crops = np.concatenate(picked)
    return crops[np.sort(rng.choice(len(crops), size=min(limit, len(crops)), replace=False))]


def _example_figure(files: RunFiles, feature_sets: list[str], out: Path, n: int = 3) -> list[Figure]:
    if not files.crops or not files.profiles:
        return []
    maps = pd.concat([read_table(files.result(fs, "replicate_retrieval")) for fs in feature_sets])
    if maps.empty:
        return []
    ranked = maps.groupby([PERT, "Metadata_modality"], as_index=False).agg(
        mean_average_precision=("mean_average_precision", "mean"), name=("Metadata_pert_iname", "first"),
        gene=("Metadata_gene", "first")).sort_values("mean_average_precision", ascending=False)
    wells = pd.concat([read_table(files.replicate_ap[fs]) for fs in feature_sets if fs in files.replicate_ap])
    groups = []
    chosen = pd.concat([ranked.head(n), ranked.tail(n)]).drop_duplicates(PERT)
    for _, row in chosen.iterrows():
        label = row["gene"] if isinstance(row["gene"], str) else row["name"]
        crops = _crops_of_wells(files.crops, wells[wells[PERT] == row[PERT]].drop_duplicates(
            ["Metadata_Plate", "Metadata_Well"]), EXAMPLES_PER_GROUP)
        groups.append((f"{label} ({row['Metadata_modality']})\nmAP {row['mean_average_precision']:.2f}", crops))
    first = next(fs for fs in [*feature_sets, *files.profiles] if fs in files.profiles)
    profiles = read_table(files.profiles[first])
    negcon = profiles.loc[profiles["Metadata_control_type"] == "negcon", ["Metadata_Plate", "Metadata_Well"]]
    groups.append(("negative controls", _crops_of_wells(files.crops, negcon, EXAMPLES_PER_GROUP)))
    examples_figure(groups, out / "examples", "Best and worst retrieved perturbations")
    return [Figure("examples", "Images", "Best- and worst-retrieved perturbations",
                   f"Single-cell crops (DNA blue, ER green, RNA cyan, AGP orange, Mito magenta) of the {n} perturbations retrieved best and "
                   f"the {n} retrieved worst (mean replicate mAP over feature sets), and of negative controls.")]


LOSS_CAPTIONS = {"mae": "reconstruction loss on masked patches", "dino": "DINO cross-entropy between teacher and student views",
                 "simclr": "NT-Xent contrastive loss"}


def _image_figures(files: RunFiles, out: Path) -> list[Figure]:
    if not files.illum:
        return []  # a run of published profiles reads no images
    illumination_figure(files.illum, files.plates, out / "illumination")
    figures = [Figure("illumination", "Images", "Illumination functions",
                      "Per-plate, per-channel illumination functions that both branches divide by; smooth, "
                      "centre-bright surfaces are expected, sharp structure is not.")]
    for method, train_log in files.train_logs.items():
        title = METHOD_TITLES.get(method, method)
        training_figure(train_log, out / f"{method}_training", method)
        figures.append(Figure(f"{method}_training", "Pretraining", f"{title} training",
                              f"{LOSS_CAPTIONS.get(method, 'Loss').capitalize()} per optimizer step (and its running "
                              "mean) with the learning-rate schedule; where tracked (vit.track_every), replicate "
                              "mAP of a fixed sample of wells at those steps (reported only, never used for training)."))
    if files.mae_checkpoint is not None and files.crops:
        cache = files.crops[sorted(files.crops)[0]]
        rows = read_table(cache.with_suffix(".parquet"))["Metadata_Crop"].to_numpy()
        if len(rows):
            array = np.load(cache, mmap_mode="r")
            take = rows[np.linspace(0, len(rows) - 1, num=min(6, len(rows))).astype(int)]
            reconstruction_figure(files.mae_checkpoint, np.asarray(array[take], np.float32), out / "mae_reconstructions")
            figures.append(Figure("mae_reconstructions", "ViT-MAE", "Masked inputs and reconstructions",
                                  "Crops as the MAE sees them in pretraining: original, with 75% of patches hidden, "
                                  "and the decoder's reconstruction of the hidden patches."))
    return figures


def _bakeoff_figures(summary: pd.DataFrame, out: Path) -> list[Figure]:
    scored = summary[summary["row_kind"].isin(["measured", "published_profiles"])]
    if scored["profile_set"].nunique() < 2 or scored["chain"].nunique() < 2:
        return []
    bakeoff_figure(summary, out / "bakeoff")
    return [Figure("bakeoff", "Bake-off", "Every feature set under every chain",
                   "Fraction retrieved (q < 0.05; all conditions of a task pooled) with its 95% Wilson interval, per "
                   "feature set (x) and post-processing chain (marker). The paired verdicts per condition are in the "
                   "bake-off table and reports/comparisons.tsv.")]


def make_figures(files: RunFiles, summary: pd.DataFrame, out_dir: str | Path,
                 plate_formats: dict[str, int] | None = None) -> list[Figure]:
    """Write every figure (PNG + SVG) into out_dir and the manifest figures.json; returns the manifest.
    `plate_formats` (plate -> 96 or 384) shapes the plate maps; 384 for plates it lacks."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scored = [fs for fs in files.feature_sets if fs != REFERENCE]
    view = headline_view(summary)  # the feature-set figures show each feature set's headline chain
    retrieval = view[view["task"].isin(TASKS)]
    figures = [*_retrieval_figures(files, scored, retrieval, out), *_bakeoff_figures(summary, out),
               *_target_figures(files, scored, view, out), *_plate_figures(files, scored, out, plate_formats),
               *_example_figure(files, scored, out), *_image_figures(files, out)]
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps([asdict(f) for f in figures], indent=1))
    return figures


def read_manifest(figures_dir: str | Path) -> list[Figure]:
    path = Path(figures_dir) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no figure manifest; run `paintbench report-figures` first")
    return [Figure(**entry) for entry in json.loads(path.read_text())]
