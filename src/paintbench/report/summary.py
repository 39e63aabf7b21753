"""summary.tsv: one typed row per profile set (feature set x chain) x task x condition, with the CPJUMP1 paper's
values beside them.

Kinds of rows (`row_kind`):
- measured: a feature set this run extracted and scored (cellprofiler, vitmae, ...) under one of its chains
  (`chain`; `headline` marks each feature set's chosen chain, the first of profiles.feature_sets);
- published_profiles: the consortium's published CellProfiler profiles of the same plates, scored by this run;
- control: a layout or batch control of a profile set (paintbench.controls; `task` names the control);
- paper: the paper's CellProfiler values (config/metadata/cpjump1_published_cellprofiler.tsv, each row naming the
  file of jump-cellpainting/2024_Chandrasekaran_NatureMethods it comes from). They sit beside every condition the
  paper reports; `comparable` says whether this run can be compared with them (real CPJUMP1 images, the cpjump1
  protocol, a benchmark plate group) and `notes` says why not where it cannot.

A condition is (cell type, modality, time point, plate group) and, for compound-gene matching, the matched genetic
modality, time point and plate group. Every expected (feature set, task, condition) has a row: one with nothing
to score shows n_perturbations 0 and empty values (never 0.0, which would read as a result).

fraction_retrieved carries a 95% Wilson interval over the scored units (perturbations or genes);
alt_fraction_retrieved is the same APs judged by the other protocol (alt_protocol), so the choice shows. `best`
(headline rows) and `chain_best` (a feature set's chains) are the paired marks of paintbench.report.bakeoff, and
paired_* the paired difference of per-unit mAP against the row's paired_reference with its 95% bootstrap interval
and BH q. `interval_best` is the older, conservative rule on independent intervals: 'best' for the leader when its
Wilson interval lies wholly above every other set's, else 'tied' for every set overlapping the leader's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from paintbench.atomic import read_table
from paintbench.registry import PAPER, PUBLISHED, SHORTLIST_TASKS, TASKS
from paintbench.report.bakeoff import PAIRED_COLUMNS, comparisons, control_rows, label_profile_sets, paired_columns
from paintbench.report.inputs import RunFiles
from paintbench.schema import BUNDLED_METADATA
from paintbench.significance import wilson_interval

UNITS = {"replicate_retrieval": "perturbation", "sister_matching": "target gene", "compound_gene_matching": "gene",
         "target_identification": "compound", "virtual_screening": "gene"}
SHORTLIST = ["recall_at_k", "random_recall_at_k", "recall_p", "precision_at_k", "random_precision_at_k",
             "precision_p", "median_best_rank", "random_best_rank", "best_rank_p"]
CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_plate_group",
             "Metadata_matched_modality", "Metadata_matched_timepoint", "Metadata_matched_plate_group"]
REFERENCE = PAPER
BENCHMARK_GROUP = "benchmark"
INTEGERS = ["Metadata_timepoint", "Metadata_matched_timepoint", "n_perturbations", "n_retrieved", "n_untestable", "k",
            "n_features"]
FLOATS = ["mean_average_precision", "fraction_retrieved", "fraction_retrieved_low", "fraction_retrieved_high",
          "alt_fraction_retrieved", *SHORTLIST, *PAIRED_COLUMNS[1:], "accuracy", "chance", "p_value",
          "controls_per_feature"]
COLUMNS = ["feature_set", "chain", "profile_set", "headline", "row_kind", "protocol", "task", "unit", "condition",
           *CONDITION, "n_perturbations", "n_retrieved", "n_untestable", "mean_average_precision",
           "fraction_retrieved", "fraction_retrieved_low", "fraction_retrieved_high", "best", "chain_best",
           *PAIRED_COLUMNS, "interval_best", "accuracy", "chance", "p_value", "controls_per_feature", "n_features",
           "alt_protocol",
           "alt_fraction_retrieved", "k", *SHORTLIST, "comparable", "source", "notes"]
DEFAULT_PUBLISHED = BUNDLED_METADATA / "cpjump1_published_cellprofiler.tsv"


def typed(table: pd.DataFrame) -> pd.DataFrame:
    """Whole numbers as nullable integers, values as floats, labels as strings: what summary.tsv promises."""
    table = table.copy()
    for column in COLUMNS:
        if column not in table.columns:
            table[column] = pd.NA
    for column in INTEGERS:
        table[column] = pd.to_numeric(table[column], errors="coerce").round().astype("Int64")
    for column in FLOATS:  # 6 decimals: far below any difference that matters, and readable in a spreadsheet
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("float64").round(6)
    for column in set(COLUMNS) - set(INTEGERS) - set(FLOATS) - {"comparable", "headline"}:
        table[column] = table[column].astype("string")
    for column in ("comparable", "headline"):
        table[column] = table[column].map(lambda v: pd.NA if pd.isna(v) else str(v).lower() in ("true", "1"),
                                          na_action=None).astype("boolean")
    return table[COLUMNS]


def read_summary(path: str | Path) -> pd.DataFrame:
    return typed(read_table(path))


def _hours(value: object) -> str:
    return "?" if pd.isna(value) else f"{int(value)} h"


def condition_label(row: pd.Series | dict) -> str:
    """'A549 compound 24 h', 'A549 compound 48 h (density 80)', 'A549 compound 24 h -> crispr 144 h'."""
    def group(key: str) -> str:
        value = row.get(key)
        return "" if pd.isna(value) or value in ("", BENCHMARK_GROUP, "all") else f" ({value})"

    text = f"{row['Metadata_cell_type']} {row['Metadata_modality']} {_hours(row['Metadata_timepoint'])}"
    text += group("Metadata_plate_group")
    if not pd.isna(row.get("Metadata_matched_modality")):
        text += f" -> {row['Metadata_matched_modality']} {_hours(row['Metadata_matched_timepoint'])}"
        text += group("Metadata_matched_plate_group")
    return text


def _with_condition_columns(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for column in CONDITION:
        if column not in table.columns:
            table[column] = pd.NA
    for column in ("Metadata_timepoint", "Metadata_matched_timepoint"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    for column in set(CONDITION) - {"Metadata_timepoint", "Metadata_matched_timepoint"}:
        table[column] = table[column].astype("string")
    return table


def task_summary(scored: pd.DataFrame, feature_set: str, task: str) -> pd.DataFrame:
    """Per condition: units scored, retrieved and untestable, mean mAP, fraction retrieved (q < 0.05)."""
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS)
    missing = {"mean_average_precision", "below_corrected_p"} - set(scored.columns)
    if missing:
        raise ValueError(f"{feature_set} {task}: result table lacks {sorted(missing)}")
    scored = _with_condition_columns(scored).assign(
        _retrieved=scored["below_corrected_p"].astype(bool),
        _untestable=~scored["testable"].astype(bool) if "testable" in scored else False,
        _protocol=scored["protocol"].astype(str) if "protocol" in scored else "unknown",
        _alt=scored["alt_below_corrected_p"].astype(float) if "alt_below_corrected_p" in scored else np.nan,
        _alt_protocol=scored["alt_protocol"].astype(str) if "alt_protocol" in scored else None)
    rows = scored.groupby(CONDITION, dropna=False, sort=True).agg(
        n_perturbations=("mean_average_precision", "size"), n_retrieved=("_retrieved", "sum"),
        n_untestable=("_untestable", "sum"), mean_average_precision=("mean_average_precision", "mean"),
        protocol=("_protocol", "first"), alt_protocol=("_alt_protocol", "first"),
        alt_fraction_retrieved=("_alt", "mean")).reset_index()
    rows["fraction_retrieved"] = rows["n_retrieved"] / rows["n_perturbations"]
    return rows.assign(feature_set=feature_set, task=task)


def expected_conditions(summary: pd.DataFrame, tasks: tuple[str, ...] = TASKS) -> pd.DataFrame:
    """(task, condition) rows every feature set should report, from the replicate-retrieval conditions."""
    own = CONDITION[:4]
    replicate = summary.loc[summary["task"] == "replicate_retrieval", own].drop_duplicates()
    sister = replicate[replicate["Metadata_modality"].isin(["compound", "crispr"])].assign(task="sister_matching")
    compounds = replicate[replicate["Metadata_modality"] == "compound"]
    genetic = replicate[replicate["Metadata_modality"].isin(["crispr", "orf"])].rename(columns={
        "Metadata_modality": "Metadata_matched_modality", "Metadata_timepoint": "Metadata_matched_timepoint",
        "Metadata_plate_group": "Metadata_matched_plate_group"})
    pairs = compounds.merge(genetic, on="Metadata_cell_type").assign(task="compound_gene_matching")
    derived = _with_condition_columns(pd.concat([sister, pairs], ignore_index=True))
    derived = derived[derived["task"].isin(tasks)]
    return pd.concat([summary[["task", *CONDITION]], derived[["task", *CONDITION]]]).drop_duplicates()


def complete_conditions(summary: pd.DataFrame, feature_sets: list[str], tasks: tuple[str, ...] = TASKS) -> pd.DataFrame:
    """Add n_perturbations = 0 rows (values empty) for every expected (feature set, task, condition) without results."""
    summary = _with_condition_columns(summary)
    keys = expected_conditions(summary, tasks)
    grid = keys.merge(pd.DataFrame({"feature_set": feature_sets}), how="cross")
    full = grid.merge(summary.drop(columns=[c for c in ("row_kind",) if c in summary]), on=["feature_set", "task", *CONDITION],
                      how="left")
    for column in ("n_perturbations", "n_retrieved", "n_untestable"):
        full[column] = full[column].fillna(0)
    protocols = summary.groupby("feature_set")["protocol"].first() if "protocol" in summary else pd.Series(dtype=str)
    full["protocol"] = full["protocol"].fillna(full["feature_set"].map(protocols))
    return full


def add_intervals(summary: pd.DataFrame) -> pd.DataFrame:
    low, high = wilson_interval(summary["n_retrieved"].astype(float), summary["n_perturbations"].astype(float))
    return summary.assign(fraction_retrieved_low=low, fraction_retrieved_high=high)


def mark_best(summary: pd.DataFrame) -> pd.Series:
    """'best' / 'tied' / '' per row by the interval rule in the module docstring; reference rows never compete."""
    marks = pd.Series("", index=summary.index, dtype="string")
    scored = summary[(summary["row_kind"] != "paper") & (summary["n_perturbations"] > 0)]
    for _, group in scored.groupby(["task", *CONDITION], dropna=False, sort=False):
        if len(group) < 2 or not group["fraction_retrieved"].max() > 0:
            continue
        leader = group["fraction_retrieved"].idxmax()
        others = group.drop(index=leader)
        if group.at[leader, "fraction_retrieved_low"] > others["fraction_retrieved_high"].max():
            marks[leader] = "best"
            continue
        overlapping = group["fraction_retrieved_high"] >= group.at[leader, "fraction_retrieved_low"]
        marks[group.index[overlapping]] = "tied"
    return marks


def read_published(path: str | Path = DEFAULT_PUBLISHED) -> pd.DataFrame:
    """The paper's values: one row per task x condition (numbers, with the repository file they come from)."""
    table = pd.read_csv(path, sep="\t")
    needed = {"task", "Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_matched_modality",
              "Metadata_matched_timepoint", "n_perturbations", "mean_average_precision", "fraction_retrieved", "source"}
    if needed - set(table.columns):
        raise ValueError(f"{path}: published table lacks columns {sorted(needed - set(table.columns))}")
    bad = table.loc[pd.to_numeric(table["fraction_retrieved"], errors="coerce").isna(), "task"]
    if len(bad):
        raise ValueError(f"{path}: fraction_retrieved must be a number in every row (rows {list(bad.index)})")
    return _with_condition_columns(table)


DATASET_NOTES = {  # why the paper's values are only a reference when the run's plates are not CPJUMP1's
    "synthetic": "this run's plates are synthetic: a reference for a different dataset, not a competitor",
    "own": "this run's plates are not CPJUMP1's: a reference for a different dataset, not a competitor",
}


def reference_rows(summary: pd.DataFrame, published: pd.DataFrame, dataset: str = "cpjump1",
                   paper_code_negatives: bool = False) -> pd.DataFrame:
    """The paper's row for every condition of the run that the paper reports (benchmark plate groups only);
    `dataset` says whose plates the run scored: cpjump1, synthetic or own (only cpjump1 runs are comparable).

    Compound-gene rows are comparable only when the run counted negatives as the paper's code did
    (retrieval.compound_gene_negatives: paper_code)."""
    keys = ["task", *[c for c in CONDITION if "plate_group" not in c]]
    conditions = summary[["task", *CONDITION]].drop_duplicates()
    benchmark = conditions["Metadata_plate_group"].isin([BENCHMARK_GROUP]) & (
        conditions["Metadata_matched_plate_group"].isna() | conditions["Metadata_matched_plate_group"].eq(BENCHMARK_GROUP))
    published = _with_condition_columns(published).drop(columns=["Metadata_plate_group", "Metadata_matched_plate_group"])
    merged = conditions[benchmark.fillna(False)].merge(published, on=keys)
    if merged.empty:
        return pd.DataFrame(columns=COLUMNS)
    protocols = set(summary.loc[summary["row_kind"] != "paper", "protocol"].dropna())
    comparable = dataset == "cpjump1" and protocols == {"cpjump1"}
    note = "CPJUMP1 paper, CellProfiler profiles of the real plates (final notebook's figure-4 run)"
    if dataset in DATASET_NOTES:
        note += "; " + DATASET_NOTES[dataset]
    elif not comparable:
        note += f"; this run used the {', '.join(sorted(protocols))} protocol: compare under protocol cpjump1"
    other = merged.get("other_run_fraction_retrieved")
    notes = [note + (f"; the paper's other run: {o:.3f}" if pd.notna(o) else "") for o in
             (other if other is not None else [np.nan] * len(merged))]
    matching = (merged["task"] == "compound_gene_matching").to_numpy()
    if comparable and not paper_code_negatives:
        notes = [n + ("; the paper's code also counted true matches as negatives, this run does not "
                      "(compound_gene_negatives: disjoint): expect higher values here" if m else "")
                 for n, m in zip(notes, matching)]
    flags = np.where(matching, comparable and paper_code_negatives, comparable)
    return merged.assign(feature_set=REFERENCE, row_kind="paper", protocol="cpjump1 (paper code)",
                         n_retrieved=merged.get("n_retrieved"), n_untestable=pd.NA, comparable=flags, notes=notes)


def shortlist_rows(files: RunFiles) -> pd.DataFrame:
    """Target identification and virtual screening (target_id/<feature set>.parquet): one row per feature set x task
    x condition x k, n_perturbations = the queries (compounds or genes) scored."""
    parts = []
    for feature_set in files.feature_sets:
        if feature_set not in files.shortlists:
            raise ValueError(f"no target-identification results given for feature set {feature_set!r}")
        path = files.shortlists[feature_set]
        table = read_table(path)
        parts.append(table.rename(columns={"n_queries": "n_perturbations"}).assign(
            feature_set=feature_set, row_kind="measured", source=str(path), notes=""))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    rows = _with_condition_columns(pd.concat(parts, ignore_index=True))
    return rows.assign(unit=rows["task"].map(UNITS), comparable=False)


def build_summary(files: RunFiles, published: pd.DataFrame | None = None, dataset: str = "cpjump1",
                  tasks: tuple[str, ...] = TASKS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary.tsv, the paired comparisons) of a finished run, `files.feature_sets` naming profile sets (FS/CHAIN;
    a bare name is a set of its own), with the shortlist rows of target identification and the layout controls
    when their tables are given; a missing result file is an error naming it."""
    parts, negatives, results = [], set(), {task: {} for task in tasks}
    feature_sets = files.feature_sets
    for feature_set in feature_sets:
        for task in tasks:
            path = files.result(feature_set, task)
            if not path.exists():
                raise FileNotFoundError(f"{path}: no {task} results for feature set {feature_set!r}")
            table = read_table(path)
            negatives |= set(table.get("compound_gene_negatives", pd.Series(dtype=str)).dropna())
            results[task][feature_set] = table
            parts.append(task_summary(table, feature_set, task).assign(source=str(path)))
    parts = [p for p in parts if not p.empty]
    if not parts:
        raise ValueError(f"every retrieval result of {', '.join(feature_sets)} is empty; nothing to summarize")
    summary = complete_conditions(pd.concat(parts, ignore_index=True), feature_sets, tasks)
    published_set = summary["feature_set"].str.split("/").str[0] == PUBLISHED
    summary["row_kind"] = np.where(published_set, "published_profiles", "measured")
    summary["source"] = summary["source"].fillna(pd.Series([str(files.result(fs, t)) for fs, t in
                                                            zip(summary["feature_set"], summary["task"])], index=summary.index))
    summary["notes"] = np.where(summary["n_perturbations"] == 0, "nothing to score in this condition", "")
    untestable = summary["n_untestable"] > 0
    summary.loc[untestable, "notes"] = [f"{int(n)} of {int(t)} can never reach q < 0.05 (lists too short)" for n, t in
                                        zip(summary.loc[untestable, "n_untestable"], summary.loc[untestable, "n_perturbations"])]
    reference = reference_rows(summary, read_published() if published is None else published, dataset,
                               paper_code_negatives=negatives == {"paper_code"})
    full = pd.concat([summary, reference], ignore_index=True) if not reference.empty else summary
    comparable = reference.set_index(["task", *CONDITION])["comparable"] if len(reference) else pd.Series(dtype=bool)
    keys = pd.MultiIndex.from_frame(full[["task", *CONDITION]])
    paper_flags = full["comparable"] if "comparable" in full else False  # no column: the paper reports no condition
    full["comparable"] = np.where(full["row_kind"] == "paper", paper_flags,
                                  comparable.reindex(keys).fillna(False).to_numpy())
    full = add_intervals(typed(full).assign(unit=lambda t: t["task"].map(UNITS)))
    full["interval_best"] = mark_best(full)
    paired = comparisons(results, feature_sets)
    full = paired_columns(label_profile_sets(full), paired)
    extra = [typed(shortlist_rows(files))] if files.shortlists else []
    controls, per_set = control_rows(files.layout_controls, files.chain_steps)
    if len(controls):
        extra.append(typed(controls))
    for rows in extra:
        full = pd.concat([full, label_profile_sets(rows)], ignore_index=True)
    full["condition"] = [condition_label(row) for _, row in full.iterrows()]
    full["controls_per_feature"] = full["profile_set"].map(lambda name: per_set.get(name, (np.nan, None))[0])
    full["n_features"] = full["profile_set"].map(lambda name: per_set.get(name, (np.nan, None))[1])
    order = {task: i for i, task in enumerate((*tasks, *SHORTLIST_TASKS))}
    kinds = {"measured": 0, "published_profiles": 1, "paper": 2, "control": 3}
    sets = {name: i for i, name in enumerate(feature_sets)}
    full = full.assign(_block=full["row_kind"].eq("control"), _task=full["task"].map(order).fillna(len(order)),
                       _kind=full["row_kind"].map(kinds), _set=full["profile_set"].map(sets))
    full = full.sort_values(["_block", "_task", "task", *CONDITION, "k", "_kind", "_set"], na_position="first",
                            kind="stable")
    return typed(full.drop(columns=["_block", "_task", "_kind", "_set"]).reset_index(drop=True)), paired
