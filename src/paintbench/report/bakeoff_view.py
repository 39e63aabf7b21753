"""The bake-off as people read it: a figure (fraction retrieved per task, feature set and chain, with intervals)
and two tables for the page (task x condition x feature set rows, one column per chain, with the paired marks; the
layout and batch controls of every profile set beside its replicate retrieval)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.registry import LAYOUT_CONTROLS, TASK_TITLES, TASKS
from paintbench.report.figures import plt, save_figure, style
from paintbench.significance import wilson_interval

CONTROL_TITLES = {"same_position_controls": "same-position controls", "different_position_replicates":
                  "replicates in other positions", "shuffled_replicates": "label-shuffled replicates",
                  "plate_predictability": "plate predictability", "nearest_neighbour_target_accuracy": "1-NN target accuracy"}


def _scored(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[summary["row_kind"].isin(["measured", "published_profiles"]) & summary["task"].isin(TASKS)]


def pooled(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task and profile set, every condition pooled: units, retrieved, fraction with its Wilson interval."""
    rows = _scored(summary).groupby(["task", "feature_set", "chain", "profile_set"], sort=False, dropna=False).agg(
        n=("n_perturbations", "sum"), retrieved=("n_retrieved", "sum")).reset_index()
    low, high = wilson_interval(rows["retrieved"].astype(float), rows["n"].astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = rows["retrieved"].astype(float) / rows["n"].astype(float)
    return rows.assign(fraction=fraction, low=low, high=high)


def bakeoff_figure(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """One panel per task: fraction retrieved (all conditions pooled) per feature set, one marker per chain."""
    table = pooled(summary)
    sets = list(dict.fromkeys(table["feature_set"]))
    chains = list(dict.fromkeys(table["chain"].dropna()))
    markers = "osD^v<>P*X"
    with style():
        fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.6), squeeze=False, sharey=True)
        for ax, task in zip(axes[0], TASKS):
            rows = table[table["task"] == task]
            for j, chain in enumerate(chains):
                sub = rows[rows["chain"] == chain].set_index("feature_set").reindex(sets)
                x = np.arange(len(sets)) + (j - (len(chains) - 1) / 2) * 0.8 / max(len(chains), 1)
                ax.errorbar(x, sub["fraction"], yerr=[sub["fraction"] - sub["low"], sub["high"] - sub["fraction"]],
                            fmt=markers[j % len(markers)], capsize=2, label=chain)
            ax.set_xticks(range(len(sets)), sets, rotation=30, ha="right")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(TASK_TITLES.get(task, task))
        axes[0][0].set_ylabel("fraction retrieved (q < 0.05), 95% interval")
        axes[0][-1].legend(title="chain", fontsize=8, loc="upper right")
        fig.tight_layout()
        return save_figure(fig, stem)


def _cell(row: pd.Series, mark_column: str) -> str:
    if pd.isna(row["fraction_retrieved"]):
        return f"<td class='muted'>n={int(row['n_perturbations']) if not pd.isna(row['n_perturbations']) else 0}</td>"
    mark = {"best": " class='best'", "tied": " class='tied'"}.get(str(row.get(mark_column)), "")
    detail = f"mAP {row['mean_average_precision']:.2f}, n={int(row['n_perturbations'])}"
    if not pd.isna(row.get("paired_difference")) and not row.get("headline"):
        detail += (f"; &Delta;mAP {row['paired_difference']:+.2f} [{row['paired_difference_low']:+.2f}, "
                   f"{row['paired_difference_high']:+.2f}], q {row['paired_q_value']:.2g}")
    return (f"<td{mark}>{row['fraction_retrieved']:.2f} [{row['fraction_retrieved_low']:.2f}&ndash;"
            f"{row['fraction_retrieved_high']:.2f}] <span class='muted'>({detail})</span></td>")


def bakeoff_html(summary: pd.DataFrame) -> str:
    """Task x condition x feature set rows, one column per chain (the headline chain of each feature set first in
    its row); bold/italic = the paired best/tied among the feature set's chains; &Delta;mAP against its headline."""
    scored = _scored(summary)
    if scored["profile_set"].nunique() < 2:
        return ""
    ordered = scored.sort_values("headline", ascending=False, kind="stable")
    chains = list(dict.fromkeys(ordered["chain"].fillna("")))
    sets = list(dict.fromkeys(scored["feature_set"]))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in chains)
    rows = []
    for (task, condition), group in scored.groupby(["task", "condition"], sort=False):
        for fs in sets:
            values = group[group["feature_set"] == fs].drop_duplicates("chain").set_index("chain")
            if values.empty:
                continue
            headline = values.index[values["headline"].fillna(False).astype(bool)]
            cells = "".join(_cell(values.loc[c], "chain_best") if c in values.index else "<td class='muted'>-</td>"
                            for c in chains)
            label = html.escape(fs) + (f" <span class='muted'>(headline {html.escape(str(headline[0]))})</span>"
                                       if len(headline) else "")
            rows.append(f"<tr><td class='l'>{TASK_TITLES.get(task, task)}</td><td class='l'>{html.escape(condition)}</td>"
                        f"<td class='l'>{label}</td>{cells}</tr>")
    return ("<table class='bakeoff'><tr><th class='l'>task</th><th class='l'>condition</th><th class='l'>feature set"
            "</th>" + head + "</tr>" + "".join(rows) + "</table>")


def _control_value(row: pd.Series) -> str:
    if pd.isna(row["n_perturbations"]) or int(row["n_perturbations"]) == 0:
        return f"<span class='muted'>{html.escape(str(row.get('notes') or 'n=0'))}</span>"
    if not pd.isna(row.get("accuracy")):
        return (f"{row['accuracy']:.2f} <span class='muted'>(chance {row['chance']:.2f}, p {row['p_value']:.2g}, "
                f"n={int(row['n_perturbations'])})</span>")
    return (f"{row['fraction_retrieved']:.2f} <span class='muted'>(mAP {row['mean_average_precision']:.2f}, "
            f"n={int(row['n_perturbations'])})</span>")


def controls_html(summary: pd.DataFrame) -> str:
    """Per profile set and condition: replicate retrieval beside what position, plate and label shuffling alone
    retrieve, and the fewest negative controls per feature a step of its chain fitted on."""
    controls = summary[summary["row_kind"] == "control"]
    if controls.empty:
        return ""
    replicate = _scored(summary)
    replicate = replicate[replicate["task"] == TASKS[0]].set_index(["profile_set", "condition"])
    shown = [c for c in LAYOUT_CONTROLS if c in set(controls["task"])]
    head = "".join(f"<th>{CONTROL_TITLES[c]}</th>" for c in shown)
    rows = []
    for (name, condition), group in controls.groupby(["profile_set", "condition"], sort=False):
        values = group.set_index("task")
        key = (name, condition)
        repl = (f"{replicate.loc[key, 'fraction_retrieved']:.2f}" if key in replicate.index
                and not pd.isna(replicate.loc[key, "fraction_retrieved"]) else "-")
        per_feature, kept = group["controls_per_feature"].iloc[0], group["n_features"].iloc[0]
        cells = "".join(f"<td>{_control_value(values.loc[c])}</td>" if c in values.index else "<td>-</td>"
                        for c in shown)
        rows.append(f"<tr><td class='l'>{html.escape(name)}</td><td class='l'>{html.escape(condition)}</td>"
                    f"<td>{repl}</td>{cells}<td>{'-' if pd.isna(per_feature) else f'{per_feature:.2g}'}</td>"
                    f"<td>{'-' if pd.isna(kept) else int(kept)}</td></tr>")
    return ("<table class='controls'><tr><th class='l'>profile set</th><th class='l'>condition</th>"
            f"<th>replicate retrieval</th>{head}<th>negative controls per feature</th><th>features kept</th></tr>"
            + "".join(rows) + "</table>")
