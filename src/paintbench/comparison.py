"""Which profile set retrieves better: a paired test on the per-unit mAPs of one retrieval task.

A profile set is a feature set under a post-processing chain ("cellprofiler/mad_featselect"). Every profile set
scores the same perturbations (replicate retrieval) or genes (sister and compound-gene matching): the units. A
unit that is easy for one set (a strong phenotype) is easy for the others, so the per-unit mAPs of two sets are
strongly correlated. Independent intervals on each set's summary (the Wilson interval of fraction retrieved) ignore
that correlation and seldom separate two sets; a paired test looks only at the per-unit differences, whose spread
is what actually decides.

The statistic, per condition and pair of profile sets (a, b), on the units both scored (inner join on condition +
unit): d_i = mAP_b,i - mAP_a,i and its mean, `difference` (positive: b retrieves better).

- p_value: two-sided sign-flip permutation test of mean(d) = 0. Under the null the two sets are exchangeable on
  every unit, so each d_i is as likely to have either sign. Exact enumeration of all 2**n sign vectors when
  2**n <= n_permutations (p = #{|perm mean| >= |obs|} / 2**n, the identity included), else seeded Monte Carlo with
  p = (1 + #{|perm mean| >= |obs|}) / (1 + n_permutations). Ties (within a relative 1e-9) count against the
  observation.
- difference_low, difference_high: seeded percentile bootstrap interval (units resampled) of mean(d).
- wilcoxon_p_value: the Wilcoxon signed-rank test (scipy, zero_method "wilcox"), a second opinion on ranks; NaN
  where undefined (no units, or every difference zero).
- q_value: Benjamini-Hochberg (statsmodels fdr_bh) over every row of one task's table (all conditions and pairs);
  `better` names set_b (q < 0.05, difference > 0), set_a (q < 0.05, difference < 0) or "".

paired_best, per task and condition, among the profile sets with at least one comparison there:
- the leader is the set with the highest mean pairwise difference against the others (the mean over its pairs of
  its matched mAP minus the other's). When every set scores the same units this is exactly the set with the
  highest mAP over those shared units; ties go to the set listed first in `sets`;
- the leader is 'best' when it is significantly better (q < alpha, difference in its favour) than every other set;
- otherwise the leader is 'tied', and so is every set not significantly worse than the leader (a set with no
  comparison row against the leader, no shared units, cannot be called worse);
- '' for the sets significantly worse than the leader (q < alpha, difference in the leader's favour).

Null check (shuffled_comparison_null): the profile-set labels are permuted independently within every unit, which
makes all sets exchangeable; any `better` call on such data is a false positive, and their rate stays <= alpha.
"""

from __future__ import annotations

import warnings
from itertools import combinations

import numpy as np
import pandas as pd

from paintbench.registry import TASKS
from paintbench.retrieval import CONDITION, GENE, PERT

MATCHED = ["Metadata_matched_modality", "Metadata_matched_timepoint", "Metadata_matched_plate_group"]
MAP = "mean_average_precision"
ALPHA = 0.05
BLOCK_ELEMENTS = 4_000_000  # sign-flip / bootstrap block: 32 MB of float64
RELATIVE_TIE = 1e-9
COLUMNS = ["task", *CONDITION, *MATCHED, "set_a", "set_b", "n_units", "map_a", "map_b", "difference",
           "difference_low", "difference_high", "p_value", "wilcoxon_p_value", "q_value", "better"]
DIFFERENCE_KEYS = ["n_units", "map_a", "map_b", "difference", "difference_low", "difference_high", "p_value",
                   "wilcoxon_p_value"]


def unit_column(task: str) -> str:
    """The unit a task scores: the perturbation (replicate retrieval) or the gene (the matching tasks)."""
    if task not in TASKS:
        raise ValueError(f"unknown retrieval task {task!r} (known: {', '.join(TASKS)})")
    return PERT if task == "replicate_retrieval" else GENE


def condition_columns(task: str) -> list[str]:
    """The columns that name one condition of a task: compound-gene matching adds the matched genetic condition."""
    unit_column(task)
    return CONDITION + MATCHED if task == "compound_gene_matching" else list(CONDITION)


def _sign_flip_p(d: np.ndarray, n_permutations: int, rng: np.random.Generator) -> float:
    """Two-sided sign-flip p of mean(d) = 0: exact when 2**n <= n_permutations, else Monte Carlo (+1 / +1)."""
    n = len(d)
    observed = abs(d.sum())
    tie = RELATIVE_TIE * max(float(np.abs(d).sum()), 1e-300)
    if n < 63 and 2**n <= n_permutations:
        codes = np.arange(2**n, dtype=np.int64)[:, None]
        signs = 1.0 - 2.0 * ((codes >> np.arange(n)) & 1)  # every sign vector once, the identity (code 0) included
        return float(np.mean(np.abs(signs @ d) >= observed - tie))
    at_least = 0
    chunk = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n_permutations, chunk):
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(chunk, n_permutations - start), n))
        at_least += int(np.sum(np.abs(signs @ d) >= observed - tie))
    return (1.0 + at_least) / (1.0 + n_permutations)


def _bootstrap_interval(d: np.ndarray, n_resamples: int, level: float,
                        rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(d), units resampled with replacement."""
    n = len(d)
    means = np.empty(n_resamples)
    chunk = max(1, BLOCK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        m = min(chunk, n_resamples - start)
        means[start : start + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def _wilcoxon_p(d: np.ndarray) -> float:
    """Wilcoxon signed-rank p (zero_method 'wilcox'); NaN without units or with every difference zero."""
    from scipy.stats import wilcoxon

    if not np.any(d != 0):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return float(wilcoxon(d, zero_method="wilcox").pvalue)
        except ValueError:
            return float("nan")


def paired_difference(a: np.ndarray, b: np.ndarray, n_permutations: int = 10_000, seed: int = 0,
                      level: float = 0.95) -> dict:
    """Paired comparison of matched per-unit mAPs a and b (see the module docstring): mean of b - a, its sign-flip
    p, its bootstrap interval (as many resamples as n_permutations) and the Wilcoxon p.

    Pairs where either value is NaN are dropped. Keys: n_units, map_a, map_b, difference, difference_low,
    difference_high, p_value, wilcoxon_p_value; with no units every value but n_units (0) is NaN.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length, got {a.shape[0]} and {b.shape[0]}")
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0:
        return {"n_units": 0, **{key: float("nan") for key in DIFFERENCE_KEYS[1:]}}
    d = b - a
    rng = np.random.default_rng([seed, 0])  # permutations and bootstrap draw from separate, fixed streams
    p = _sign_flip_p(d, n_permutations, rng)
    low, high = _bootstrap_interval(d, n_permutations, level, np.random.default_rng([seed, 1]))
    return {"n_units": n, "map_a": float(a.mean()), "map_b": float(b.mean()), "difference": float(d.mean()),
            "difference_low": low, "difference_high": high, "p_value": p, "wilcoxon_p_value": _wilcoxon_p(d)}


def _unit_table(table: pd.DataFrame, keys: list[str], name: str) -> pd.DataFrame:
    """One profile set's (condition, unit, mAP) rows; a unit scored twice in one condition is an error."""
    if table is None or table.empty:
        return pd.DataFrame(columns=[*keys, MAP])
    missing = [c for c in [*keys, MAP] if c not in table.columns]
    if missing:
        raise ValueError(f"profile set {name!r}: per-unit table lacks columns {missing}")
    out = table[[*keys, MAP]].reset_index(drop=True)
    if out.duplicated(keys).any():
        raise ValueError(f"profile set {name!r}: a unit appears twice in one condition")
    return out


def _key(values: object) -> tuple:
    """A condition as a hashable tuple, missing values as None (NaN never equals itself)."""
    values = values if isinstance(values, tuple) else (values,)
    return tuple(None if pd.isna(v) else v for v in values)


def _sort_key(key: tuple) -> tuple:
    """Conditions in a stable order: numbers by value, labels alphabetically, missing values last."""
    def one(v: object) -> tuple:
        number = isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
        return (v is None, not number, float(v) if number else 0.0, "" if number or v is None else str(v))
    return tuple(one(v) for v in key)


def _with_q(table: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """BH q-values over every row with a p-value, and the `better` call."""
    from statsmodels.stats.multitest import multipletests

    p = table["p_value"].to_numpy(np.float64)
    q = np.full(len(p), np.nan)
    valid = ~np.isnan(p)
    if valid.any():
        q[valid] = multipletests(p[valid], method="fdr_bh")[1]
    significant = q < alpha
    difference = table["difference"].to_numpy(np.float64)
    better = np.where(significant & (difference > 0), table["set_b"],
                      np.where(significant & (difference < 0), table["set_a"], ""))
    return table.assign(q_value=q, better=better)


def paired_comparisons(results: dict[str, pd.DataFrame], task: str, n_permutations: int = 10_000,
                       seed: int = 0) -> pd.DataFrame:
    """One row per condition x unordered pair of profile sets (set_a listed before set_b in `results`) over the
    units both scored there; BH over all rows (module docstring). A condition only one set scored, or a pair
    with no shared unit, gives no row. Columns: COLUMNS (the matched-condition columns only for
    compound_gene_matching)."""
    keys = condition_columns(task)
    unit = unit_column(task)
    columns = [c for c in COLUMNS if c not in MATCHED or c in keys]
    by_condition: dict[tuple, dict[str, pd.Series]] = {}
    for name, results_table in results.items():
        table = _unit_table(results_table, [*keys, unit], name)
        if table.empty:
            continue
        for condition, sub in table.groupby(keys, dropna=False, sort=False):
            by_condition.setdefault(_key(condition), {})[name] = sub.set_index(unit)[MAP]
    rows = []
    for condition in sorted(by_condition, key=_sort_key):
        selected = by_condition[condition]
        for set_a, set_b in combinations([name for name in results if name in selected], 2):
            shared = selected[set_a].index.intersection(selected[set_b].index).sort_values()
            if not len(shared):
                continue
            result = paired_difference(selected[set_a].loc[shared].to_numpy(), selected[set_b].loc[shared].to_numpy(),
                                       n_permutations=n_permutations, seed=seed)
            rows.append({"task": task, **dict(zip(keys, condition)), "set_a": set_a, "set_b": set_b, **result})
    if not rows:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame(rows)
    table["n_units"] = table["n_units"].astype("int64")
    return _with_q(table)[columns]


def condition_keys(comparisons: pd.DataFrame) -> list[str]:
    """The columns that key a condition of a comparisons table (task first): paired_best's keys."""
    return ["task", *[c for c in CONDITION + MATCHED if c in comparisons.columns]]


def _significantly_worse(verdict: dict[tuple[str, str], tuple[float, float]], leader: str, name: str,
                         alpha: float) -> bool:
    """Is `name` significantly worse than the leader (q < alpha, difference in the leader's favour)?"""
    q, leader_gain = verdict.get((name, leader), (np.nan, np.nan))
    return bool(q < alpha and leader_gain > 0)


def paired_best(comparisons: pd.DataFrame, sets: list[str], alpha: float = ALPHA) -> dict[tuple, dict[str, str]]:
    """{(task, *condition values): {profile set: 'best' | 'tied' | ''}} by the rule in the module docstring.

    A condition's key follows the table's condition columns (task first; a missing value is None). Only the sets of `sets` that have a
    comparison row in a condition are marked there; rows naming other sets are ignored.
    """
    order = {name: i for i, name in enumerate(sets)}
    keys = condition_keys(comparisons)
    chosen = comparisons[comparisons["set_a"].isin(order) & comparisons["set_b"].isin(order)]
    marks: dict[tuple, dict[str, str]] = {}
    for key, group in chosen.groupby(keys, dropna=False, sort=True):
        gains: dict[str, list[float]] = {}  # per set: its matched mAP minus the other's, one per pair
        verdict: dict[tuple[str, str], tuple[float, float]] = {}  # (x, y): (q, mAP_y - mAP_x)
        for row in group.itertuples(index=False):
            gains.setdefault(row.set_a, []).append(-row.difference)
            gains.setdefault(row.set_b, []).append(row.difference)
            verdict[(row.set_a, row.set_b)] = (row.q_value, row.difference)
            verdict[(row.set_b, row.set_a)] = (row.q_value, -row.difference)
        present = sorted(gains, key=order.__getitem__)
        score = {name: float(np.nanmean(gains[name])) if np.any(~np.isnan(gains[name])) else -np.inf
                 for name in present}
        leader = max(present, key=lambda name: (score[name], -order[name]))
        worse = {name: _significantly_worse(verdict, leader, name, alpha) for name in present if name != leader}
        best = bool(worse) and all(worse.values())
        marks[_key(key)] = {name: ("best" if best else "tied") if name == leader else ("" if worse[name] else "tied")
                            for name in present}
    return marks


def best_table(comparisons: pd.DataFrame, sets: list[str], alpha: float = ALPHA) -> pd.DataFrame:
    """paired_best as a long table: task, condition columns, profile_set, best."""
    keys = condition_keys(comparisons)
    rows = [{**dict(zip(keys, key)), "profile_set": name, "best": mark}
            for key, by_set in paired_best(comparisons, sets, alpha).items() for name, mark in by_set.items()]
    return pd.DataFrame(rows, columns=[*keys, "profile_set", "best"])


def shuffle_set_labels(results: dict[str, pd.DataFrame], task: str,
                       seed: int | tuple[int, ...] = 0) -> dict[str, pd.DataFrame]:
    """The per-unit tables with the profile-set labels permuted independently within every (condition, unit):
    each unit's mAPs are redistributed among the sets that scored it, so every set is exchangeable with the others."""
    keys = [*condition_columns(task), unit_column(task)]
    tables = {name: _unit_table(table, keys, name) for name, table in results.items()}
    long = pd.concat([t.assign(_set=name) for name, t in tables.items()], ignore_index=True)
    if long.empty:
        return {name: t.copy() for name, t in tables.items()}
    group = long.groupby(keys, dropna=False, sort=False).ngroup().to_numpy()
    rng = np.random.default_rng(seed)
    slots = np.argsort(group, kind="stable")  # the rows of each unit, in blocks
    shuffled = np.lexsort((rng.random(len(long)), group))  # the same blocks, each in random order
    values = long[MAP].to_numpy(np.float64)
    new = np.empty_like(values)
    new[slots] = values[shuffled]
    long[MAP] = new
    return {name: long.loc[long["_set"] == name, [*keys, MAP]].reset_index(drop=True) for name in tables}


def shuffled_comparison_null(results: dict[str, pd.DataFrame], task: str, n_shuffles: int = 20, seed: int = 0,
                             n_permutations: int = 2_000, alpha: float = ALPHA) -> pd.DataFrame:
    """paired_comparisons on `n_shuffles` label-shuffled copies of `results` (shuffle_set_labels): per shuffle,
    n_comparisons, n_called (rows with a `better` call, all false positives) and false_positive_rate."""
    rows = []
    for shuffle in range(n_shuffles):
        table = paired_comparisons(shuffle_set_labels(results, task, seed=(seed, shuffle)), task,
                                   n_permutations=n_permutations, seed=seed + shuffle)
        called = int(((table["q_value"] < alpha) & (table["difference"] != 0)).sum()) if len(table) else 0
        rows.append({"shuffle": shuffle, "n_comparisons": len(table), "n_called": called,
                     "false_positive_rate": called / len(table) if len(table) else float("nan")})
    return pd.DataFrame(rows, columns=["shuffle", "n_comparisons", "n_called", "false_positive_rate"])
