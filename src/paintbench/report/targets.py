"""The report's biology: shortlist quality per feature set, polypharmacology calls, and the offline target look-up.

Figures: recall@k of target identification and virtual screening per feature set against random shortlists, and
the multi-target compounds' heat map of target ranks. HTML: the shortlist table, the calls, and a look-up that
works without a network: every compound-gene pair's cosine (target_id/<feature set>_pairs.parquet) is
embedded as JSON, and a small script ranks, computes p (against the condition's unannotated pairs) and q
(Benjamini-Hochberg over the list) exactly as `paintbench query` does, per feature set side by side.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.atomic import read_table
from paintbench.registry import SHORTLIST_TASKS
from paintbench.report.inputs import RunFiles
from paintbench.report.summary import condition_label
from paintbench.target_id import CONDITION

TASK_TITLES = {"target_identification": "target identification (genes ranked per compound)",
               "virtual_screening": "virtual screening (compounds ranked per gene)"}


def _pooled(summary: pd.DataFrame) -> pd.DataFrame:
    """Per feature set, task and k: recall@k and its random expectation averaged over conditions by queries."""
    rows = summary[summary["task"].isin(SHORTLIST_TASKS) & (summary["n_perturbations"] > 0)].copy()
    rows["w"] = rows["n_perturbations"].astype(float)
    pooled = rows.groupby(["feature_set", "task", "k"]).apply(lambda g: pd.Series({
        "recall": np.average(g["recall_at_k"].astype(float), weights=g["w"]),
        "random": np.average(g["random_recall_at_k"].astype(float), weights=g["w"]),
        "queries": g["w"].sum()}), include_groups=False)
    return pooled.reset_index()


def shortlist_figure(summary: pd.DataFrame, stem: Path) -> list[Path]:
    """Per task: recall@k per feature set (bars) and random shortlists' (black ticks)."""
    import matplotlib.pyplot as plt

    from paintbench.report.figures import feature_set_colours, save_figure, style

    pooled = _pooled(summary)
    sets = list(dict.fromkeys(pooled["feature_set"]))
    colours = feature_set_colours(sets)
    with style():
        fig, axes = plt.subplots(1, len(SHORTLIST_TASKS), figsize=(5.2 * len(SHORTLIST_TASKS), 3.6), squeeze=False)
        for ax, task in zip(axes[0], SHORTLIST_TASKS):
            rows = pooled[pooled["task"] == task]
            ks = sorted(rows["k"].unique())
            width = 0.8 / max(1, len(sets))
            for i, fs in enumerate(sets):
                mine = rows[rows["feature_set"] == fs].set_index("k").reindex(ks)
                x = np.arange(len(ks)) + (i - (len(sets) - 1) / 2) * width
                ax.bar(x, mine["recall"], width=width, color=colours[fs], label=fs)
                ax.hlines(mine["random"], x - width / 2, x + width / 2, color="black", lw=1.5)
            ax.set_xticks(range(len(ks)), [f"k = {k}" for k in ks])
            ax.set_ylim(0, 1)
            ax.set_ylabel("recall@k (annotated partners found)")
            ax.set_title(TASK_TITLES[task].split(" (")[0])
        axes[0][0].legend(frameon=False, fontsize=8)
        fig.suptitle("Shortlist quality: bars = feature sets, black ticks = random shortlists")
        fig.tight_layout()
    return save_figure(fig, stem)


def polypharmacology_figure(tables: dict[str, pd.DataFrame], stem: Path) -> list[Path]:
    """Compound x annotated target: the target's best rank over conditions, one panel per feature set."""
    import matplotlib.pyplot as plt

    from paintbench.report.figures import save_figure, style

    sets = [fs for fs, t in tables.items() if not t.empty]
    both = pd.concat([tables[fs] for fs in sets])
    compounds = sorted(both["Metadata_pert_iname"].astype(str).unique())
    targets = sorted(both["target"].astype(str).unique())
    with style():
        fig, axes = plt.subplots(1, len(sets), figsize=(1.2 + 0.5 * len(targets) * len(sets) + 1.5 * len(sets),
                                                       1.5 + 0.4 * len(compounds)), squeeze=False)
        for ax, fs in zip(axes[0], sets):
            best = tables[fs].groupby(["Metadata_pert_iname", "target"])["rank"].min()
            grid = np.full((len(compounds), len(targets)), np.nan)
            for (compound, target), rank in best.items():
                grid[compounds.index(str(compound)), targets.index(str(target))] = rank
            image = ax.imshow(grid, cmap="viridis_r", vmin=1, vmax=max(2, np.nanmax(grid)), aspect="auto")
            for (i, j), rank in np.ndenumerate(grid):
                if not np.isnan(rank):
                    ax.text(j, i, int(rank), ha="center", va="center", fontsize=8, color="white" if rank < np.nanmax(grid) / 2 else "black")
            ax.set_xticks(range(len(targets)), targets, rotation=90)
            ax.set_yticks(range(len(compounds)), compounds)
            ax.set_title(fs)
            fig.colorbar(image, ax=ax, label="rank among genes (1 = closest)", shrink=0.8)
        fig.suptitle("Multi-target compounds: rank of each annotated target (best over conditions)")
        fig.tight_layout()
    return save_figure(fig, stem)


def shortlist_html(summary: pd.DataFrame) -> str:
    rows = summary[summary["task"].isin(SHORTLIST_TASKS) & (summary["n_perturbations"] > 0)]
    if rows.empty:
        return "<p class='muted'>No compound in this run has an annotated target among its perturbed genes.</p>"
    sets = list(dict.fromkeys(rows["feature_set"]))
    head = "".join(f"<th>{html.escape(fs)}</th>" for fs in sets)
    body = []
    for (task, condition, k), group in rows.groupby(["task", "condition", "k"], sort=False):
        values = group.set_index("feature_set")
        first = group.iloc[0]
        cells = "".join(
            f"<td>{values.at[fs, 'recall_at_k']:.2f} <span class='muted'>(p {values.at[fs, 'recall_p']:.2g}; best rank "
            f"{values.at[fs, 'median_best_rank']:.0f})</span></td>" if fs in values.index else "<td>-</td>" for fs in sets)
        body.append(f"<tr><td class='l'>{task.replace('_', ' ')}</td><td class='l'>{html.escape(condition)}</td>"
                    f"<td>{int(k)}</td><td>{int(first['n_perturbations'])}</td><td>{first['random_recall_at_k']:.2f}</td>"
                    f"{cells}</tr>")
    return ("<table class='sortable'><tr><th class='l'>task</th><th class='l'>condition</th><th>k</th><th>queries</th>"
            f"<th>random</th>{head}</tr>" + "".join(body) + "</table>")


def polypharmacology_html(tables: dict[str, pd.DataFrame]) -> str:
    parts = [t.assign(feature_set=fs) for fs, t in tables.items() if not t.empty]
    if not parts:
        return "<p class='muted'>No compound has two or more annotated targets among this run's perturbed genes.</p>"
    table = pd.concat(parts, ignore_index=True)
    table["condition"] = [condition_label(r) for _, r in table.iterrows()]
    rows = []
    for (compound, condition, fs), group in table.groupby(["Metadata_pert_iname", "condition", "feature_set"], sort=True):
        detail = ", ".join(f"{t} rank {r} q {q:.2g}" for t, r, q in zip(group["target"], group["rank"], group["q_value"]))
        call = group["call"].iloc[0]
        rows.append(f"<tr><td class='l'>{html.escape(str(compound))}</td><td class='l'>{html.escape(condition)}</td>"
                    f"<td class='l'>{html.escape(fs)}</td><td class='l'><b>{html.escape(str(call))}</b></td>"
                    f"<td class='l'>{html.escape(detail)}</td></tr>")
    return ("<table class='sortable' id='polypharmacology'><tr><th class='l'>compound</th><th class='l'>condition</th>"
            "<th class='l'>feature set</th><th class='l'>follows</th><th class='l'>annotated targets</th></tr>"
            + "".join(rows) + "</table>")


COSINE_SCALE = 30_000  # cosines travel as little-endian int16 / COSINE_SCALE: 3e-5 resolution, 2 bytes each


def _encoded(values: np.ndarray) -> str:
    return base64.b64encode(np.round(values * COSINE_SCALE).astype("<i2").tobytes()).decode("ascii")


def lookup_data(pairs_of: dict[str, Path], feature_sets: list[str]) -> dict:
    """Compact look-up data: names once, then per feature set and condition the compounds' and genes' indices,
    the annotated pairs (flat indices) and the cosines (row-major compounds x genes, see COSINE_SCALE)."""
    compounds: dict[str, int] = {}
    genes: dict[str, int] = {}
    names, targets, data = [], [], {}
    for fs in feature_sets:
        if fs not in pairs_of:
            continue
        path = pairs_of[fs]
        pairs = read_table(path)
        if pairs.empty:  # more pairs than target_id.lookup_max_pairs (or nothing to match)
            continue
        conditions = []
        for _, group in pairs.groupby(CONDITION, sort=True, dropna=False):
            c_ids = list(dict.fromkeys(group["Metadata_broad_sample"].astype(str)))
            g_ids = list(dict.fromkeys(group["Metadata_gene"].astype(str)))
            for sample, name, target in group.drop_duplicates("Metadata_broad_sample")[
                    ["Metadata_broad_sample", "Metadata_pert_iname", "Metadata_target_list"]].itertuples(index=False):
                if str(sample) not in compounds:
                    compounds[str(sample)] = len(compounds)
                    names.append(str(name))
                    targets.append("" if pd.isna(target) else str(target))
            for gene in g_ids:
                genes.setdefault(gene, len(genes))
            matrix = group.pivot(index="Metadata_broad_sample", columns="Metadata_gene", values="cosine")
            matrix = matrix.loc[c_ids, g_ids].to_numpy(float)
            annotated = group.pivot(index="Metadata_broad_sample", columns="Metadata_gene", values="annotated")
            conditions.append({"label": condition_label(group.iloc[0]),
                               "compounds": [compounds[c] for c in c_ids], "genes": [genes[g] for g in g_ids],
                               "cosine": _encoded(matrix.ravel()),
                               "annotated": [int(i) for i in np.flatnonzero(annotated.loc[c_ids, g_ids].to_numpy(bool).ravel())]})
        data[fs] = conditions
    return {"scale": COSINE_SCALE, "compounds": list(compounds), "compound_names": names, "compound_targets": targets, "genes": list(genes),
            "feature_sets": data}


LOOKUP_SCRIPT = Path(__file__).with_name("lookup.js")


def lookup_html(pairs_of: dict[str, Path], feature_sets: list[str]) -> str:
    data = lookup_data(pairs_of, feature_sets)
    if not data["feature_sets"]:
        if any(fs in pairs_of for fs in feature_sets):
            return ("<h3>Target look-up</h3><p class='muted'>Left out: no profile set has a compound-gene pairs table "
                    "(no compound and genetic plates of one cell type, or more pairs than config key "
                    "<code>target_id.lookup_max_pairs</code>). <code>paintbench query</code> ranks any compound "
                    "or gene.</p>")
        return ""
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    options = sorted(set(data["compound_names"]) | set(data["genes"]))
    return ("<h3>Target look-up</h3><p>Type a compound (name or broad_sample) or a gene: genes are ranked for a "
            "compound (target identification), compounds for a gene (virtual screening), by |cosine| of consensus "
            "profiles, per condition and feature set side by side. p: against the condition's unannotated pairs; q: "
            "Benjamini-Hochberg over the list (as <code>paintbench query</code>). Click a column to sort.</p>"
            "<form id='lookup-form' onsubmit='return false'><input id='lookup-input' list='lookup-names' size='30' "
            "placeholder='e.g. BI-2536 or PLK1' autocomplete='off'> <button id='lookup-button' type='submit'>Look up"
            "</button> <label>top <input id='lookup-top' type='number' value='10' min='1' style='width:4em'></label>"
            "</form><datalist id='lookup-names'>" + "".join(f"<option value='{html.escape(o)}'>" for o in options)
            + "</datalist><div id='lookup-message' class='muted'></div><div id='lookup-results'></div>"
            f"<script id='lookup-data' type='application/json'>{payload}</script>"
            f"<script>{LOOKUP_SCRIPT.read_text(encoding='utf-8')}</script>")


def targets_section(files: RunFiles, summary: pd.DataFrame, feature_sets: list[str]) -> str:
    """The report's 'Target identification' section (empty when the run wrote no target_id tables)."""
    present = [fs for fs in feature_sets if fs in files.polypharmacology]
    if not present:
        return ""
    poly = {fs: read_table(files.polypharmacology[fs]) for fs in present}
    return ("<h2 id='targets'>Target identification and virtual screening</h2><p>How often each feature set's "
            "shortlist holds the annotated partners: recall@k (share of a query's annotated targets, or compounds, "
            "in its top k), with the random shortlists' expectation and a permutation p; best rank = median rank of "
            "the best annotated partner. Tables: <code>target_id/&lt;feature set&gt;.parquet</code>.</p>"
            + shortlist_html(summary)
            + "<h3>Polypharmacology</h3><p>Compounds with two or more annotated targets among the perturbed genes: "
              "which target's genetic profile each follows (q &lt; alpha over its annotated targets), 'none' or "
              "'several'.</p>" + polypharmacology_html(poly) + lookup_html(files.pairs, present))
