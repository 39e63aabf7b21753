"""Drawing one field of Cell Painting cells from per-cell morphological parameters.

Each cell is a (slightly lumpy) ellipse body with an elliptic nucleus inside; every channel is
painted in a small box around the cell, never over the whole field, so a 320 px field with ~25
cells renders in tens of milliseconds. Field-wide work is limited to a few Gaussian filters
(texture, blurred puncta) and the noise model.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
from scipy import ndimage

from paintbench.registry import CHANNELS

BRIGHTFIELD_CHANNELS = ("Brightfield", "HighZBF", "LowZBF")
GEOMETRY_KEYS = (
    "y", "x", "cell_a", "cell_b", "cell_theta", "h2", "h3", "p2", "p3",
    "nuc_y", "nuc_x", "nuc_a", "nuc_b", "nuc_theta", "golgi_angle",
)
# Counts at illumination 1: autofluorescence / medium background per channel, and the camera.
BACKGROUND = {"DNA": 120.0, "ER": 220.0, "RNA": 200.0, "AGP": 260.0, "Mito": 180.0}
CAMERA_OFFSET = 100.0
ELECTRONS_PER_COUNT = 1.6  # shot noise: Poisson in electrons, so SD = sqrt(1.6 * counts)
BRIGHTFIELD_LEVEL = 2800.0
PUNCTUM_SIGMA = 0.9
NUCLEOLUS_SIGMA = 1.3


def cell_geometry(
    cell_params: Mapping[str, np.ndarray], field_size: int, rng: np.random.Generator, max_tries: int = 40
) -> dict[str, np.ndarray]:
    """Place cells and fix their shapes; cells that find no free spot are dropped.

    Rejection sampling on centre distance keeps bodies from overlapping much and nuclei apart,
    so nuclei stay separable for a segmentation by threshold. Returns the surviving cells'
    parameters plus the GEOMETRY_KEYS arrays.
    """
    n = len(next(iter(cell_params.values())))
    cell_r = np.sqrt(np.asarray(cell_params["cell_area"], float) / np.pi)
    ecc = np.asarray(cell_params["nucleus_eccentricity"], float)
    nuc_q = np.sqrt(1.0 - ecc**2)  # minor/major axis ratio
    nuc_a = np.sqrt(np.asarray(cell_params["nucleus_area"], float) / (np.pi * nuc_q))
    cell_q = rng.uniform(0.65, 1.0, n)
    ys, xs, kept = [], [], []
    for i in range(n):
        for _ in range(max_tries):
            y, x = rng.uniform(0, field_size, 2)
            if kept:
                d = np.hypot(np.array(ys) - y, np.array(xs) - x)
                need = np.maximum(0.8 * (cell_r[i] + cell_r[kept]), 1.2 * (nuc_a[i] + nuc_a[kept]) + 2.0)
                if np.any(d < need):
                    continue
            ys.append(y), xs.append(x), kept.append(i)
            break
    idx = np.array(kept, dtype=int)
    m = len(idx)
    out = {key: np.asarray(value)[idx] for key, value in cell_params.items()}
    cell_a, cell_b = cell_r[idx] / np.sqrt(cell_q[idx]), cell_r[idx] * np.sqrt(cell_q[idx])
    theta = rng.uniform(0, np.pi, m)
    nuc_a_k, nuc_b_k = nuc_a[idx], nuc_a[idx] * nuc_q[idx]
    # The nucleus sits off-centre but inside the body: offset bounded by the free margin.
    margin = np.clip(cell_b - nuc_a_k - 2.0, 0.0, None)
    offset, direction = rng.uniform(0, 0.4, m) * margin, rng.uniform(0, 2 * np.pi, m)
    out.update(
        y=np.array(ys), x=np.array(xs), cell_a=cell_a, cell_b=cell_b, cell_theta=theta,
        h2=rng.uniform(0, 0.06, m), h3=rng.uniform(0, 0.05, m),
        p2=rng.uniform(0, 2 * np.pi, m), p3=rng.uniform(0, 2 * np.pi, m),
        nuc_y=np.array(ys) + offset * np.sin(direction), nuc_x=np.array(xs) + offset * np.cos(direction),
        nuc_a=nuc_a_k, nuc_b=nuc_b_k, nuc_theta=theta + rng.normal(0, 0.3, m),
        golgi_angle=rng.uniform(0, 2 * np.pi, m),
    )
    return out


def nucleus_extent(geometry: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Half height and half width of each nucleus' bounding box."""
    a, b, t = geometry["nuc_a"], geometry["nuc_b"], geometry["nuc_theta"]
    half_h = np.sqrt((a * np.sin(t)) ** 2 + (b * np.cos(t)) ** 2)
    half_w = np.sqrt((a * np.cos(t)) ** 2 + (b * np.sin(t)) ** 2)
    return half_h, half_w


def nuclei_in_field(geometry: Mapping[str, np.ndarray], field_size: int) -> tuple[int, int]:
    """(nuclei wholly inside the field, nuclei cut by its border)."""
    half_h, half_w = nucleus_extent(geometry)
    y, x = geometry["nuc_y"], geometry["nuc_x"]
    lo_y, hi_y, lo_x, hi_x = y - half_h - 1, y + half_h + 1, x - half_w - 1, x + half_w + 1
    visible = (hi_y > 0) & (lo_y < field_size - 1) & (hi_x > 0) & (lo_x < field_size - 1)
    inside = (lo_y >= 0) & (hi_y <= field_size - 1) & (lo_x >= 0) & (hi_x <= field_size - 1)
    return int(inside.sum()), int((visible & ~inside).sum())


def _ellipse_radius(
    dy: np.ndarray, dx: np.ndarray, a: float, b: float, theta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalized elliptic radius (1 on the outline) and the ellipse-frame coordinates."""
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return np.sqrt((u / a) ** 2 + (v / b) ** 2), u / a, v / b


def _soft(rho: np.ndarray, radius: float, width: float = 1.2) -> np.ndarray:
    """Anti-aliased inside-mask: a linear ramp of `width` px across the outline."""
    return np.clip((1.0 - rho) * radius / width + 0.5, 0.0, 1.0)


def _unit_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit SD (the SD of the smoothing is analytic)."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return noise * np.float32(2.0 * np.sqrt(np.pi) * sigma)


def _smooth_background(size: int, level: float, rng: np.random.Generator) -> np.ndarray:
    """A slowly varying background (+-~8%): two random long-wavelength waves."""
    y, x = np.ogrid[0:size, 0:size]
    bg = np.ones((size, size), np.float32)
    for _ in range(2):
        k = rng.uniform(0.3, 1.2, 2) * 2 * np.pi / size
        wave = np.cos(k[0] * y + k[1] * x + rng.uniform(0, 2 * np.pi)).astype(np.float32)
        bg += np.float32(rng.uniform(0.02, 0.05)) * wave
    return level * bg


def _deposit(target: np.ndarray, y: np.ndarray, x: np.ndarray, weight: np.ndarray) -> None:
    """Add point sources at (y, x), dropping those outside the field."""
    yi, xi = np.rint(y).astype(int), np.rint(x).astype(int)
    ok = (yi >= 0) & (yi < target.shape[0]) & (xi >= 0) & (xi < target.shape[1])
    np.add.at(target, (yi[ok], xi[ok]), weight[ok])


def _points_in_cell(
    c: Mapping[str, float], n: int, rng: np.random.Generator, inside_nucleus: bool
) -> tuple[np.ndarray, np.ndarray]:
    """n random points in the nucleus (nucleoli) or in the cytoplasm outside it (mitochondria)."""
    if n <= 0:
        return np.empty(0), np.empty(0)
    if inside_nucleus:
        r, phi = 0.6 * np.sqrt(rng.random(n)), rng.uniform(0, 2 * np.pi, n)
        u, v = r * c["nuc_a"] * np.cos(phi), r * c["nuc_b"] * np.sin(phi)
        t, cy, cx = c["nuc_theta"], c["nuc_y"], c["nuc_x"]
    else:  # oversample, then drop points that fall on the nucleus
        r, phi = 0.95 * np.sqrt(rng.random(3 * n)), rng.uniform(0, 2 * np.pi, 3 * n)
        u, v = r * c["cell_a"] * np.cos(phi), r * c["cell_b"] * np.sin(phi)
        t, cy, cx = c["cell_theta"], c["y"], c["x"]
    y = cy + u * np.sin(t) + v * np.cos(t)
    x = cx + u * np.cos(t) - v * np.sin(t)
    if not inside_nucleus:
        rho, _, _ = _ellipse_radius(y - c["nuc_y"], x - c["nuc_x"], c["nuc_a"], c["nuc_b"], c["nuc_theta"])
        keep = np.flatnonzero(rho > 1.05)[:n]
        y, x = y[keep], x[keep]
    return y, x


def _paint_cell(
    c: Mapping[str, float], layers: dict[str, np.ndarray], textures: dict[str, np.ndarray], size: int
) -> None:
    """Add one cell's DNA, ER, RNA, AGP, diffuse Mito and brightfield shape into the field layers."""
    half = int(np.ceil(c["cell_a"] * (1 + c["h2"] + c["h3"]))) + 3
    y0, y1 = max(int(c["y"]) - half, 0), min(int(c["y"]) + half + 1, size)
    x0, x1 = max(int(c["x"]) - half, 0), min(int(c["x"]) + half + 1, size)
    if y0 >= y1 or x0 >= x1:
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None]
    xx = np.arange(x0, x1, dtype=np.float32)[None, :]
    box = (slice(y0, y1), slice(x0, x1))

    rho_c, uc, vc = _ellipse_radius(yy - c["y"], xx - c["x"], c["cell_a"], c["cell_b"], c["cell_theta"])
    phi = np.arctan2(vc, uc)
    rho_c = rho_c / (1 + c["h2"] * np.cos(2 * phi + c["p2"]) + c["h3"] * np.cos(3 * phi + c["p3"]))
    r_cell = np.sqrt(c["cell_a"] * c["cell_b"])
    body = _soft(rho_c, r_cell)
    rho_n, _, _ = _ellipse_radius(yy - c["nuc_y"], xx - c["nuc_x"], c["nuc_a"], c["nuc_b"], c["nuc_theta"])
    nucleus = _soft(rho_n, np.sqrt(c["nuc_a"] * c["nuc_b"]))
    cytoplasm = body * (1.0 - nucleus)
    # ER and RNA crowd around the nucleus and thin out towards the membrane.
    perinuclear = np.clip(1.35 - 0.75 * rho_c, 0.3, 1.2)
    w = c["texture_scale"]
    for name, level, nuclear in (("ER", c["er_intensity"], 0.1), ("RNA", c["rna_intensity"], 0.3)):
        tex = (1 - w) * textures[f"{name}_fine"][box] + w * textures[f"{name}_coarse"][box]
        tex = np.clip(1.0 + 0.5 * tex, 0.05, None)
        layers[name][box] += level * tex * (cytoplasm * perinuclear + nuclear * nucleus)
    layers["DNA"][box] += c["dna_intensity"] * nucleus * np.clip(1.0 + 0.15 * textures["DNA"][box], 0.5, None)
    rim = np.exp(-(((rho_c - 0.97) * r_cell / 1.3) ** 2))
    agp = 0.25 * body + 0.9 * rim
    # Golgi: one blob beside the nucleus; compact = small and bright, same total signal.
    sigma = 1.2 + 3.0 * (1.0 - c["golgi_compactness"])
    reach = c["nuc_a"] + 0.5 * sigma + 1.0
    gy, gx = c["nuc_y"] + reach * np.sin(c["golgi_angle"]), c["nuc_x"] + reach * np.cos(c["golgi_angle"])
    agp = agp + 40.0 / (2 * np.pi * sigma**2) * np.exp(-((yy - gy) ** 2 + (xx - gx) ** 2) / (2 * sigma**2)) * body
    layers["AGP"][box] += c["agp_intensity"] * agp
    layers["Mito"][box] += 0.15 * c["mito_intensity"] * cytoplasm * perinuclear
    if "shape" in layers:
        layers["shape"][box] += -0.05 * body + 0.05 * rim - 0.02 * nucleus


def _noisy_counts(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shot noise (Poisson in electrons), camera offset and read noise, as uint16."""
    electrons = rng.poisson(np.clip(signal, 0, None) / ELECTRONS_PER_COUNT)
    counts = electrons * ELECTRONS_PER_COUNT + CAMERA_OFFSET + rng.normal(0, 3.0, signal.shape)
    return np.clip(np.rint(counts), 0, 65535).astype(np.uint16)


def render_field(
    cell_params: Mapping[str, np.ndarray],
    field_size: int,
    rng: np.random.Generator,
    gain: Mapping[str, float | np.ndarray] | None = None,
    channels: Iterable[str] = CHANNELS,
) -> dict[str, np.ndarray]:
    """Images (uint16, field_size x field_size) of the requested channels of one field.

    `cell_params` holds one array per morphological parameter (one value per cell); if it lacks
    the GEOMETRY_KEYS the cells are placed here (call `cell_geometry` first to know them).
    `gain` multiplies each channel's light before shot noise: plate intensity x illumination.
    """
    channels = list(channels)
    unknown = [c for c in channels if c not in CHANNELS and c not in BRIGHTFIELD_CHANNELS]
    if unknown:
        raise ValueError(f"cannot draw channel(s) {unknown}: known {CHANNELS + BRIGHTFIELD_CHANNELS}")
    cells = cell_params if all(k in cell_params for k in GEOMETRY_KEYS) else cell_geometry(cell_params, field_size, rng)
    gain = gain or {}
    shape = (field_size, field_size)
    layers = {name: np.zeros(shape, np.float32) for name in CHANNELS}
    if any(c in BRIGHTFIELD_CHANNELS for c in channels):
        layers["shape"] = np.zeros(shape, np.float32)
    textures = {
        f"{name}_{scale}": _unit_noise(shape, sigma, rng)
        for name in ("ER", "RNA")
        for scale, sigma in (("fine", 1.0), ("coarse", 3.0))
    }
    textures["DNA"] = _unit_noise(shape, 1.0, rng)
    mito_points, nucleoli_points = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    n_cells = len(cells["y"])
    for i in range(n_cells):
        c = {key: float(values[i]) for key, values in cells.items()}
        _paint_cell(c, layers, textures, field_size)
        y, x = _points_in_cell(c, int(rng.poisson(c["mito_puncta"])), rng, inside_nucleus=False)
        # Peak of a blurred deposit = weight / (2 pi sigma^2): scale so a punctum peaks at mito_intensity.
        weight = c["mito_intensity"] * 2 * np.pi * PUNCTUM_SIGMA**2 * rng.gamma(4.0, 0.25, len(y))
        _deposit(mito_points, y, x, weight)
        y, x = _points_in_cell(c, int(round(c["nucleoli"])), rng, inside_nucleus=True)
        _deposit(nucleoli_points, y, x, np.full(len(y), 1.2 * c["rna_intensity"] * 2 * np.pi * NUCLEOLUS_SIGMA**2))
    layers["Mito"] += ndimage.gaussian_filter(mito_points, PUNCTUM_SIGMA)
    layers["RNA"] += ndimage.gaussian_filter(nucleoli_points, NUCLEOLUS_SIGMA)

    # One child stream per channel: a channel's noise does not depend on which others are drawn.
    streams = dict(zip(CHANNELS + BRIGHTFIELD_CHANNELS, rng.spawn(len(CHANNELS) + len(BRIGHTFIELD_CHANNELS))))
    images = {}
    for name in channels:
        if name in CHANNELS:
            light = layers[name] + _smooth_background(field_size, BACKGROUND[name], streams[name])
        else:  # transmitted light: a bright flat field that cells dim slightly; defocus blurs them
            blur = {"Brightfield": 1.0, "HighZBF": 2.5, "LowZBF": 2.5}[name]
            light = BRIGHTFIELD_LEVEL * (1.0 + ndimage.gaussian_filter(layers["shape"], blur))
        images[name] = _noisy_counts(light * np.asarray(gain.get(name, 1.0), np.float32), streams[name])
    return images
