"""Offline Cell Painting plates with planted phenotypes, so the benchmark's answers are known.

`ground_truth` plants an effect per perturbation (phenotypes.py); `generate_plate` draws the
cells of each well around baseline + effect + nuisance and writes Phenix-named TIFFs (cells.py
draws the pixels). Every random draw is seeded by (seed, plate, well, site), so any subset of
wells and sites renders exactly as it would inside a full plate.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from paintbench.registry import CHANNELS
from paintbench.atomic import atomic_path
from paintbench.layout import PLATE_FORMATS, image_filename, parse_well
from paintbench.metadata import plate_info, plate_layout
from paintbench.synthetic.cells import BRIGHTFIELD_CHANNELS, cell_geometry, nuclei_in_field, render_field
from paintbench.synthetic.phenotypes import (
    EFFECT_COLUMNS,
    PARAMETER_SPECS,
    PARAMETERS,
    effect_lookup,
    ground_truth,
    position_effect,
    position_effects,
    seeded_rng,
)

__all__ = ["PARAMETERS", "EFFECT_COLUMNS", "ground_truth", "generate_plate", "render_field", "plate_nuisance",
           "position_effects"]

TAG_PLATE, TAG_WELL, TAG_SITE = 10, 11, 12
_MEAN = np.array([p.mean for p in PARAMETER_SPECS])
_SD = np.array([p.sd for p in PARAMETER_SPECS])
_LOW = np.array([p.low for p in PARAMETER_SPECS])
_HIGH = np.array([p.high for p in PARAMETER_SPECS])
_INDEX = {name: i for i, name in enumerate(PARAMETERS)}

# Nuisance sizes, in cell SDs unless stated: plate batch shift, well-to-well biological noise.
PLATE_SHIFT_SD = 0.25
WELL_SHIFT_SD = 0.2
PLATE_INTENSITY_SD = 0.12  # log-normal per plate and channel
WELL_DENSITY_SD = 0.12  # log-normal per well
EDGE_BRIGHTNESS, EDGE_DENSITY = 1.06, 0.85  # outer ring of the plate
# Cells between 1 and 2 sizes fewer per field: bigger cells crowd, perturbations can thin wells.
COUNT_PER_CELL_AREA_SD = -0.15
# Parameters shared by the size of the cell: a latent size factor ties nucleus and cell area.
SIZE_LOADING = 0.6


def illumination(field_size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative illumination field: off-centre vignetting times a tilt (0.6 ... 1.2)."""
    coords = (np.arange(field_size) + 0.5) / field_size - 0.5
    y, x = coords[:, None], coords[None, :]
    cy, cx = rng.uniform(-0.15, 0.15, 2)
    vignette = 1.0 - rng.uniform(0.2, 0.45) * ((y - cy) ** 2 + (x - cx) ** 2) / 0.5
    tilt = 1.0 + rng.uniform(-0.12, 0.12) * y + rng.uniform(-0.12, 0.12) * x
    return (vignette * tilt).astype(np.float32)


def plate_nuisance(plate: str, seed: int, field_size: int, channels: list[str]) -> dict[str, object]:
    """Per plate: intensity factor x illumination per channel (same for every field), parameter shift."""
    rng = seeded_rng(seed, TAG_PLATE, plate)
    shift = rng.normal(0.0, PLATE_SHIFT_SD, len(PARAMETERS))
    gains = {}
    for name in CHANNELS + BRIGHTFIELD_CHANNELS:  # fixed order: the draw of a channel never depends on the map
        factor = float(np.exp(rng.normal(0.0, PLATE_INTENSITY_SD)))
        field = illumination(field_size, rng)
        if name in channels:
            gains[name] = factor * field
    return {"shift": shift, "gain": gains}


def is_edge_well(well: str, plate_format: int = 384) -> bool:
    """A well of the outer ring of its plate (96- or 384-well)."""
    rows, columns = PLATE_FORMATS[plate_format]
    row, column = parse_well(well)
    return row in (1, rows) or column in (1, columns)


def well_mean(effect: np.ndarray, plate_shift: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A well's mean parameters in cell-SD units relative to the baseline: effect + plate + well noise."""
    return effect + plate_shift + rng.normal(0.0, WELL_SHIFT_SD, len(PARAMETERS))


def draw_cells(mean_z: np.ndarray, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """n cells around a well mean (cell-SD units) in physical units, clipped to physical ranges."""
    z = rng.standard_normal((n, len(PARAMETERS)))
    size = rng.standard_normal(n)
    own = np.sqrt(1.0 - SIZE_LOADING**2)
    for name in ("nucleus_area", "cell_area"):
        z[:, _INDEX[name]] = SIZE_LOADING * size + own * z[:, _INDEX[name]]
    values = np.clip(_MEAN + _SD * (mean_z + z), _LOW, _HIGH)
    # A body at least ~2.2x its nucleus keeps the nucleus inside with a margin of cytoplasm.
    cell = _INDEX["cell_area"]
    values[:, cell] = np.maximum(values[:, cell], 2.2 * values[:, _INDEX["nucleus_area"]])
    return {name: values[:, i] for i, name in enumerate(PARAMETERS)}


def expected_cells(cells_per_field: int, effect: np.ndarray, edge: bool, rng: np.random.Generator) -> float:
    """Mean cells per field of one well: density noise, edge effect, perturbation effect on count."""
    density = np.exp(rng.normal(0.0, WELL_DENSITY_SD))
    perturbation = np.clip(np.exp(COUNT_PER_CELL_AREA_SD * effect[_INDEX["cell_area"]]), 0.5, 1.5)
    return cells_per_field * density * perturbation * (EDGE_DENSITY if edge else 1.0)


def write_tiff(path: Path, image: np.ndarray) -> None:
    """Uncompressed, as every TIFF reader (CellProfiler's included) handles it; renamed when complete."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image, photometric="minisblack")


def generate_plate(
    plate: str,
    wells: list[str],
    sites: list[int],
    channels: dict[str, int],
    truth: pd.DataFrame,
    out_dir: str | os.PathLike,
    field_size: int = 320,
    cells_per_field: int = 24,
    seed: int = 0,
    metadata_dir: str | Path | None = None,
    position_sd: float = 0.0,
) -> pd.DataFrame:
    """Write one TIFF per channel per field of the selected wells; return the true cell counts.

    `channels` maps Cell Painting names (DNA, ER, RNA, AGP, Mito; optionally Brightfield) to file
    channel numbers. The returned table has one row per field: Metadata_Plate, Metadata_Well,
    Metadata_Site, n_cells (nuclei wholly inside the field), n_cells_touching_border. `position_sd` plants a
    per-well-position artefact shared by every plate (phenotypes.position_effect).
    """
    unknown = sorted(set(channels) - set(CHANNELS) - set(BRIGHTFIELD_CHANNELS))
    if unknown:
        raise ValueError(f"cannot synthesize channel(s) {unknown}: known {list(CHANNELS + BRIGHTFIELD_CHANNELS)}")
    layout = plate_layout(plate, metadata_dir).set_index("Metadata_Well")
    plate_format = plate_info(plate, metadata_dir).format
    effects = effect_lookup(truth)
    nuisance = plate_nuisance(plate, seed, field_size, list(channels))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for well in wells:
        if well not in layout.index:
            raise ValueError(f"plate {plate}: well {well} is not in its platemap")
        info = layout.loc[well]
        key = (info["Metadata_modality"], info["Metadata_broad_sample"])
        if key not in effects:
            raise ValueError(f"plate {plate}, well {well}: {key} has no ground truth (generated for other platemaps?)")
        effect = effects[key]
        row, column = parse_well(well)
        well_rng = seeded_rng(seed, TAG_WELL, plate, row, column)
        mean_z = well_mean(effect, nuisance["shift"], well_rng) + position_effect(well, seed, position_sd)
        edge = is_edge_well(well, plate_format)
        n_mean = expected_cells(cells_per_field, effect, edge, well_rng)
        brightness = EDGE_BRIGHTNESS if edge else 1.0
        gain = {name: g * (brightness if name in CHANNELS else 1.0) for name, g in nuisance["gain"].items()}
        for site in sites:
            rng = seeded_rng(seed, TAG_SITE, plate, row, column, site)
            cells = cell_geometry(draw_cells(mean_z, int(rng.poisson(n_mean)), rng), field_size, rng)
            inside, touching = nuclei_in_field(cells, field_size)
            images = render_field(cells, field_size, rng, gain=gain, channels=list(channels))
            for name, number in channels.items():
                write_tiff(out / image_filename(well, site, number), images[name])
            records.append(
                {"Metadata_Plate": plate, "Metadata_Well": well, "Metadata_Site": site,
                 "n_cells": inside, "n_cells_touching_border": touching}
            )
    columns = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "n_cells", "n_cells_touching_border"]
    return pd.DataFrame(records, columns=columns)
