"""Pre-flight: everything that can be known from the configuration, the metadata and a listing of the images,
checked before any job starts (`paintbench check-config`, `paintbench plan` and the Snakefile run the same checks).

`preflight(config, metadata_dir)` returns findings: errors (the run cannot succeed: fewer negative controls than
normalization needs, a requested site or channel that is not among the images of a local folder) and warnings (it
can run, but a part of it will be weak or empty: nothing with replicates to score, lists too short for any
perturbation to reach q < 0.05, a task with nothing to compare, images absent from some requested fields). Every message names the plate, well, file or key
and says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Any

import pandas as pd

from paintbench.image_pattern import ImagePatternError, index_image_folder
from paintbench.metadata import NEGCON, plate_info, plate_layout, select_wells

MIN_CONTROLS = 2  # the per-plate normalization needs a spread of its negative controls
ALPHA = 0.05
CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_plate_group"]
SHOWN = 6


@dataclass(frozen=True)
class Finding:
    level: str  # "error" or "warning"
    message: str


def _listed(values) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:SHOWN]) + (f" ... ({len(values)} in all)" if len(values) > SHOWN else "")


def selected_layouts(config: dict[str, Any], metadata_dir: str | Path) -> pd.DataFrame:
    """Every selected well of every plate, with its platemap annotation and condition."""
    parts = []
    for plate in config["plates"]:
        layout = plate_layout(plate, metadata_dir)
        wells = select_wells(layout, config["wells"], config["genes"], config["negcon_wells"])
        parts.append(layout[layout["Metadata_Well"].isin(wells)])
    return pd.concat(parts, ignore_index=True)


def control_findings(selected: pd.DataFrame, config: dict[str, Any]) -> list[Finding]:
    """Each plate needs MIN_CONTROLS negative controls among its selected wells."""
    findings = []
    for plate, wells in selected.groupby("Metadata_Plate", sort=False):
        n = int((wells["Metadata_control_type"] == NEGCON).sum())
        if not len(wells):
            findings.append(Finding("error", f"plate {plate}: config keys 'wells' and 'genes' select no well"))
        elif n < MIN_CONTROLS:
            findings.append(Finding("error", (
                f"plate {plate}: {n} negative-control well(s) selected; normalization to a plate's controls needs at "
                f"least {MIN_CONTROLS}: raise config key 'negcon_wells' (now {config['negcon_wells']}), widen "
                "'wells', or mark more wells negcon (control_type) in the platemap")))
    return findings


def replicate_findings(selected: pd.DataFrame) -> list[Finding]:
    """Perturbations with replicates per condition; a condition whose best list cannot reach p < ALPHA is weak."""
    findings, scorable = [], 0
    treated = selected[(selected["Metadata_control_type"] != NEGCON) & selected["Metadata_broad_sample"].notna()]
    controls = selected[selected["Metadata_control_type"] == NEGCON].groupby("Metadata_Plate").size()
    for condition, wells in treated.groupby(CONDITION, sort=True):
        cell, modality, timepoint, group = condition
        label = f"{cell} {modality} {timepoint} h" + (f" ({group})" if group != "benchmark" else "")
        counts = wells.groupby("Metadata_broad_sample").size()
        replicated = counts[counts >= 2]
        if replicated.empty:
            findings.append(Finding("warning", (
                f"condition {label}: no perturbation has two wells (replicate plates or wells): replicate retrieval "
                "has nothing to score here; add replicate plates to config key 'plates'")))
            continue
        scorable += len(replicated)
        negatives = int(controls.reindex(wells["Metadata_Plate"].unique()).fillna(0).min())
        best = replicated.map(lambda n: 1 / comb(n - 1 + negatives, n - 1))  # a perfect list's p, per perturbation
        untestable = int((best >= ALPHA).sum())
        if untestable > len(replicated) / 2:
            typical = int(replicated.median()) - 1
            findings.append(Finding("warning", (
                f"condition {label}: {untestable} of {len(replicated)} perturbations can never reach q < {ALPHA} (a "
                f"perfect list of {typical} replicate(s) among {negatives} controls has p = "
                f"{1 / comb(typical + negatives, typical):.3g}); add negative controls (config key 'negcon_wells') or "
                "replicate plates")))
    if scorable == 0:  # a warning, not an error: a partial run (one plate's download, one well) is still useful
        findings.append(Finding("warning", "no perturbation has two wells in any condition: every retrieval task "
                                           "will be empty; add replicate plates to config key 'plates' or widen "
                                           "'wells' / 'genes'"))
    return findings


def task_findings(selected: pd.DataFrame) -> list[Finding]:
    """Compound-gene matching needs compounds and genetic perturbations of one cell type."""
    findings = []
    kinds = selected.groupby("Metadata_cell_type")["Metadata_modality"].agg(set)
    for cell_type, modalities in kinds.items():
        if "compound" in modalities and not modalities & {"crispr", "orf"}:
            findings.append(Finding("warning", (
                f"cell type {cell_type}: compound plates but no CRISPR or ORF plate: compound-gene matching and target "
                "identification have nothing to match; add genetic plates of the same cell type")))
    return findings


def image_findings(config: dict[str, Any], metadata_dir: str | Path, selected: pd.DataFrame) -> list[Finding]:
    """Local folders: every requested (well, site, channel) of the selected wells is among the plate's images."""
    if config["source"] != "local":
        return []
    findings = []
    channels = {name: number for name, number in config["channels"].items() if number is not None}
    for plate, wells in selected.groupby("Metadata_Plate", sort=False):
        folder = Path(config["local"]["image_dir"].format(plate=plate, data_dir=config["data_dir"]))
        if not folder.is_dir():  # planned before the images are copied: the plate's download fails first, alone
            findings.append(Finding("warning", f"plate {plate}: no image folder {folder} yet (config key "
                                               "'local.image_dir'): its download job will stop until it exists"))
            continue
        try:
            index = index_image_folder(folder, config["image_pattern"], plate)
        except ImagePatternError as error:
            findings.append(Finding("error", str(error)))
            continue
        sites = (list(range(1, plate_info(plate, metadata_dir).sites_per_well + 1)) if config["sites"] == "all"
                 else config["sites"])
        found_sites = sorted({site for _, site, _ in index})
        found_channels = sorted({channel for _, _, channel in index})
        absent_sites = [s for s in sites if s not in found_sites]
        absent_channels = {name: n for name, n in channels.items() if n not in found_channels}
        if absent_sites:
            findings.append(Finding("error", (
                f"plate {plate}: site(s) {_listed(absent_sites)} requested (config key 'sites') but the images in "
                f"{folder} have sites {_listed(found_sites)}")))
        if absent_channels:
            findings.append(Finding("error", (
                f"plate {plate}: channel(s) {_listed(f'{k} ({v})' for k, v in absent_channels.items())} of config "
                f"key 'channels' are not among the images in {folder}, which have channels {_listed(found_channels)}")))
        if absent_sites or absent_channels:
            continue
        missing = [(w, s, c) for w in wells["Metadata_Well"] for s in sites for c in channels.values()
                   if (w, s, c) not in index]
        if missing:
            findings.append(Finding("warning", (
                f"plate {plate}: {len(missing)} requested image(s) absent from {folder}, e.g. "
                f"{_listed(f'well {w} site {s} channel {c}' for w, s, c in missing)}: those fields are left out and "
                "recorded (config key 'qc.max_missing_fraction' decides how many may be)")))
    return findings


def preflight(config: dict[str, Any], metadata_dir: str | Path) -> list[Finding]:
    selected = selected_layouts(config, metadata_dir)
    return [*control_findings(selected, config), *replicate_findings(selected), *task_findings(selected),
            *image_findings(config, metadata_dir, selected)]
