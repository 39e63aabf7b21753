"""summary.tsv: one row per feature set x task x condition, with the paper's CellProfiler numbers beside them.

A condition is (cell type, modality, time point) and, for compound-gene matching, the matched genetic modality
and time point. The conditions each task should have follow from replicate retrieval's (sister matching: the
compound and CRISPR ones; compound-gene matching: every compound x genetic pair of one cell type), and every
feature set gets a row for each: one with nothing to score there (e.g. no perturbation passed replicate
retrieval, so sister matching is empty) shows n_perturbations 0 and fraction_retrieved 0 rather than missing.

Reference rows (feature_set = paper_cellprofiler) come from config/metadata/cpjump1_published_cellprofiler.tsv
(Chandrasekaran et al., Nature Methods 2024); '*' in a condition column matches any value. Where the paper
gives a range rather than a number (compound-gene matching: 0 to 0.075 in every condition) fraction_retrieved
is empty and the `published` column carries the text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.atomic import read_table

TASKS = ("replicate_retrieval", "sister_matching", "compound_gene_matching")
CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_matched_modality",
             "Metadata_matched_timepoint"]
REFERENCE = "paper_cellprofiler"
COLUMNS = ["feature_set", "task", *CONDITION, "n_perturbations", "mean_average_precision", "fraction_retrieved",
           "published"]
DEFAULT_PUBLISHED = Path(__file__).resolve().parents[3] / "config" / "metadata" / "cpjump1_published_cellprofiler.tsv"


def _with_condition_columns(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in CONDITION:
        if column not in table.columns:
            table[column] = np.nan
    # Time points are integers in the metadata; matched ones may be missing (NaN makes them float).
    for column in ("Metadata_timepoint", "Metadata_matched_timepoint"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column in ("Metadata_cell_type", "Metadata_modality", "Metadata_matched_modality"):
        table[column] = table[column].astype("string")
    return table


def task_summary(scored: pd.DataFrame, feature_set: str, task: str) -> pd.DataFrame:
    """Per-condition mAP (mean over perturbations) and fraction retrieved (share with q < 0.05) of one task."""
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS)
    missing = {"mean_average_precision", "below_corrected_p"} - set(scored.columns)
    if missing:
        raise ValueError(f"{feature_set} {task}: result table lacks {sorted(missing)}")
    scored = _with_condition_columns(scored)
    rows = scored.groupby(CONDITION, dropna=False, sort=True).agg(
        n_perturbations=("mean_average_precision", "size"),
        mean_average_precision=("mean_average_precision", "mean"),
        fraction_retrieved=("below_corrected_p", "mean"),
    ).reset_index()
    return rows.assign(feature_set=feature_set, task=task, published=pd.NA)[COLUMNS]


def expected_conditions(summary: pd.DataFrame, tasks: tuple[str, ...] = TASKS) -> pd.DataFrame:
    """(task, condition) rows every feature set should report, from the replicate-retrieval conditions."""
    replicate = summary.loc[summary["task"] == "replicate_retrieval", CONDITION[:3]].drop_duplicates()
    sister = replicate[replicate["Metadata_modality"].isin(["compound", "crispr"])].assign(task="sister_matching")
    compounds = replicate[replicate["Metadata_modality"] == "compound"]
    genetic = replicate[replicate["Metadata_modality"].isin(["crispr", "orf"])].rename(columns={
        "Metadata_modality": "Metadata_matched_modality", "Metadata_timepoint": "Metadata_matched_timepoint"})
    pairs = compounds.merge(genetic, on="Metadata_cell_type").assign(task="compound_gene_matching")
    derived = _with_condition_columns(pd.concat([sister, pairs], ignore_index=True))
    derived = derived[derived["task"].isin(tasks)]
    return pd.concat([summary[["task", *CONDITION]], derived[["task", *CONDITION]]]).drop_duplicates()


def complete_conditions(summary: pd.DataFrame, feature_sets: list[str], tasks: tuple[str, ...] = TASKS) -> pd.DataFrame:
    """Add n_perturbations = 0 rows for every expected (feature set, task, condition) without results."""
    keys = expected_conditions(summary, tasks)
    grid = keys.merge(pd.DataFrame({"feature_set": feature_sets}), how="cross")
    full = grid.merge(summary, on=["feature_set", "task", *CONDITION], how="left")
    empty = full["n_perturbations"].isna()
    full.loc[empty, "n_perturbations"] = 0
    full.loc[empty, "fraction_retrieved"] = 0.0
    full["n_perturbations"] = full["n_perturbations"].astype(int)
    return full[COLUMNS]


def _matches(reference: pd.Series, condition: pd.Series) -> bool:
    for column in ("task", *CONDITION):
        want = reference.get(column)
        if pd.isna(want) or want == "" or want == "*":
            continue
        if pd.isna(condition[column]) or str(condition[column]) != str(want):
            return False
    return True


def reference_rows(summary: pd.DataFrame, published: pd.DataFrame) -> pd.DataFrame:
    """Published rows for every condition of the run that the paper reports."""
    rows = []
    conditions = summary[["task", *CONDITION]].drop_duplicates()
    for _, condition in conditions.iterrows():
        for _, reference in published.iterrows():
            if _matches(reference, condition):
                rows.append({**condition.to_dict(), "feature_set": REFERENCE, "n_perturbations": pd.NA,
                             "mean_average_precision": np.nan, "fraction_retrieved": reference["fraction_retrieved"],
                             "published": str(reference["published"])})
    return pd.DataFrame(rows, columns=COLUMNS)


def read_published(path: str | Path = DEFAULT_PUBLISHED) -> pd.DataFrame:
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    needed = {"task", "Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "fraction_retrieved", "published"}
    if needed - set(table.columns):
        raise ValueError(f"{path}: published table lacks columns {sorted(needed - set(table.columns))}")
    table["fraction_retrieved"] = pd.to_numeric(table["fraction_retrieved"].replace("", np.nan))
    return table


def result_path(results_dir: str | Path, feature_set: str, task: str) -> Path:
    return Path(results_dir) / "retrieval" / feature_set / f"{task}.parquet"


def build_summary(results_dir: str | Path, feature_sets: list[str], tasks: tuple[str, ...] = TASKS,
                  published: pd.DataFrame | None = None) -> pd.DataFrame:
    """summary.tsv of a finished run; a missing result file is an error naming it."""
    parts = []
    for feature_set in feature_sets:
        for task in tasks:
            path = result_path(results_dir, feature_set, task)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no {task} results for feature set {feature_set!r}")
            parts.append(task_summary(read_table(path), feature_set, task))
    parts = [p for p in parts if not p.empty]
    if not parts:
        raise ValueError(f"{results_dir}: every retrieval result is empty; nothing to summarize")
    summary = complete_conditions(_with_condition_columns(pd.concat(parts, ignore_index=True)), feature_sets, tasks)
    reference = reference_rows(summary, read_published() if published is None else published)
    order = {task: i for i, task in enumerate(tasks)}
    full = pd.concat([summary, _with_condition_columns(reference)], ignore_index=True) if not reference.empty else summary
    full = full.assign(_task=full["task"].map(order), _ref=full["feature_set"].eq(REFERENCE))
    return full.sort_values(["_task", *CONDITION[:3], "Metadata_matched_modality", "_ref", "feature_set"],
                            na_position="first").drop(columns=["_task", "_ref"]).reset_index(drop=True)
