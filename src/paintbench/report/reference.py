"""What "right" looks like: this run next to the CPJUMP1 paper's values, and next to the planted answer.

- `paper_comparison_figure`: per task and condition, each comparable feature set's fraction retrieved (with its
  95% interval) against the paper's value and the absolute difference. It is drawn only for runs that can be
  compared with the paper (real CPJUMP1 plates, protocol cpjump1): `config/paper.yaml` exists to make one.
- `planted_table`: on synthetic runs, mAP and share retrieved per planted class (strong / weak / null) for every
  feature set and task, under the run's protocol and the other one (`alt_*` columns of the result tables).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.atomic import read_table
from paintbench.report.figures import FEATURE_SET_COLOURS, feature_set_colours, plt, save_figure, style
from paintbench.registry import TASKS
from paintbench.report.inputs import RunFiles
from paintbench.report.summary import CONDITION, REFERENCE

CLASS_ORDER = ["strong", "weak", "null"]
KEYS = ["task", *CONDITION]


def paper_differences(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per comparable (feature set, task, condition): ours, the paper's, and |ours - paper's|."""
    paper = summary[(summary["row_kind"] == "paper") & summary["comparable"].fillna(False).astype(bool)]
    ours = summary[(summary["row_kind"] != "paper") & (summary["n_perturbations"] > 0)]
    both = ours.merge(paper[[*KEYS, "fraction_retrieved", "mean_average_precision", "n_perturbations"]], on=KEYS,
                      suffixes=("", "_paper"))
    return both.assign(abs_difference=(both["fraction_retrieved"] - both["fraction_retrieved_paper"]).abs(),
                       map_abs_difference=(both["mean_average_precision"] - both["mean_average_precision_paper"]).abs())


def paper_comparison_figure(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Dot plot per task: conditions down, fraction retrieved across; ours (colour, interval) vs the paper (black)."""
    table = paper_differences(summary)
    if table.empty:
        raise ValueError("paper_comparison_figure: no condition of this run is comparable with the paper")
    tasks = [t for t in TASKS if (table["task"] == t).any()]
    sets = sorted(table["feature_set"].unique())
    colours = feature_set_colours(sets)
    sizes = [table.loc[table["task"] == t, "condition"].nunique() for t in tasks]
    with style():
        fig = plt.figure(figsize=(9.5, 1.4 + sum(0.5 + 0.3 * n for n in sizes)), layout="constrained")
        axes = fig.subplots(len(tasks), 1, sharex=True, squeeze=False, height_ratios=[0.5 + n for n in sizes])[:, 0]
        for ax, task in zip(axes, tasks):
            rows = table[table["task"] == task]
            labels = list(dict.fromkeys(rows["condition"]))
            y = rows["condition"].map({label: i for i, label in enumerate(labels)}).to_numpy(float)
            for j, name in enumerate(sets):
                part = rows["feature_set"] == name
                offset = (j - (len(sets) - 1) / 2) * 0.25
                value = rows.loc[part, "fraction_retrieved"].to_numpy(float)
                err = np.vstack([value - rows.loc[part, "fraction_retrieved_low"].to_numpy(float),
                                 rows.loc[part, "fraction_retrieved_high"].to_numpy(float) - value])
                ax.errorbar(value, y[part.to_numpy()] + offset, xerr=err, fmt="o", ms=5, color=colours[name],
                            elinewidth=0.8, capsize=2, label=name)
            ax.plot(rows["fraction_retrieved_paper"], y, ls="none", marker="D", ms=6,
                    color=FEATURE_SET_COLOURS[REFERENCE], zorder=3, clip_on=False)
            worst = rows.groupby("condition", sort=False)["abs_difference"].max()
            ax.set_yticks(range(len(labels)), [f"{label}  (|diff| {worst[label]:.3f})" for label in labels])
            ax.set_ylim(len(labels) - 0.5, -0.5)
            ax.set_title(task.replace("_", " "), loc="left")
            ax.grid(axis="x", color="#DDDDDD", lw=0.6)
        axes[-1].set_xlim(-0.02, 1.02)
        axes[-1].set_xlabel("fraction retrieved (q < 0.05); black diamonds: the CPJUMP1 paper")
        handles, names = axes[0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(4, len(names)), frameon=False)
        fig.suptitle(f"This run vs the paper: largest |difference| {table['abs_difference'].max():.3f}")
    return save_figure(fig, stem)


def unit_classes(truth: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Planted class of every scored unit: perturbations (per modality) and genes (their CRISPR guides' class)."""
    per_perturbation = {f"{m}|{b}": c for m, b, c in zip(truth["Metadata_modality"], truth["Metadata_broad_sample"],
                                                         truth["effect_class"])}
    genetic = truth[truth["Metadata_modality"].isin(["crispr", "orf"]) & truth["Metadata_gene"].notna()]
    genes = genetic.sort_values("Metadata_modality").drop_duplicates("Metadata_gene")  # crispr before orf
    return {"perturbation": per_perturbation, "gene": dict(zip(genes["Metadata_gene"], genes["effect_class"]))}


def _classified(task: str, scored: pd.DataFrame, classes: dict[str, dict[str, str]]) -> pd.Series:
    if task == "replicate_retrieval":
        keys = scored["Metadata_modality"].astype(str) + "|" + scored["Metadata_broad_sample"].astype(str)
        return keys.map(classes["perturbation"])
    return scored["Metadata_gene"].map(classes["gene"])


def planted_table(files: RunFiles, feature_sets: list[str], truth: pd.DataFrame) -> pd.DataFrame:
    """Per feature set, task and planted class: units scored, mean mAP, share retrieved (both protocols)."""
    classes = unit_classes(truth)
    rows = []
    for feature_set in feature_sets:
        for task in TASKS:
            scored = read_table(files.result(feature_set, task))
            if scored.empty:
                continue
            scored = scored.assign(effect_class=_classified(task, scored, classes))
            for klass, group in scored.groupby("effect_class"):
                if klass not in CLASS_ORDER:
                    continue
                rows.append({"feature_set": feature_set, "task": task, "effect_class": klass, "n": len(group),
                             "mean_average_precision": group["mean_average_precision"].mean(),
                             "protocol": group["protocol"].iloc[0],
                             "fraction_retrieved": group["below_corrected_p"].astype(bool).mean(),
                             "alt_protocol": group["alt_protocol"].iloc[0] if "alt_protocol" in group else None,
                             "alt_fraction_retrieved": group["alt_below_corrected_p"].astype(bool).mean()
                             if "alt_below_corrected_p" in group else np.nan})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["_order"] = table["effect_class"].map({c: i for i, c in enumerate(CLASS_ORDER)})
    table["_task"] = table["task"].map({t: i for i, t in enumerate(TASKS)})
    return table.sort_values(["_task", "feature_set", "_order"]).drop(columns=["_order", "_task"]).reset_index(drop=True)
