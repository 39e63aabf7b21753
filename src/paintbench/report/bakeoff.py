"""The bake-off: every feature set under every chain it runs (a profile set, FS/CHAIN), side by side, with the
layout and batch controls beside each and a paired answer to "which is better".

Two families of paired comparisons (paintbench.comparison), each with its own BH correction:
- feature sets: each feature set's headline chain against the others' (the report's best/tied marks);
- chains: within one feature set, each of its chains against the others (the bake-off's chain marks).
A row of summary.tsv carries its paired difference against a reference: for a headline row, the classical
baseline (cellprofiler's headline, else the first feature set's); for another chain, its feature set's headline.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from paintbench.atomic import read_table
from paintbench.comparison import condition_keys, paired_best, paired_comparisons
from paintbench.registry import CELLPROFILER, FINETUNED_SUFFIX, HELDOUT_CHAIN, PAPER, profile_set, split_profile_set

PAIRED_COLUMNS = ["paired_reference", "paired_difference", "paired_difference_low", "paired_difference_high",
                  "paired_q_value"]
CONTROL_VALUES = ["mean_average_precision", "fraction_retrieved", "accuracy", "chance", "p_value"]


def headline_sets(profile_sets: list[str]) -> dict[str, str]:
    """feature set -> its headline profile set: the first of its chains in report order."""
    heads: dict[str, str] = {}
    for name in profile_sets:
        heads.setdefault(split_profile_set(name)[0], name)
    return heads


def label_profile_sets(summary: pd.DataFrame) -> pd.DataFrame:
    """feature_set as given (FS/CHAIN) -> profile_set, with feature_set and chain split and the headline flag."""
    names = summary["feature_set"].astype(str)
    scored = summary["row_kind"] != "paper"
    heads = set(headline_sets(list(dict.fromkeys(names[scored]))).values())
    split = [split_profile_set(n) if s else (n, "") for n, s in zip(names, scored)]
    return summary.assign(profile_set=np.where(scored, names, pd.NA), feature_set=[fs for fs, _ in split],
                          chain=[c or pd.NA for _, c in split], headline=[not s or n in heads for n, s in zip(names, scored)])


def families(profile_sets: list[str]) -> dict[str, list[str]]:
    """The comparison families: 'feature sets' (headlines; a fine-tuned set is scored on held-out perturbations
    only, so it is compared with its parent alone), 'chains of FS' (every FS with 2+ chains) and 'fine-tuning of FS'
    (FS and FS_ft, both on the held-out perturbations)."""
    heads = headline_sets(profile_sets)
    compared = [name for fs, name in heads.items() if not fs.endswith(FINETUNED_SUFFIX)]
    out = {"feature sets": compared} if len(compared) > 1 else {}
    for fs in heads:
        chains = [n for n in profile_sets if split_profile_set(n)[0] == fs]
        if len(chains) > 1:
            out[f"chains of {fs}"] = chains
        parent = fs.removesuffix(FINETUNED_SUFFIX)
        pair = [profile_set(parent, HELDOUT_CHAIN), profile_set(fs, HELDOUT_CHAIN)]
        if fs != parent and all(name in profile_sets for name in pair):
            out[f"fine-tuning of {parent}"] = pair
    return out


def comparisons(results: dict[str, dict[str, pd.DataFrame]], profile_sets: list[str],
                n_permutations: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Every family's paired comparisons of every task (results: task -> profile set -> per-unit table)."""
    parts = []
    for family, members in families(profile_sets).items():
        for task, tables in results.items():
            table = paired_comparisons({n: tables[n] for n in members if n in tables}, task, n_permutations, seed)
            if not table.empty:
                parts.append(table.assign(family=family))
    if not parts:
        return pd.DataFrame(columns=["family", "task", "set_a", "set_b"])
    table = pd.concat(parts, ignore_index=True)
    return table[["family", *[c for c in table.columns if c != "family"]]]


def _condition_key(row: pd.Series, keys: list[str]) -> tuple:
    """A row's condition as paired_best keys it (`keys`: condition_keys of the comparisons table)."""
    return tuple(None if pd.isna(row.get(c)) else row.get(c) for c in keys)


def _reference(name: str, heads: dict[str, str]) -> tuple[str, str] | None:
    """(family, reference set) a profile set's paired difference is taken against; None for the reference itself."""
    fs, chain = split_profile_set(name)
    if fs.endswith(FINETUNED_SUFFIX):  # against its parent on the same held-out perturbations
        parent = fs.removesuffix(FINETUNED_SUFFIX)
        return f"fine-tuning of {parent}", profile_set(parent, chain)
    if heads.get(fs) != name:
        return f"chains of {fs}", heads[fs]
    baseline = heads.get(CELLPROFILER, next(iter(heads.values())))
    return None if baseline == name else ("feature sets", baseline)


def paired_columns(summary: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """best (headlines, family 'feature sets'), chain_best (family 'chains of FS') and PAIRED_COLUMNS per row."""
    out = summary.copy()
    for column in ["best", "chain_best", *PAIRED_COLUMNS]:
        out[column] = pd.NA
    scored = out["row_kind"].isin(["measured", "published_profiles"]) & out["task"].isin(
        table["task"].unique() if len(table) else [])
    if not scored.any():
        return out
    names = list(dict.fromkeys(out.loc[out["row_kind"] != "paper", "profile_set"].dropna()))
    heads = headline_sets(names)
    marks = {family: paired_best(table[table["family"] == family].drop(columns="family"), members)
             for family, members in families(names).items()}
    keys = condition_keys(table)
    by_pair = {(r.family, r.task, r.set_a, r.set_b, _condition_key(pd.Series(r._asdict()), keys)): r
               for r in table.itertuples(index=False)}
    for index in out.index[scored]:
        row, task, name = out.loc[index], out.at[index, "task"], out.at[index, "profile_set"]
        key = _condition_key(row, keys)
        fs = split_profile_set(name)[0]
        if heads[fs] == name and "feature sets" in marks:
            out.at[index, "best"] = marks["feature sets"].get(key, {}).get(name, "")
        chain_family = f"chains of {fs}"
        if chain_family in marks:
            out.at[index, "chain_best"] = marks[chain_family].get(key, {}).get(name, "")
        reference = _reference(name, heads)
        if reference is None:
            continue
        family, other = reference
        match = [r for (f, t, a, b, k), r in by_pair.items() if f == family and t == task and {a, b} == {name, other}
                 and k == key]
        if match:
            r = match[0]
            sign = 1.0 if r.set_b == name else -1.0  # difference = mAP(set_b) - mAP(set_a): positive = this set better
            low, high = sorted((sign * r.difference_low, sign * r.difference_high))
            out.loc[index, PAIRED_COLUMNS] = [other, sign * r.difference, low, high, r.q_value]
    return out


def control_rows(layout_controls: dict, chain_steps: dict) -> tuple[pd.DataFrame, dict[str, tuple[float, int]]]:
    """summary.tsv rows of kind 'control' (one per profile set x control x condition), and per profile set (the
    fewest negative controls per feature any of its steps fitted on, the features its chain kept)."""
    parts = []
    for name, path in layout_controls.items():
        table = read_table(path)
        if table.empty:
            continue
        parts.append(table.rename(columns={"control": "task", "n": "n_perturbations"}).assign(
            feature_set=name, row_kind="control", source=str(path), notes=table.get("detail", "")))
    rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    per_set = {name: chain_record(path) for name, path in chain_steps.items()}
    return rows, per_set


def chain_record(path) -> tuple[float, int]:
    """(the fewest negative controls per feature a step fitted on, the features the last step kept)."""
    steps = read_table(path)
    values = pd.to_numeric(steps.get("controls_per_feature", pd.Series(dtype=float)), errors="coerce").dropna()
    return (float(values.min()) if len(values) else np.nan), int(steps["n_features_out"].iloc[-1])


def headline_view(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of each feature set's headline chain, the paper's and no control: the page's feature-set view."""
    keep = summary["headline"].fillna(True).astype(bool) & (summary["row_kind"] != "control")
    return summary[keep | (summary["feature_set"] == PAPER)].reset_index(drop=True)
