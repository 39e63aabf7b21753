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
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from paintbench.atomic import atomic_path, read_table
from paintbench.report.build import Figure, TASK_TITLES
from paintbench.report.summary import REFERENCE

PACKAGES = ["paintbench", "snakemake", "torch", "timm", "numpy", "pandas", "pyarrow", "pycytominer", "statsmodels",
            "matplotlib", "scikit-image", "tifffile"]
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0} th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left} td.best{font-weight:bold;background:#e8f4ea}
figure{margin:1.5em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#444;font-size:.92em}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:.85em} .muted{color:#777}
.broken{border:2px solid #c00;padding:1em;color:#c00}
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


def _condition(row: pd.Series) -> str:
    text = f"{row['Metadata_cell_type']} {row['Metadata_modality']} {row['Metadata_timepoint']} h"
    if pd.notna(row.get("Metadata_matched_modality")):
        text += f" &rarr; {row['Metadata_matched_modality']} {row['Metadata_matched_timepoint']} h"
    return text


def glance_table(summary: pd.DataFrame) -> str:
    """Task x condition rows; per feature set 'fraction retrieved (mAP)'; the best measured value in bold."""
    measured = summary[summary["feature_set"] != REFERENCE]
    feature_sets = list(dict.fromkeys(measured["feature_set"]))
    head = "".join(f"<th>{html.escape(fs)}</th>" for fs in feature_sets)
    rows = []
    keys = ["task", "Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_matched_modality",
            "Metadata_matched_timepoint"]
    for _, group in summary.groupby(keys, dropna=False, sort=False):
        first = group.iloc[0]
        values = group.set_index("feature_set")
        scores = values.loc[values.index.isin(feature_sets), "fraction_retrieved"].astype(float)
        best = scores.max() if scores.notna().any() else None
        cells = []
        for fs in feature_sets:
            if fs not in values.index:
                cells.append("<td class='muted'>-</td>")
                continue
            row = values.loc[fs]
            value, mean_ap, n = float(row["fraction_retrieved"]), row["mean_average_precision"], int(row["n_perturbations"])
            mark = " class='best'" if best is not None and value == best and best > 0 else ""
            detail = f" <span class='muted'>(mAP {mean_ap:.2f}, n={n})</span>" if pd.notna(mean_ap) else " <span class='muted'>(n=0)</span>"
            cells.append(f"<td{mark}>{value:.2f}{detail}</td>")
        published = values.loc[REFERENCE, "published"] if REFERENCE in values.index else ""
        rows.append(f"<tr><td class='l'>{TASK_TITLES.get(first['task'], first['task'])}</td><td class='l'>{_condition(first)}</td>"
                    f"{''.join(cells)}<td>{html.escape(str(published)) if pd.notna(published) else ''}</td></tr>")
    return (f"<table><tr><th class='l'>task</th><th class='l'>condition</th>{head}<th>CPJUMP1 paper (CellProfiler)</th></tr>"
            + "".join(rows) + "</table>")


def figure_html(figures_dir: Path, figure: Figure) -> str:
    path = figures_dir / f"{figure.stem}.png"
    if not path.exists():
        raise FileNotFoundError(f"{path}: figure listed in the manifest is missing")
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure id='{figure.stem}'><img class='figure' alt='{html.escape(figure.title)}' src='data:image/png;base64,{data}'>"
            f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)} "
            f"<span class='muted'>(SVG: figures/{figure.stem}.svg)</span></figcaption></figure>")


def qc_html(results_dir: Path, plates: list[str]) -> str:
    """Skipped fields (CellProfiler QC), cells and crops per plate."""
    skipped, counts = [], []
    for plate in plates:
        qc = results_dir / "cellprofiler" / plate / "skipped_fields.tsv"
        if qc.exists() and qc.stat().st_size:
            table = read_table(qc)
            skipped.append(table)
        cells = results_dir / "profiles" / "cellprofiler" / f"{plate}.parquet"
        crops = results_dir / "vit" / "crops" / f"{plate}.parquet"
        # One column each: a plate's well profiles hold thousands of features the count does not need.
        objects = pd.read_parquet(cells, columns=["Metadata_Object_Count"]) if cells.exists() else None
        counts.append({"plate": plate,
                       "wells": len(objects) if objects is not None else "-",
                       "cells (CellProfiler)": int(objects["Metadata_Object_Count"].sum()) if objects is not None else "-",
                       "crops (ViT)": len(pd.read_parquet(crops, columns=["Metadata_Well"])) if crops.exists() else "-"})
    skipped_table = pd.concat(skipped, ignore_index=True) if skipped else pd.DataFrame()
    text = pd.DataFrame(counts).to_html(index=False, border=0)
    if skipped_table.empty:
        text += "<p>No field was skipped. The report is built only after every CellProfiler shard succeeded.</p>"
    else:
        text += f"<p>{len(skipped_table)} field(s) skipped (<code>cellprofiler.skip_bad_fields</code>):</p>"
        text += skipped_table.to_html(index=False, border=0)
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


def render(summary: pd.DataFrame, figures_dir: Path, figures: list[Figure], results_dir: Path, plates: list[str],
           config_text: str, versions: dict[str, str]) -> str:
    sections: dict[str, list[str]] = {}
    for figure in figures:
        sections.setdefault(figure.section, []).append(figure_html(figures_dir, figure))
    body = [f"<h1>paintbench report</h1><p class='muted'>{html.escape(str(results_dir))} &middot; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC &middot; {len(plates)} plate(s)</p>",
            "<h2>At a glance</h2><p>Fraction of perturbations retrieved (q &lt; 0.05) per task and condition, "
            "with the mean mAP and the number of perturbations scored; the best feature set of each row in bold. "
            "Full table: <code>reports/summary.tsv</code>.</p>", glance_table(summary)]
    for section, items in sections.items():
        body.append(f"<h2>{html.escape(section)}</h2>" + "".join(items))
    body.append("<h2>Quality control</h2>" + qc_html(results_dir, plates))
    body.append("<h2>Configuration</h2><pre>" + html.escape(config_text) + "</pre>")
    body.append("<h2>Software</h2>" + pd.DataFrame(list(versions.items()), columns=["software", "version"]).to_html(index=False, border=0))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>paintbench report</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>" + "\n".join(body) + "</body></html>")


def write_report(summary_path: Path, figures_dir: Path, figures: list[Figure], results_dir: Path, plates: list[str],
                 config_text: str, output: Path, cellprofiler: str | None = None) -> Path:
    page = render(read_table(summary_path), figures_dir, figures, results_dir, plates, config_text,
                  software_versions(cellprofiler))
    with atomic_path(output) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return output
