"""Random views of single-cell crops for the joint-embedding methods (DINO, SimCLR): geometry, then photometry.

Why these augmentations and not the natural-image recipe: in Cell Painting each channel's intensity is phenotype,
so nothing here mixes channels (no colour jitter across channels, no greyscale) and every photometric change is
mild, independent per channel and relative to the channel's own statistics (a channel that is zero stays zero).
Cells have no orientation, so all 8 dihedral symmetries are free invariances.

Why one seed per sample: each sample's view depends only on its own crop and its own seed, drawn from a CPU
torch.Generator (the pixel noise too), so a batch split over several processes or devices gives the same views
as one process, and CPU and CUDA agree up to float rounding. The caller makes seeds differ between epochs.

Geometry is one batched affine_grid + grid_sample: the affine matrix maps output coordinates to input ones as
box . flip . rot90 (the view is the box, flipped, then rotated), in align_corners=False coordinates where
[-1, 1] spans the whole crop; the box always lies inside the crop, so reflection padding is only ever touched by
the half-pixel rim of bilinear interpolation. Draws per sample, in this fixed order: 9 + 2C uniforms (area,
log-ratio, box x, box y, horizontal flip, vertical flip, rot90, blur yes/no, blur sigma, C gains, C shifts), then
the noise; a setting that is off still consumes its uniforms, so switching one op off does not change the others.
"""

from __future__ import annotations

import math
import numbers
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from paintbench import schema

VIEW_DEFAULTS: dict = {key: schema.default(f"vit.views.{key}") for key in schema.key_schema("vit.views")["properties"]}
KINDS = ("global", "local")


class _BadSetting(ValueError):
    """A ViewSettings field out of range; `field` lets view_settings name the config key instead."""

    def __init__(self, field: str, message: str):
        super().__init__(f"ViewSettings.{field}: {message}")
        self.field, self.message = field, message


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range(field: str, pair: object, high: float) -> None:
    """A (lo, hi) pair with 0 < lo <= hi <= high."""
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(map(_is_number, pair))
            and 0 < pair[0] <= pair[1] <= high):
        raise _BadSetting(field, f"needs [lo, hi] with 0 < lo <= hi <= {high}, got {pair!r}")


@dataclass(frozen=True)
class ViewSettings:
    size: int  # output side in pixels (the model's input size for global views, smaller for local)
    scale: tuple[float, float]  # random resized crop: area fraction of the input crop, e.g. (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range (sampled log-uniformly)
    flip: bool = VIEW_DEFAULTS["flip"]  # random horizontal and vertical flips
    rotate90: bool = VIEW_DEFAULTS["rotate90"]  # random multiples of 90 degrees (cells have no orientation)
    intensity_scale: float = VIEW_DEFAULTS["intensity_scale"]  # per-channel gain ~ U(1 - s, 1 + s), per channel
    intensity_shift: float = VIEW_DEFAULTS["intensity_shift"]  # per-channel offset ~ U(-t, t) x the channel's mean
    noise: float = VIEW_DEFAULTS["noise"]  # Gaussian pixel noise, std as a fraction of the channel's std in the view
    blur_prob: float = VIEW_DEFAULTS["blur_prob"]  # probability of a Gaussian blur (one sigma for a sample's channels)
    blur_sigma: tuple[float, float] = tuple(VIEW_DEFAULTS["blur_sigma"])  # in output pixels

    def __post_init__(self) -> None:
        if not (isinstance(self.size, numbers.Integral) and not isinstance(self.size, bool) and self.size >= 1):
            raise _BadSetting("size", f"needs a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        for name, high in (("scale", 1.0), ("ratio", math.inf), ("blur_sigma", math.inf)):
            _range(name, getattr(self, name), high)
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))  # lists from YAML
        for name in ("flip", "rotate90"):
            if not isinstance(getattr(self, name), bool):
                raise _BadSetting(name, f"needs true or false, got {getattr(self, name)!r}")
        for name, high in (("intensity_scale", 1.0), ("intensity_shift", math.inf), ("noise", math.inf),
                           ("blur_prob", 1.0)):  # a gain 1 - intensity_scale must stay positive
            value, closed = getattr(self, name), name != "intensity_scale"
            if not (_is_number(value) and 0 <= value and (value <= high if closed else value < high)):
                raise _BadSetting(name, f"needs a number in [0, {high}{']' if closed else ')'}, got {value!r}")


def view_settings(config: dict, size: int, kind: str) -> ViewSettings:
    """Settings for `kind` ("global" or "local") views of side `size` from the `vit.views` config (VIEW_DEFAULTS,
    the schema's). Both kinds are checked whichever is asked for, so a bad local_scale fails before training starts;
    the local views' size is the caller's (DINO's vit.dino.local_size_ratio, rounded to whole patches)."""
    if kind not in KINDS:
        raise ValueError(f"view kind must be one of {KINDS}, got {kind!r}")
    unknown = sorted(set(config) - set(VIEW_DEFAULTS))
    if unknown:
        raise ValueError(f"config key 'vit.views.{unknown[0]}': unknown (known: {sorted(VIEW_DEFAULTS)})")
    merged = {**VIEW_DEFAULTS, **config}
    shared = {k: merged[k] for k in ("flip", "rotate90", "intensity_scale", "intensity_shift", "noise", "blur_prob",
                                     "blur_sigma")}
    built = {}
    for each in KINDS:
        try:
            built[each] = ViewSettings(size=size, scale=merged[f"{each}_scale"], **shared)
        except _BadSetting as err:
            if err.field == "size":
                raise
            key = f"{each}_scale" if err.field == "scale" else err.field
            raise ValueError(f"config key 'vit.views.{key}': {err.message}") from None
    return built[kind]


def _draws(seeds: torch.Tensor, n_uniform: int, noise_shape: tuple[int, ...] | None, pin: bool = False):
    """Each sample's uniforms (B, n_uniform) float64 and optional noise (B, *noise_shape) float32, on the CPU.

    Noise dominates the cost (a 5x224x224 view is 250k normals), so samples are drawn in a thread pool (torch
    releases the GIL); each has its own generator and output row, so the result does not depend on scheduling.
    `pin`: page-locked noise, for an asynchronous copy to a CUDA device."""
    seeds_list = seeds.tolist()
    uniforms = torch.empty(len(seeds_list), n_uniform, dtype=torch.float64)
    noise = torch.empty(len(seeds_list), *noise_shape, pin_memory=pin) if noise_shape is not None else None

    def draw(i: int) -> None:
        gen = torch.Generator().manual_seed(int(seeds_list[i]) & 0xFFFF_FFFF_FFFF_FFFF)
        torch.rand(n_uniform, generator=gen, dtype=torch.float64, out=uniforms[i])
        if noise is not None:
            torch.randn(noise_shape, generator=gen, out=noise[i])

    workers = min(len(seeds_list), torch.get_num_threads()) if noise is not None else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(draw, range(len(seeds_list))))
    else:
        for i in range(len(seeds_list)):
            draw(i)
    return uniforms, noise


def _affine(u: torch.Tensor, s: ViewSettings) -> torch.Tensor:
    """(B, 2, 3) float64 matrices, output -> input normalized coordinates, from the first 7 uniforms of each row."""
    area = s.scale[0] + (s.scale[1] - s.scale[0]) * u[:, 0]
    log_lo, log_hi = math.log(s.ratio[0]), math.log(s.ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    # Half-widths of the box as fractions of the crop; clamped so an extreme aspect stays inside (smaller area).
    w, h = torch.sqrt(area * aspect).clamp(max=1.0), torch.sqrt(area / aspect).clamp(max=1.0)
    cx, cy = (1 - w) * (2 * u[:, 2] - 1), (1 - h) * (2 * u[:, 3] - 1)
    one = torch.ones_like(w)
    fx = torch.where(u[:, 4] < 0.5, -one, one) if s.flip else one
    fy = torch.where(u[:, 5] < 0.5, -one, one) if s.flip else one
    k = (u[:, 6] * 4).floor().clamp(max=3).long() if s.rotate90 else torch.zeros_like(w, dtype=torch.long)
    # torch.rot90 by one step: out(x, y) = in(-y, x); its powers, indexed by k.
    rot = torch.tensor([[[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]]],
                       dtype=torch.float64)[k]
    linear = torch.diag_embed(torch.stack([w * fx, h * fy], -1)) @ rot
    return torch.cat([linear, torch.stack([cx, cy], -1)[..., None]], -1)


def _blur(views: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor, s: ViewSettings) -> torch.Tensor:
    """Separable Gaussian per sample (grouped conv, reflect padding); samples drawn without blur get a delta."""
    b, c, size, _ = views.shape
    radius = min(max(1, math.ceil(3 * s.blur_sigma[1])), size - 1)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(x**2) / (2 * sigma[:, None] ** 2))
    kernel = torch.where(on[:, None], kernel / kernel.sum(1, keepdim=True), (x == 0).double())
    kernel = kernel.repeat_interleave(c, 0).to(views)[:, None]  # (B*C, 1, K)
    flat = F.pad(views.reshape(1, b * c, size, size), (radius,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel[..., None], groups=b * c)
    flat = F.conv2d(flat, kernel[:, :, None], groups=b * c)
    return flat.reshape(b, c, size, size)


def random_views(crops: torch.Tensor, settings: ViewSettings, seeds: torch.Tensor) -> torch.Tensor:
    """crops (B, C, S, S) float on any device, seeds (B,) int64 (one per sample) -> views (B, C, size, size),
    same device and float dtype. Half-precision crops are processed in float32."""
    if crops.ndim != 4 or crops.shape[-1] != crops.shape[-2] or not crops.is_floating_point():
        raise ValueError(f"crops must be a float tensor (B, C, S, S), got {tuple(crops.shape)} {crops.dtype}")
    if seeds.shape != crops.shape[:1]:
        raise ValueError(f"need one seed per crop: seeds {tuple(seeds.shape)} for {crops.shape[0]} crops")
    b, c, size = crops.shape[0], crops.shape[1], settings.size
    work = crops if crops.dtype in (torch.float32, torch.float64) else crops.float()
    u, noise = _draws(seeds, 9 + 2 * c, (c, size, size) if settings.noise > 0 else None,
                      pin=crops.device.type == "cuda")
    theta = _affine(u, settings).to(device=crops.device, dtype=work.dtype)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    views = F.grid_sample(work, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if settings.blur_prob > 0:
        sigma = settings.blur_sigma[0] + (settings.blur_sigma[1] - settings.blur_sigma[0]) * u[:, 8]
        views = _blur(views, sigma, u[:, 7] < settings.blur_prob, settings)
    # Statistics of each channel of each view before photometry: the offset and noise are relative to them.
    mean = views.mean((2, 3), keepdim=True)
    std = views.std((2, 3), correction=0, keepdim=True) if noise is not None else None
    gain = (1 + settings.intensity_scale * (2 * u[:, 9:9 + c] - 1)).to(views)[..., None, None]
    shift = (settings.intensity_shift * (2 * u[:, 9 + c:9 + 2 * c] - 1)).to(views)[..., None, None]
    views = views.mul_(gain).add_(shift * mean)  # views is a fresh tensor here: in place saves memory passes
    if noise is not None:
        views = views.addcmul_(noise.to(views.device, non_blocking=True).to(views.dtype), settings.noise * std)
    return views.to(crops.dtype)


def view_seeds(seeds: torch.Tensor, view: int) -> torch.Tensor:
    """Seed of view `view` of each sample: SeedSequence((seed, view)), so views differ and never overflow int64."""
    out = [np.random.SeedSequence([int(s) & 0xFFFF_FFFF_FFFF_FFFF, view]).generate_state(1, np.uint64)[0]
           for s in seeds.tolist()]
    return torch.from_numpy(np.array(out, dtype=np.uint64).view(np.int64))


def multi_crop(crops: torch.Tensor, global_views: ViewSettings, local_views: ViewSettings, n_global: int,
               n_local: int, seeds: torch.Tensor) -> list[torch.Tensor]:
    """n_global global views, then n_local local views, each (B, C, size, size); view v uses view_seeds(seeds, v)."""
    settings = [global_views] * n_global + [local_views] * n_local
    return [random_views(crops, s, view_seeds(seeds, v)) for v, s in enumerate(settings)]
