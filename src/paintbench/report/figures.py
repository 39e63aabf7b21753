"""Figures of the run report built from tables: fraction retrieved, mAP vs p, feature set comparison, plate maps.

Every figure function takes its data and an output stem and returns the written [stem.png, stem.svg]
(see `save_figure`). Colours follow the Okabe-Ito palette, which stays distinguishable under the common
colour-vision deficiencies; a feature set keeps its colour in every figure.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # report rules run on headless nodes: never try to open a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from paintbench.atomic import atomic_path  # noqa: E402
from paintbench.comparison import paired_difference  # noqa: E402
from paintbench.report.summary import CONDITION, REFERENCE, TASKS, condition_label  # noqa: E402

OKABE_ITO = {"orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73", "yellow": "#F0E442",
             "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
FEATURE_SET_COLOURS = {"cellprofiler": OKABE_ITO["blue"], "vitmae": OKABE_ITO["vermillion"],
                       "vitdino": OKABE_ITO["orange"], "vitsimclr": OKABE_ITO["purple"],
                       "published_cellprofiler": OKABE_ITO["green"], "paper_cellprofiler": OKABE_ITO["black"]}
# Yellow last: it is the hardest to see on white, so it is only used once the others are taken.
SPARE_COLOURS = [OKABE_ITO[k] for k in ("sky_blue", "yellow")]
MODALITY_COLOURS = {"compound": OKABE_ITO["orange"], "crispr": OKABE_ITO["sky_blue"], "orf": OKABE_ITO["purple"]}
NOT_SIGNIFICANT = "#BBBBBB"
HEATMAP_CMAP = "viridis"
MISSING_WELL = "#E6E6E6"
REFERENCE_LABEL = "CPJUMP1 paper (CellProfiler)"
MERGE_KEYS = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_plate_group", "Metadata_broad_sample"]
LABEL_COLUMNS = ("Metadata_pert_iname", "Metadata_gene", "Metadata_broad_sample")
Q_THRESHOLD = 0.05
P_FLOOR = 1e-6
PLATE_SHAPES = {96: (8, 12), 384: (16, 24)}  # wells -> (rows, columns); CPJUMP1 has 384-well plates only
# Sizes in points; 9 is the smallest that stays legible when the PNG is scaled down in the HTML report.
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
         "legend.fontsize": 9, "figure.titlesize": 12, "svg.hashsalt": "paintbench"}


def style() -> Any:
    """rc settings for report figures, scoped so importing this module changes nobody else's plots."""
    return plt.rc_context(STYLE)


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write stem.png (150 dpi) and stem.svg atomically, close the figure, return both paths."""
    stem = Path(stem)
    paths = []
    try:
        for fmt, options in (("png", {"dpi": 150}), ("svg", {"metadata": {"Date": None}})):
            # Append rather than with_suffix: stems such as "map_vs_p.replicate_retrieval" contain dots.
            path = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(path) as tmp, style():
                # The temporary name has no usable suffix, so the format must be explicit.
                fig.savefig(tmp, format=fmt, **options)
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def feature_set_colours(names: list[str]) -> dict[str, str]:
    """Fixed colours for the known feature sets; others take the spare colours in name order (no clashes)."""
    spare = iter(SPARE_COLOURS * (1 + len(names) // len(SPARE_COLOURS)))
    colours = {}
    for name in sorted(set(names)):
        colours[name] = FEATURE_SET_COLOURS.get(name) or next(spare)
    return colours


def _ordered_sets(names: list[str]) -> list[str]:
    """Known feature sets in a fixed order, then the rest alphabetically, so bars never swap places between runs."""
    known = [n for n in FEATURE_SET_COLOURS if n in set(names)]
    return known + sorted(set(names) - set(known))


def _missing(value: Any) -> bool:
    """None, NaN or pd.NA (the summary's nullable Int64/string columns hold pd.NA, which np.isscalar rejects)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-likes: not a missing scalar
        return False


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows with the summary's condition label (computed for tables that lack the column)."""
    if "condition" in rows and rows["condition"].notna().all():
        return rows.assign(_label=rows["condition"].astype(str))
    return rows.assign(_label=[condition_label(r) for _, r in rows.iterrows()])


def _conditions(rows: pd.DataFrame) -> list[str]:
    """Condition labels of one task in a stable order (cell type, modality, time, group, matched condition)."""
    present = [c for c in CONDITION if c in rows]
    return list(dict.fromkeys(_labelled(rows.sort_values(present, na_position="first"))["_label"]))


def _reference(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper's rows that this run can be compared with (never drawn as a competitor on other data)."""
    kind = rows["row_kind"] if "row_kind" in rows else rows["feature_set"].map(lambda f: "paper" if f == REFERENCE else "")
    comparable = rows["comparable"].fillna(False).astype(bool) if "comparable" in rows else True
    return rows[(kind == "paper") & comparable & rows["fraction_retrieved"].notna()]


def _grouped_bars(ax: plt.Axes, rows: pd.DataFrame, sets: list[str], colours: dict[str, str]) -> bool:
    """Horizontal bars per condition with 95% interval whiskers, one per feature set; comparable paper values as
    black diamonds. True if any diamond was drawn."""
    labels = _conditions(rows)
    position = {label: i for i, label in enumerate(labels)}
    rows = _labelled(rows)
    height = 0.8 / max(1, len(sets))
    for j, name in enumerate(sets):
        part = rows[(rows["feature_set"] == name) & rows["fraction_retrieved"].notna()]
        y = part["_label"].map(position).to_numpy(float) + (j - (len(sets) - 1) / 2) * height
        value = part["fraction_retrieved"].to_numpy(float)
        xerr = None
        if {"fraction_retrieved_low", "fraction_retrieved_high"} <= set(part.columns):
            xerr = np.vstack([value - part["fraction_retrieved_low"].to_numpy(float),
                              part["fraction_retrieved_high"].to_numpy(float) - value])
        ax.barh(y, value, height=height, color=colours[name], xerr=xerr,
                error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
    reference = _reference(rows)
    if len(reference):
        # Unclipped so a value of 1.0 shows whole; only when there are points, since an empty unclipped line
        # has a degenerate extent that breaks the constrained layout.
        ax.plot(reference["fraction_retrieved"], reference["_label"].map(position), ls="none", marker="D", ms=7,
                color=FEATURE_SET_COLOURS[REFERENCE], zorder=3, clip_on=False)
    counts = rows[rows["feature_set"].isin(sets)].groupby("_label")["n_perturbations"].max()
    ax.set_yticks(range(len(labels)), [f"{label}  (n={_count(counts.get(label))})" for label in labels])
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first condition at the top, as read
    return len(reference) > 0


def _count(value: Any) -> str:
    return "?" if _missing(value) else str(int(value))


def fraction_retrieved_figure(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """One panel per task with rows: fraction retrieved per condition and feature set (95% Wilson intervals), the
    paper's values as diamonds where this run is comparable with them."""
    tasks = [t for t in TASKS if (summary["task"] == t).any()]
    tasks += [t for t in summary["task"].drop_duplicates() if t not in tasks]
    if not tasks:
        raise ValueError("fraction_retrieved_figure: the summary table has no rows")
    sets = _ordered_sets([s for s in summary["feature_set"].unique() if s != REFERENCE])
    colours = feature_set_colours(sets)
    sizes = [len(_conditions(summary[summary["task"] == t])) for t in tasks]
    with style():
        # Height follows the bar count so every bar keeps a readable thickness however many conditions there are.
        fig = plt.figure(figsize=(9.5, 1.6 + sum(0.25 + 0.22 * n * max(1, len(sets)) for n in sizes)),
                         layout="constrained")
        axes = fig.subplots(len(tasks), 1, sharex=True, squeeze=False,
                            height_ratios=[0.6 + n * max(1, len(sets)) * 0.22 for n in sizes])[:, 0]
        any_reference = False
        for ax, task in zip(axes, tasks):
            any_reference |= _grouped_bars(ax, summary[summary["task"] == task], sets, colours)
            ax.set_title(task.replace("_", " "), loc="left")
            ax.set_xlim(0, 1)
            ax.grid(axis="x", color="#DDDDDD", lw=0.6)
            ax.set_axisbelow(True)
        axes[-1].set_xlabel(f"fraction retrieved (q < {Q_THRESHOLD:g}); whiskers: 95% Wilson interval")
        handles = [Patch(color=colours[s], label=s) for s in sets]
        if any_reference:
            handles.append(Line2D([], [], ls="none", marker="D", ms=7, color="black", label=REFERENCE_LABEL))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False)
        fig.suptitle("Fraction retrieved")
    return save_figure(fig, stem)


def _significant(table: pd.DataFrame) -> pd.Series:
    if "below_corrected_p" in table:
        return table["below_corrected_p"].fillna(False).astype(bool)
    return table["corrected_p_value"] < Q_THRESHOLD


def map_vs_p_figure(results: dict[str, pd.DataFrame], task: str, stem: Path) -> list[Path]:
    """Per feature set: each perturbation's mAP against -log10 p, q < 0.05 in the feature set's colour."""
    if not results:
        raise ValueError(f"map_vs_p_figure: no feature sets given for {task}")
    colours = feature_set_colours(list(results))
    with style():
        fig = plt.figure(figsize=(1 + 3.6 * len(results), 4.2), layout="constrained")
        axes = fig.subplots(1, len(results), sharex=True, sharey=True, squeeze=False)[0]
        top = -math.log10(0.05)  # the y range reaches at least p = 0.05, and beyond only as far as the data do
        for ax, (name, table) in zip(axes, results.items()):
            table = table.dropna(subset=["mean_average_precision", "p_value"])
            significant = _significant(table).to_numpy()
            y = -np.log10(np.clip(table["p_value"].to_numpy(float), P_FLOOR, 1.0))
            x = table["mean_average_precision"].to_numpy(float)
            top = max(top, float(y.max(initial=0.0)))
            ax.scatter(x[~significant], y[~significant], s=14, color=NOT_SIGNIFICANT, lw=0, label="q ≥ 0.05")
            ax.scatter(x[significant], y[significant], s=14, color=colours[name], lw=0, label="q < 0.05")
            if significant.any():
                # The largest significant p is where the BH cut-off falls for this feature set.
                cut = -math.log10(max(P_FLOOR, table["p_value"].to_numpy(float)[significant].max()))
                ax.axhline(cut, ls="--", lw=0.8, color="#555555")
            retrieved = f"{significant.mean():.0%} retrieved" if len(table) else "no perturbations scored"
            ax.set_title(f"{name}\n{retrieved} ({significant.sum()} of {len(table)})")
            ax.set_xlabel("mAP")
            # Upper left: low mAP with a small p is rare, so the legend hides the fewest points there.
            ax.legend(loc="upper left", frameon=False, handletextpad=0.2)
        axes[0].set_xlim(-0.02, 1.02)
        axes[0].set_ylim(-0.05 * top, top * 1.08)
        axes[0].set_ylabel(f"−log10 p  (p floored at {P_FLOOR:g})")
        fig.suptitle(f"{task.replace('_', ' ')}: mAP vs significance (dashed: q = {Q_THRESHOLD:g} cut-off)")
    return save_figure(fig, stem)


def _point_labels(table: pd.DataFrame) -> pd.Series:
    """Perturbation name, else gene, else broad sample: the first readable identifier a row has."""
    label = pd.Series(np.nan, index=table.index, dtype=object)
    for column in LABEL_COLUMNS:
        if column in table:
            label = label.fillna(table[column].astype(object).where(table[column].notna()))
    return label.fillna("?").astype(str)


def comparison_figure(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str, stem: Path,
                      n_labels: int = 6) -> list[Path]:
    """Per-perturbation mAP of feature set b against a, by modality, with the largest differences named; the title
    carries the paired answer over every perturbation both scored (paintbench.comparison.paired_difference: mean
    difference, 95% bootstrap interval, sign-flip p)."""
    keys = [k for k in MERGE_KEYS if k in a and k in b]
    left = a[keys].assign(map_a=a["mean_average_precision"], label_a=_point_labels(a))
    right = b[keys].assign(map_b=b["mean_average_precision"], label_b=_point_labels(b))
    both = left.merge(right, on=keys).dropna(subset=["map_a", "map_b"])
    if both.empty:
        raise ValueError(f"comparison_figure: {name_a} and {name_b} share no perturbations "
                         f"(merged on {', '.join(keys)})")
    both["label"] = both["label_a"].where(both["label_a"] != "?", both["label_b"])
    both["diff"] = both["map_b"] - both["map_a"]
    modalities = sorted(both["Metadata_modality"].astype(str).unique())
    spare = iter(SPARE_COLOURS[::-1] * len(modalities))
    with style():
        fig = plt.figure(figsize=(7.6, 6.2), layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#777777", zorder=1)
        for modality in modalities:
            part = both[both["Metadata_modality"].astype(str) == modality]
            ax.scatter(part["map_a"], part["map_b"], s=16, alpha=0.8, lw=0, zorder=2, label=f"{modality} ({len(part)})",
                       color=MODALITY_COLOURS.get(modality) or next(spare))
        for _, row in both.reindex(both["diff"].abs().sort_values(ascending=False).index).head(n_labels).iterrows():
            # Nudge labels towards the plot centre so names of points near an edge stay inside the axes.
            dx = -6 if row["map_a"] > 0.7 else 6
            ax.annotate(row["label"], (row["map_a"], row["map_b"]), xytext=(dx, 4), textcoords="offset points",
                        fontsize=9, ha="right" if dx < 0 else "left")
        better = int((both["diff"] > 0).sum())
        paired = paired_difference(both["map_a"].to_numpy(), both["map_b"].to_numpy())
        # Above the axes' top-left corner rather than inside it: that corner is where labelled outliers sit.
        ax.set_title(f"{name_b} better: {better} of {len(both)}; mean \u0394mAP {paired['difference']:+.3f} "
                     f"[{paired['difference_low']:+.3f}, {paired['difference_high']:+.3f}], "
                     f"paired p {paired['p_value']:.2g}", loc="left", fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel(f"{name_a} mAP")
        ax.set_ylabel(f"{name_b} mAP")
        fig.suptitle(f"Per-perturbation mAP: {name_b} vs {name_a}")
        ax.legend(title="modality (n)", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    return save_figure(fig, stem)


WELL = re.compile(r"^([A-Pa-p])(\d{1,2})$")


def plate_grid(wells: pd.DataFrame, value: str, plate_format: int = 384) -> np.ndarray:
    """rows x columns array of `value` for one plate (16 x 24 or 8 x 12); wells without a value are NaN, repeated
    wells are averaged."""
    n_rows, n_cols = PLATE_SHAPES[plate_format]
    grid = np.full((n_rows, n_cols), np.nan)
    means = wells.groupby("Metadata_Well")[value].mean()
    for well, number in means.items():
        match = WELL.match(str(well))
        row = ord(match.group(1).upper()) - ord("A") if match else -1
        if not match or not 0 <= row < n_rows or not 1 <= int(match.group(2)) <= n_cols:
            last = f"{chr(ord('A') + n_rows - 1)}{n_cols:02d}"
            raise ValueError(f"plate_heatmaps_figure: well {well!r} is not a {plate_format}-well position (A01..{last})")
        grid[row, int(match.group(2)) - 1] = number
    return grid


def _plate_axes(ax: plt.Axes, plate: str, plate_format: int = 384) -> None:
    ax.set_title(str(plate), fontsize=10)
    # A few row letters and column numbers: enough to find a well without crowding a small panel.
    n_rows, n_cols = PLATE_SHAPES[plate_format]
    row_step = 3 if n_rows > 8 else 1
    ax.set_yticks(range(0, n_rows, row_step), [chr(ord("A") + i) for i in range(0, n_rows, row_step)])
    columns = [1, 6, 12, 18, 24] if n_cols > 12 else [1, 4, 8, 12]
    ax.set_xticks([c - 1 for c in columns], [str(c) for c in columns])
    ax.tick_params(length=2, pad=1)


def plate_format_of(wells: pd.DataFrame, plate: str, plate_formats: Mapping[str, int] | None) -> int:
    """The plate's format: from `plate_formats` (the metadata), else a Metadata_Plate_format column, else 384."""
    if plate_formats and plate in plate_formats:
        return int(plate_formats[plate])
    if "Metadata_Plate_format" in wells and wells["Metadata_Plate_format"].notna().any():
        return int(wells["Metadata_Plate_format"].dropna().iloc[0])
    return 384


def plate_heatmaps_figure(wells: pd.DataFrame, stem: Path, value: str, label: str,
                          plate_formats: Mapping[str, int] | None = None) -> list[Path]:
    """One well map per plate (16 x 24, or 8 x 12 for a 96-well plate; up to 4 per row) sharing one colour scale;
    missing wells light grey. `plate_formats` maps plates to 96 or 384 (see `plate_format_of`)."""
    missing = [c for c in ("Metadata_Plate", "Metadata_Well", value) if c not in wells]
    if missing:
        raise ValueError(f"plate_heatmaps_figure: the well table lacks column(s) {missing}")
    plates = sorted(wells["Metadata_Plate"].dropna().astype(str).unique())
    if not plates:
        raise ValueError(f"plate_heatmaps_figure: no plates with {value}")
    tables = {p: wells[wells["Metadata_Plate"].astype(str) == p] for p in plates}
    formats = {p: plate_format_of(tables[p], p, plate_formats) for p in plates}
    grids = [plate_grid(tables[p], value, formats[p]) for p in plates]
    finite = np.concatenate([g[np.isfinite(g)] for g in grids])
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    cmap = matplotlib.colormaps[HEATMAP_CMAP].with_extremes(bad=MISSING_WELL)
    ncols = min(4, len(plates))
    nrows = math.ceil(len(plates) / ncols)
    with style():
        fig = plt.figure(figsize=(1.2 + 3.3 * ncols, 0.8 + 2.4 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False)
        image = None
        for ax, plate, grid in zip(axes.flat, plates, grids):
            image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax, aspect="equal",
                              interpolation="nearest")
            _plate_axes(ax, plate, formats[plate])
        for ax in axes.flat[len(plates):]:
            ax.set_axis_off()
        fig.colorbar(image, ax=axes, label=label, shrink=0.9)
        fig.suptitle(f"{label} per well (grey: no value)")
    return save_figure(fig, stem)

