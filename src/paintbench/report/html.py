"""reports/index.html: one self-contained file (figures embedded as base64 PNG, no network) that answers
"did the learned representation beat CellProfiler, on which task, and where" and lets the reader drill down.

Sections: at a glance (fraction retrieved per task x condition, feature sets side by side, published values),
the figures with one-sentence captions, QC (skipped fields, cells and crops per plate), the run's
configuration and software versions. A few lines of script mark every figure that fails to load (so a broken
report says so) and record how many loaded in <body data-figures-loaded="k/n"> for automated checks.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from paintbench.atomic import atomic_path, read_table
from paintbench.citations import footer_html
from paintbench.qc import read_fragment, summarize
from paintbench.registry import TASK_TITLES, TASKS
from paintbench.report.bakeoff import headline_view
from paintbench.report.bakeoff_view import bakeoff_html, controls_html
from paintbench.report.build import Figure
from paintbench.report.inputs import RunFiles
from paintbench.report.reference import planted_table
from paintbench.report.summary import REFERENCE, read_summary
from paintbench.report.targets import targets_section

PROTOCOL_TEXT = ("cpjump1 is the CPJUMP1 paper's statistic: every query's AP gets its own permutation p-value and "
                 "a unit's p is the geometric mean of its queries' p; copairs (copairs &ge; 0.5) tests the unit's mAP "
                 "against the null of a mean AP. In both, null values equal to the observation count against it. "
                 "The result tables carry both verdicts (<code>below_corrected_p</code> and "
                 "<code>alt_below_corrected_p</code>).")
CALIBRATION_TEXT = ("Measured on a real LINCS plate (scripts/bench_protocols.py, null size 100,000): cpjump1 "
                    "retrieves 0.67 of the 58 compounds, copairs 0.55; with the compound labels shuffled (20 times), "
                    "1.8% (cpjump1) and 1.0% (copairs) reach p &lt; 0.05 and none q &lt; 0.05: the paper's statistic "
                    "has more power at no cost in false calls there.")
COMPOUND_GENE_TEXT = ("Compound-gene matching: the paper's code (copairs of May 2023) read each genetic profile's gene "
                      "as a set of letters, so every true compound-gene match was also counted as a negative; this "
                      "run follows the paper's stated definition (negatives share no target) unless "
                      "<code>retrieval.compound_gene_negatives: paper_code</code>, so its compound-gene values are "
                      "expected above the paper's.")

MAX_QC_ROWS = 200
PACKAGES = ["paintbench", "snakemake", "torch", "timm", "numpy", "pandas", "pyarrow", "pycytominer", "statsmodels",
            "matplotlib", "scikit-image", "tifffile"]
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} td.best{font-weight:bold;background:#e8f4ea} td.tied{font-style:italic;background:#f4f8f0}
figure{margin:1.5em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#444;font-size:.92em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em} .muted{color:#777}
.broken{border:2px solid #c00;padding:1em;color:#c00}
.lookup-row{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start} table.lookup caption{font-weight:bold}
tr.annotated td{background:#fdebd0} th[data-order=asc]::after{content:" \\25B2"} th[data-order=desc]::after{content:" \\25BC"}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.figure'), ok = 0;
  imgs.forEach(function (img) {
    if (img.complete && img.naturalWidth > 0) { ok += 1; img.dataset.loaded = '1'; }
    else { img.dataset.loaded = '0'; img.insertAdjacentHTML('afterend', '<div class="broken">figure failed to load</div>'); }
  });
  document.body.dataset.figuresLoaded = ok + '/' + imgs.length;
});
"""


def _fraction(row: pd.Series) -> str:
    value = row["fraction_retrieved"]
    if pd.isna(value):
        return "<span class='muted'>n=0</span>"
    interval = f" [{row['fraction_retrieved_low']:.2f}&ndash;{row['fraction_retrieved_high']:.2f}]"
    detail = f" <span class='muted'>(mAP {row['mean_average_precision']:.2f}, n={int(row['n_perturbations'])}"
    if row["n_untestable"] and not pd.isna(row["n_untestable"]):
        detail += f", {int(row['n_untestable'])} untestable"
    return f"{value:.2f}{interval}{detail})</span>"


def glance_table(summary: pd.DataFrame) -> str:
    """Task x condition rows; per feature set (its headline chain named) 'fraction retrieved [95% interval] (mAP, n)';
    best in bold, tied in italics (the paired rule of paintbench.report.bakeoff); the paper's value where the paper
    reports it."""
    scored = summary[summary["row_kind"] != "paper"]
    feature_sets = list(dict.fromkeys(scored["feature_set"]))
    chains = scored.drop_duplicates("feature_set").set_index("feature_set")["chain"] if "chain" in scored else {}
    head = "".join(f"<th>{html.escape(fs)}" + (f"<br><span class='muted'>{html.escape(str(chains[fs]))}</span>"
                   if fs in chains and not pd.isna(chains[fs]) else "") + "</th>" for fs in feature_sets)
    rows = []
    for _, group in summary.groupby(["task", "condition"], dropna=False, sort=False):
        first = group.iloc[0]
        values = group.drop_duplicates("feature_set").set_index("feature_set")
        cells = []
        for fs in feature_sets:
            if fs not in values.index:
                cells.append("<td class='muted'>-</td>")
                continue
            mark = {"best": " class='best'", "tied": " class='tied'"}.get(str(values.at[fs, "best"]), "")
            cells.append(f"<td{mark}>{_fraction(values.loc[fs])}</td>")
        paper = values.loc[REFERENCE] if REFERENCE in values.index else None
        if paper is None:
            reference = ""
        else:
            shown = f"{paper['fraction_retrieved']:.3f} (n={int(paper['n_perturbations'])})"
            reference = shown if bool(paper["comparable"]) else f"<span class='muted'>{shown}</span>"
        rows.append(f"<tr><td class='l'>{TASK_TITLES.get(first['task'], first['task'])}</td>"
                    f"<td class='l'>{html.escape(str(first['condition']))}</td>{''.join(cells)}<td>{reference}</td></tr>")
    return (f"<table><tr><th class='l'>task</th><th class='l'>condition</th>{head}<th>CPJUMP1 paper (CellProfiler)</th></tr>"
            + "".join(rows) + "</table>")


def notes_html(summary: pd.DataFrame) -> str:
    """How to read the numbers: the protocol, what the other protocol would say, untestable units, the reference."""
    scored = summary[summary["row_kind"] != "paper"]
    protocols = ", ".join(sorted(set(scored["protocol"].dropna())))
    items = [f"Significance protocol of this run: <b>{html.escape(protocols)}</b>. " + PROTOCOL_TEXT]
    judged = scored[scored["n_perturbations"] > 0].groupby(["feature_set", "task"], sort=False).apply(
        lambda g: (g["n_retrieved"].sum(), (g["alt_fraction_retrieved"] * g["n_perturbations"]).sum(),
                   g["n_perturbations"].sum(), g["alt_protocol"].iloc[0]), include_groups=False)
    if len(judged):
        items.append("The same APs under each protocol (retrieved / scored): " + "; ".join(
            f"{html.escape(fs)} {TASK_TITLES.get(task, task)}: {int(k)} ({html.escape(protocols)}) vs "
            f"{int(round(alt))} ({html.escape(str(other))}) of {int(n)}"
            for (fs, task), (k, alt, n, other) in judged.items() if not pd.isna(alt)) + ". " + CALIBRATION_TEXT)
    untestable = int(scored["n_untestable"].fillna(0).sum())
    if untestable:
        items.append(f"{untestable} scored unit(s) can never reach q &lt; 0.05 whatever their profiles: their rank lists "
                     "are too short (e.g. a single candidate). They count in n but are flagged "
                     "(<code>n_untestable</code> in summary.tsv, <code>testable</code> in the result tables).")
    paper = summary[summary["row_kind"] == "paper"]
    if len(paper):
        comparable = bool(paper["comparable"].fillna(False).any())
        items.append("The paper's values come from its final notebook's figure-4 run (the source file of each is in "
                     "summary.tsv). " + ("This run is comparable with them: the paper's reruns differ by about 0.01."
                                         if comparable else html.escape(str(paper["notes"].iloc[0])) + "."))
        items.append(COMPOUND_GENE_TEXT)
    items.append("Best (bold): the leader (highest mean per-unit mAP difference against the others) is better than "
                 "every other feature set by a paired sign-flip test of per-unit mAP on the same perturbations or genes "
                 "(BH q &lt; 0.05); tied (italics): the leader and every feature set not significantly worse than it. "
                 "Each feature set under its headline chain (named under its name); every chain in the bake-off below.")
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def planted_html(files: RunFiles, summary: pd.DataFrame) -> str:
    """On synthetic runs (the ground truth given): the planted answer per class, feature set and task, under both
    protocols."""
    if files.ground_truth is None:
        return ""
    feature_sets = list(dict.fromkeys(summary.loc[summary["row_kind"] != "paper", "feature_set"]))
    table = planted_table(files, feature_sets, read_table(files.ground_truth))
    if table.empty:
        return ""
    protocol, other = table["protocol"].iloc[0], table["alt_protocol"].iloc[0]
    shown = table.assign(task=table["task"].map(TASK_TITLES)).drop(columns=["protocol", "alt_protocol"]).rename(columns={
        "feature_set": "feature set", "effect_class": "planted class", "mean_average_precision": "mAP",
        "fraction_retrieved": f"retrieved ({protocol})", "alt_fraction_retrieved": f"retrieved ({other})"})
    return ("<h2>The planted answer</h2><p>This run's plates are synthetic with a known answer: strong perturbations "
            "should be retrieved, null ones at the chance rate (&le; 5%). Share retrieved per planted class under this "
            "run's protocol and the other one.</p>" + shown.to_html(index=False, border=0, float_format="{:.2f}".format))


def figure_html(figures_dir: Path, figure: Figure) -> str:
    path = figures_dir / f"{figure.stem}.png"
    if not path.exists():
        raise FileNotFoundError(f"{path}: figure listed in the manifest is missing")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure id='{figure.stem}'><img class='figure' alt='{html.escape(figure.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)} "
            f"<span class='muted'>(SVG: figures/{figure.stem}.svg)</span></figcaption></figure>")


def qc_html(files: RunFiles) -> str:
    """Per plate: wells, cells and crops, then what each stage left out (qc/<plate>.tsv)."""
    counts, tables = [], {}
    for plate in files.plates:
        cells, crops = files.cell_counts.get(plate), files.crop_centres.get(plate)
        if plate in files.qc:
            tables[plate] = read_fragment(files.qc[plate])
        # One column each: a plate's well profiles hold thousands of features the count does not need.
        objects = pd.read_parquet(cells, columns=["Metadata_Object_Count"]) if cells is not None else None
        counts.append({"plate": plate,
                       "wells": len(objects) if objects is not None else "-",
                       "cells (CellProfiler)": int(objects["Metadata_Object_Count"].sum()) if objects is not None else "-",
                       "crops (ViT)": len(pd.read_parquet(crops, columns=["Metadata_Well"])) if crops is not None else "-"})
    text = pd.DataFrame(counts).to_html(index=False, border=0)
    if not tables:
        return text
    holes = summarize(tables)
    text += ("<p>What the data lacked or could not be read, per plate (<code>results_dir/qc/&lt;plate&gt;.tsv</code>; "
             "missing images: <code>qc/missing_fields.tsv</code>): left out and recorded, never fatal up to "
             "<code>qc.max_missing_fraction</code>.</p>" + holes.to_html(index=False, border=0))
    records = pd.concat(tables.values(), ignore_index=True)
    if len(records):
        shown = records.head(MAX_QC_ROWS)
        text += (f"<p>{len(records)} record(s)" + (f", the first {MAX_QC_ROWS}" if len(records) > MAX_QC_ROWS else "")
                 + ":</p>" + shown.to_html(index=False, border=0, na_rep=""))
    else:
        text += "<p>No image was missing, damaged or skipped.</p>"
    return text


def software_versions(cellprofiler: str | None) -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    if cellprofiler:
        try:
            done = subprocess.run([cellprofiler, "--version"], capture_output=True, text=True, timeout=120)
            versions["CellProfiler"] = (done.stdout or done.stderr).strip().splitlines()[-1] if done.returncode == 0 else "unknown"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            versions["CellProfiler"] = "unknown"
    return versions


def run_folder(files: RunFiles, summary_path: Path) -> str:
    """The folder the report's files share (the run's results_dir)."""
    paths = [str(Path(p).resolve()) for _, p in files.files()] + [str(Path(summary_path).resolve())]
    return os.path.commonpath(paths)


def bakeoff_section(summary: pd.DataFrame) -> str:
    """Every (feature set, chain) pair and the layout controls: what the headline numbers do not decide alone."""
    table, controls = bakeoff_html(summary), controls_html(summary)
    if not table and not controls:
        return ""
    chains = summary.loc[summary["headline"].fillna(False).astype(bool) & summary["chain"].notna(), ["feature_set", "chain"]]
    named = ", ".join(f"{fs}: {chain}" for fs, chain in chains.drop_duplicates().itertuples(index=False))
    text = ("<h2>Bake-off: feature sets under post-processing chains</h2><p>The headline numbers above use each "
            f"feature set's chosen chain ({html.escape(named)}). Below, every chain each feature set ran: fraction "
            "retrieved [95% interval]; bold = best chain of its feature set by a paired test of per-unit mAP "
            "(sign-flip permutation, BH), italics = tied; &Delta;mAP is the paired difference against the feature "
            "set's headline chain, with its 95% bootstrap interval and q. Full comparisons: "
            "<code>reports/comparisons.tsv</code>.</p>" + table)
    if controls:
        text += ("<h3>Layout and batch controls</h3><p>What position, plate and chance alone retrieve: negative "
                 "controls at the same well position on other plates as 'replicates'; replicates restricted to "
                 "other positions; replicate retrieval on label-shuffled wells (the chain's false discoveries: "
                 "fraction retrieved should stay near 0.05 or below); how well a classifier tells the plates apart "
                 "from negative controls; 1-NN target accuracy of compounds (never the same compound or well "
                 "position) against its permutation chance.</p>" + controls)
    return text


def sources_html(config_text: str) -> str:
    """Where the external feature sets come from (config keys encoders and precomputed), random weights named."""
    import yaml

    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        return ""
    items = []
    for name, entry in (config.get("encoders") or {}).items():
        weights = ("<b>random weights</b> (the format's architecture, seeded: a baseline, not the published model)"
                   if entry.get("checkpoint") == "random" else f"weights {html.escape(str(entry.get('checkpoint')))}")
        variant = f" {html.escape(str(entry['variant']))}" if entry.get("variant") else ""
        items.append(f"<b>{html.escape(name)}</b>: external encoder, format {html.escape(str(entry.get('format')))}"
                     f"{variant}, {weights}.")
    for name, entry in (config.get("precomputed") or {}).items():
        items.append(f"<b>{html.escape(name)}</b>: precomputed embeddings from {html.escape(str(entry.get('path')))}.")
    finetune = (config.get("vit") or {}).get("finetune") or {}
    for parent in [f"vit{m}" for m in finetune.get("methods") or []] + list(finetune.get("encoders") or []):
        items.append(f"<b>{html.escape(parent)}_ft</b>: {html.escape(parent)} fine-tuned to classify the "
                     "perturbations of the split's training side (vit/finetune/split.tsv in the results folder); it "
                     "and its parent are scored on the held-out perturbations only (chain mad_heldout), compared in "
                     "reports/comparisons.tsv (family 'fine-tuning of ...').")
    return ("<p>Feature sets from outside this run's own extraction, or from a second phase:</p><ul>" + "".join(f"<li>{i}</li>" for i in items)
            + "</ul>") if items else ""


def render(summary: pd.DataFrame, figures_dir: Path, figures: list[Figure], files: RunFiles, folder: str,
           config_text: str, versions: dict[str, str]) -> str:
    full = summary
    everything = headline_view(full)
    summary = everything[everything["task"].isin(TASKS)]
    measured = list(dict.fromkeys(everything.loc[everything["row_kind"] == "measured", "feature_set"]))
    sections: dict[str, list[str]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure_html(figures_dir, figure))
    body = [f"<h1>paintbench report</h1><p class='muted'>{html.escape(folder)} &middot; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC &middot; {len(files.plates)} plate(s)</p>",
            "<h2>At a glance</h2><p>Fraction retrieved (q &lt; 0.05) per task and condition with its 95% interval, "
            "the mean mAP and the number of units scored (perturbations; target genes or genes in matching). "
            "Full table: <code>reports/summary.tsv</code>.</p>", glance_table(summary),
            "<h2>Reading these numbers</h2>" + notes_html(summary) + sources_html(config_text), bakeoff_section(full),
            planted_html(files, summary),
            targets_section(files, everything, measured)]
    for section, items in sections.items():
        body.append(f"<h2>{html.escape(section)}</h2>" + "".join(items))
    body.append("<h2>Quality control</h2>" + qc_html(files))
    body.append("<h2>Configuration</h2><pre>" + html.escape(config_text) + "</pre>")
    body.append("<h2>Software</h2>" + pd.DataFrame(list(versions.items()), columns=["software", "version"]).to_html(index=False, border=0))
    body.append(footer_html())
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>paintbench report</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>" + "\n".join(body) + "</body></html>")


def write_report(summary_path: Path, figures_dir: Path, figures: list[Figure], files: RunFiles, config_text: str,
                 output: Path, cellprofiler: str | None = None) -> Path:
    page = render(read_summary(summary_path), figures_dir, figures, files, run_folder(files, summary_path),
                  config_text, software_versions(cellprofiler))
    with atomic_path(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return output
