"""Figures of the run report built from images: illumination functions, MAE training and reconstructions, crops.

Five-channel Cell Painting crops are shown as RGB composites (`composite`); every function returns the
written [stem.png, stem.svg] (see paintbench.report.figures.save_figure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from paintbench.registry import CHANNELS, LOSS_NAMES, METHOD_TITLES
# pyplot through figures: that module selects the headless Agg backend before pyplot is first imported.
from paintbench.report.figures import OKABE_ITO, plt, save_figure, style

# RGB weight of each channel, in CHANNELS order. DNA, ER and AGP take the three primaries' corners so the
# nucleus / ER / cell outline read apart; RNA (nucleoli, cytoplasm) and Mito get mixed hues on top.
CHANNEL_RGB = {
    "DNA": (0.0, 0.0, 1.0),   # blue
    "ER": (0.0, 1.0, 0.0),    # green
    "RNA": (0.0, 0.6, 0.6),   # cyan
    "AGP": (1.0, 0.55, 0.0),  # orange
    "Mito": (1.0, 0.0, 0.7),  # magenta
}
CHANNEL_KEY = "DNA blue, ER green, RNA cyan, AGP orange, Mito magenta"
STRETCH_PERCENTILES = (1.0, 99.5)
MAX_CROPS_PER_ROW = 6
MAX_RECONSTRUCTIONS = 6
ILLUM_MAX_SIDE = 256  # illumination functions are smooth: a subsampled view shows them fully and keeps SVGs small
MASKED_GREY = 0.5
IMAGE_CMAP = "cividis"


def channel_limits(image: np.ndarray) -> np.ndarray:
    """(C, 2) low/high contrast limits per channel: the 1st and 99.5th percentile of that channel."""
    flat = np.nan_to_num(np.asarray(image, np.float32)).reshape(image.shape[0], -1)
    return np.percentile(flat, STRETCH_PERCENTILES, axis=1).T


def composite(image: np.ndarray, limits: np.ndarray | None = None) -> np.ndarray:
    """(5, H, W) crop in CHANNELS order (DNA, ER, RNA, AGP, Mito) -> (H, W, 3) RGB floats in [0, 1].

    Colours: DNA blue, ER green, RNA cyan (0, .6, .6), AGP orange (1, .55, 0), Mito magenta (1, 0, .7).
    Each channel is stretched linearly from its 1st to its 99.5th percentile in this image (or from `limits`,
    (5, 2), e.g. another image's `channel_limits` to show two images on one scale), the stretched channels are
    added with these colours and the sum is clipped to [0, 1]. A flat channel contributes nothing.
    """
    image = np.nan_to_num(np.asarray(image, np.float32))
    if image.ndim != 3 or image.shape[0] != len(CHANNELS):
        raise ValueError(f"composite: expected a ({len(CHANNELS)}, H, W) crop, got shape {image.shape}")
    limits = channel_limits(image) if limits is None else np.asarray(limits, np.float32)
    low, high = limits[:, 0, None, None], limits[:, 1, None, None]
    span = high - low
    # A flat channel (span 0) would divide by zero; showing it black is the honest rendering.
    stretched = np.where(span > 0, (image - low) / np.where(span > 0, span, 1.0), 0.0).clip(0.0, 1.0)
    weights = np.array([CHANNEL_RGB[c] for c in CHANNELS], np.float32)  # (5, 3)
    return np.einsum("chw,cr->hwr", stretched, weights).clip(0.0, 1.0)


def _blank(ax: plt.Axes) -> None:
    """Image panel: no ticks or frame, but (unlike set_axis_off) the y label still shows."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def illumination_figure(functions_of: Mapping[str, Mapping[str, Path]], plates: list[str], stem: Path,
                        max_plates: int = 6) -> list[Path]:
    """Illumination correction functions (plate -> channel -> .npy): one row per plate (the first `max_plates`),
    one column per channel."""
    shown = list(plates)[:max_plates]
    if not shown:
        raise ValueError("illumination_figure: no plates given")
    functions = {}
    for plate in shown:
        for channel in CHANNELS:
            path = functions_of.get(plate, {}).get(channel)
            if path is None or not Path(path).exists():
                raise FileNotFoundError(f"{path or plate}: illumination function of plate {plate}, channel {channel} "
                                        "not found")
            array = np.load(path)
            step = max(1, int(np.ceil(max(array.shape) / ILLUM_MAX_SIDE)))
            functions[plate, channel] = np.asarray(array[::step, ::step], np.float32)
    with style():
        fig = plt.figure(figsize=(1.0 + 2.3 * len(CHANNELS), 1.2 + 2.3 * len(shown)), layout="constrained")
        axes = fig.subplots(len(shown), len(CHANNELS), squeeze=False)
        for j, channel in enumerate(CHANNELS):
            # One scale per channel: plates can be compared down a column; channels differ too much to share one.
            values = np.concatenate([functions[p, channel].ravel() for p in shown])
            vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
            for i, plate in enumerate(shown):
                image = axes[i, j].imshow(functions[plate, channel], cmap=IMAGE_CMAP, vmin=vmin, vmax=vmax)
                _blank(axes[i, j])
            axes[0, j].set_title(channel)
            fig.colorbar(image, ax=axes[:, j], location="bottom", shrink=0.9, aspect=15)
        for i, plate in enumerate(shown):
            axes[i, 0].set_ylabel(plate, fontsize=9)
        more = f" (first {len(shown)} of {len(plates)} plates)" if len(plates) > len(shown) else ""
        fig.suptitle(f"Illumination correction functions{more}")
    return save_figure(fig, stem)


def training_figure(train_log: Path, stem: Path, method: str = "mae") -> list[Path]:
    """Loss per step with a running mean (log scale if it spans more than 10x, MAE only), the learning rate, and
    the tracked replicate mAP when the log has it."""
    table = pd.read_csv(train_log, sep="\t")
    missing = {"step", "loss", "lr"} - set(table.columns)
    if missing:
        raise ValueError(f"{train_log}: training log lacks column(s) {sorted(missing)}")
    with style():
        tracked = table.dropna(subset=["replicate_map"]) if "replicate_map" in table else table.iloc[:0]
        fig = plt.figure(figsize=(8, 6.5 if len(tracked) else 4.5), layout="constrained")
        axes = fig.subplots(2 if len(tracked) else 1, 1, sharex=True, squeeze=False,
                            height_ratios=(3, 2) if len(tracked) else (1,))[:, 0]
        ax = axes[0]
        axes[-1].set_xlabel("step")
        ax.set_ylabel(LOSS_NAMES.get(method, "loss"))
        if len(tracked):
            axes[1].plot(tracked["step"], tracked["replicate_map"], "o-", color=OKABE_ITO["green"])
            axes[1].set_ylabel("replicate mAP\n(tracked sample)")
        if table.empty:
            # steps=0 is a legitimate run (outputs only); say so instead of failing the report.
            ax.text(0.5, 0.5, "no training steps logged", transform=ax.transAxes, ha="center", va="center")
        else:
            blue, orange = OKABE_ITO["blue"], OKABE_ITO["orange"]
            window = max(1, len(table) // 50)
            smooth = table["loss"].rolling(window, min_periods=1).mean()
            ax.plot(table["step"], table["loss"], lw=0.6, alpha=0.35, color=blue, label="loss per step")
            ax.plot(table["step"], smooth, lw=1.8, color=blue, label=f"running mean of {window}")
            positive = table["loss"][table["loss"] > 0]
            if method == "mae" and len(positive) and positive.max() > 10 * positive.min():
                ax.set_yscale("log")
            lr_ax = ax.twinx()
            lr_ax.plot(table["step"], table["lr"], lw=1.2, ls="--", color=orange, label="learning rate")
            lr_ax.set_ylabel("learning rate", color=orange)
            lr_ax.tick_params(axis="y", colors=orange)
            lr_ax.set_ylim(bottom=0)
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # 2e-3, not 0.00200
            handles = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
            ax.legend(handles=handles, loc="upper right", frameon=False)
        minutes = table["seconds"].iloc[-1] / 60 if "seconds" in table and len(table) else float("nan")
        timing = f", {minutes:.1f} min" if np.isfinite(minutes) else ""
        ax.set_title(f"{METHOD_TITLES.get(method, method)} pretraining: {len(table)} steps{timing}")
    return save_figure(fig, stem)


def _reconstruct(checkpoint: Path, crops: np.ndarray, mask_ratio: float,
                 seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Resized inputs (N, C, S, S), reconstructions (N, C, S, S), pixel mask (N, S, S; True = hidden), patch size."""
    import torch

    from paintbench.vit.core import resize_to
    from paintbench.vit.model import NORM_PIX_EPS, load_mae

    model = load_mae(checkpoint, "cpu")
    if crops.ndim != 4 or crops.shape[1] != model.in_chans:
        raise ValueError(f"reconstruction_figure: crops are {crops.shape}, expected (N, {model.in_chans}, S, S)")
    imgs = resize_to(torch.from_numpy(np.asarray(crops, np.float32)), model.grid[0] * model.patch_size)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _, pred, mask = model(imgs, mask_ratio, generator=generator)
        target = model.patchify(imgs)
        if model.norm_pix_loss:
            # The decoder predicted per-patch standardized pixels; give them the true patch mean and spread back,
            # as the MAE paper's visualisation does, so the reconstruction is in image units.
            mean = target.mean(dim=-1, keepdim=True)
            std = torch.sqrt(target.var(dim=-1, keepdim=True, unbiased=False) + NORM_PIX_EPS)
            pred = pred * std + mean
        hidden = mask.unsqueeze(-1)
        recon = model.unpatchify(target * (1 - hidden) + pred.float() * hidden)
        grid = mask.reshape(-1, *model.grid).bool()
        pixels = grid.repeat_interleave(model.patch_size, 1).repeat_interleave(model.patch_size, 2)
    return imgs.numpy(), recon.numpy(), pixels.numpy(), model.patch_size


def reconstruction_figure(checkpoint: Path, crops: np.ndarray, stem: Path, mask_ratio: float = 0.75,
                          seed: int = 0) -> list[Path]:
    """Rows of (original, masked input, reconstruction) composites for up to 6 crops through the MAE."""
    crops = np.asarray(crops)[:MAX_RECONSTRUCTIONS]
    if len(crops) == 0:
        raise ValueError("reconstruction_figure: no crops given")
    originals, recons, hidden, patch = _reconstruct(Path(checkpoint), crops, mask_ratio, seed)
    with style():
        fig = plt.figure(figsize=(7.5, 0.9 + 2.4 * len(crops)), layout="constrained")
        axes = fig.subplots(len(crops), 3, squeeze=False)
        for i, (original, recon, mask) in enumerate(zip(originals, recons, hidden)):
            # One contrast stretch per crop (the original's), so reconstruction colours compare with the input.
            limits = channel_limits(original)
            rgb = composite(original, limits)
            masked = rgb.copy()
            masked[mask] = MASKED_GREY
            for ax, panel in zip(axes[i], (rgb, masked, composite(recon, limits))):
                ax.imshow(panel, interpolation="nearest")
                _blank(ax)
            axes[i, 0].set_ylabel(f"crop {i + 1}")
        for ax, title in zip(axes[0], ("original", f"masked ({mask_ratio:.0%} hidden)", "reconstruction")):
            ax.set_title(title)
        fig.suptitle(f"MAE reconstructions: {Path(checkpoint).parent.name}, {patch} px patches")
        fig.supxlabel(CHANNEL_KEY, fontsize=9)
    return save_figure(fig, stem)


def examples_figure(groups: list[tuple[str, np.ndarray]], stem: Path, title: str) -> list[Path]:
    """One labelled row of up to 6 crop composites per group; a group without crops reads '(no crops)'."""
    if not groups:
        raise ValueError(f"examples_figure: no groups to show for {title!r}")
    ncols = max(1, min(MAX_CROPS_PER_ROW, max(len(crops) for _, crops in groups)))
    with style():
        fig = plt.figure(figsize=(2.2 + 1.6 * ncols, 0.9 + 1.6 * len(groups)), layout="constrained")
        axes = fig.subplots(len(groups), ncols, squeeze=False)
        for row, (label, crops) in zip(axes, groups):
            for ax, crop in zip(row, np.asarray(crops)[:ncols]):
                ax.imshow(composite(crop), interpolation="nearest")
            for ax in row:
                _blank(ax)
            if len(crops) == 0:
                row[0].text(0.5, 0.5, "(no crops)", transform=row[0].transAxes, ha="center", va="center")
            row[0].set_ylabel(label, rotation=0, ha="right", va="center")
        fig.suptitle(title)
        fig.supxlabel(CHANNEL_KEY, fontsize=9)
    return save_figure(fig, stem)

