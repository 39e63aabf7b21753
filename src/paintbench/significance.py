"""Significance of retrieval: permutation nulls, p-values under the two protocols, BH q-values, intervals.

Both protocols share the null of one query: the AP of a uniformly random rank list with the query's number of
positives and list length (its configuration). One set of `null_size` draws per configuration is shared by
every query with that configuration (as copairs does), seeded by (seed, configuration) only.

- cpjump1 (the CPJUMP1 paper's statistic, benchmark/1.0.calculate-map-cp.ipynb with copairs of May 2023): every
  query gets its own p-value from its configuration's null; a group's p-value is the geometric mean of its
  queries' p-values (10 ** -mean(-log10 p)).
- copairs (copairs >= 0.5): a group's p-value comes from the null of its mAP, the draw-wise mean of its queries'
  configuration nulls.

Ties count against the observation in both: p = (1 + #{null >= observed}) / (1 + null_size), where null values
within TIE_TOL below the observation count as ties (nulls are float32, as copairs stores them). The paper's code and
copairs 0.5 count only null values strictly greater, which makes a list with one candidate (AP = 1 by
construction) significant at p = 1 / (null_size + 1). With `>=` that list gets p = 1, and `min_p_value` (the
expected p of a perfect ranking) says up front which groups can never reach the threshold (`testable`).
Benjamini-Hochberg (statsmodels fdr_bh) runs over the groups of one call: callers pass one condition at a time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

from paintbench.registry import PROTOCOLS

Protocol = Literal["cpjump1", "copairs"]
BLOCK_ELEMENTS = 4_000_000  # random-key block of the null sampler: 32 MB of float64
TIE_TOL = 1e-6  # > float32 rounding of null APs (~6e-8), far below any AP difference that matters
SCORE_COLUMNS = ["mean_average_precision", "p_value", "corrected_p_value", "below_p", "below_corrected_p", "n_queries",
                 "n_positives", "min_p_value", "testable", "protocol"]


def _sampled_positions(n_pos: int, n_total: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted 0-based positions of n_pos positives in `size` uniformly random lists of n_total."""
    out = np.empty((size, n_pos), dtype=np.int64)
    if n_pos * (n_pos - 1) / 2 <= n_total:
        # Few positives: iid draws, redraw lists with a repeat (acceptance >= ~e^-1); uniform subsets.
        todo = np.arange(size)
        while todo.size:
            draw = np.sort(rng.integers(0, n_total, size=(todo.size, n_pos)), axis=1)
            ok = np.all(np.diff(draw, axis=1) > 0, axis=1)
            out[todo[ok]] = draw[ok]
            todo = todo[~ok]
        return out
    chunk = max(1, BLOCK_ELEMENTS // n_total)  # many positives: random keys, O(size x n_total)
    for s in range(0, size, chunk):
        keys = rng.random((min(chunk, size - s), n_total))
        out[s : s + chunk] = np.sort(np.argpartition(keys, n_pos - 1, axis=1)[:, :n_pos], axis=1)
    return out


def null_distribution(n_pos: int, n_total: int, null_size: int, rng: np.random.Generator) -> np.ndarray:
    """AP of `null_size` random rank lists with n_pos positives among n_total (float32, as copairs)."""
    if not 0 < n_pos <= n_total:
        raise ValueError(f"need 0 < n_pos <= n_total, got {n_pos}, {n_total}")
    i = np.arange(1, n_pos + 1)
    out = np.empty(null_size, dtype=np.float32)
    chunk = max(1, BLOCK_ELEMENTS // n_pos)
    for s in range(0, null_size, chunk):
        m = min(chunk, null_size - s)
        out[s : s + m] = (i / (_sampled_positions(n_pos, n_total, m, rng) + 1)).sum(axis=1) / n_pos
    return out


@lru_cache(maxsize=512)
def config_null(n_pos: int, n_total: int, null_size: int, seed: int) -> np.ndarray:
    """Null of one configuration, in draw order; its stream depends on (seed, configuration) only, never on order."""
    null = null_distribution(n_pos, n_total, null_size, np.random.default_rng([seed, n_pos, n_total]))
    null.flags.writeable = False
    return null


@lru_cache(maxsize=512)
def _sorted_null(n_pos: int, n_total: int, null_size: int, seed: int) -> np.ndarray:
    ordered = np.sort(config_null(n_pos, n_total, null_size, seed)).astype(np.float64)
    ordered.flags.writeable = False
    return ordered


def p_from_null(sorted_null: np.ndarray, observed: np.ndarray | float) -> np.ndarray:
    """(1 + #{null >= observed - TIE_TOL}) / (1 + null size): ties count against the observation."""
    at_least = len(sorted_null) - np.searchsorted(sorted_null, np.asarray(observed, np.float64) - TIE_TOL, side="left")
    return (at_least + 1.0) / (len(sorted_null) + 1.0)


def perfect_ranking_probability(n_pos: np.ndarray, n_total: np.ndarray) -> np.ndarray:
    """1 / C(n_total, n_pos): the chance that a random list puts every positive first (AP = 1)."""
    n_pos, n_total = np.asarray(n_pos, np.float64), np.asarray(n_total, np.float64)
    return np.exp(gammaln(n_pos + 1) + gammaln(n_total - n_pos + 1) - gammaln(n_total + 1))


def expected_min_p(chance: np.ndarray | float, null_size: int) -> np.ndarray:
    """Expected p of AP = 1 when each null draw reaches it with probability `chance` (ties count against it)."""
    return (1.0 + null_size * np.asarray(chance, np.float64)) / (null_size + 1.0)


def query_p_values(ap_table: pd.DataFrame, null_size: int, seed: int) -> np.ndarray:
    """p-value of every query row from its configuration's null (NaN where the row has no positives or AP)."""
    ap = ap_table["average_precision"].to_numpy(np.float64)
    n_pos = ap_table["n_pos_pairs"].to_numpy(np.int64)
    n_total = ap_table["n_total_pairs"].to_numpy(np.int64)
    p = np.full(len(ap), np.nan)
    valid = ~np.isnan(ap) & (n_pos > 0)
    configs, index = np.unique(np.stack([n_pos[valid], n_total[valid]], axis=1), axis=0, return_inverse=True)
    rows = np.flatnonzero(valid)
    for j, (k, n) in enumerate(configs):
        members = rows[index.ravel() == j]
        p[members] = p_from_null(_sorted_null(int(k), int(n), null_size, seed), ap[members])
    return p


def _map_null_p(work: pd.DataFrame, cols: list[str], observed: np.ndarray, null_size: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """copairs protocol: p of each group's mAP against the null of the mean of its queries' configuration nulls."""
    configs, conf_ix = np.unique(work[["_k", "_n"]].to_numpy(np.int64), axis=0, return_inverse=True)
    work = work.assign(_c=conf_ix.ravel())
    # Groups with the same multiset of configurations share one null mAP distribution: compute it once.
    signature = work.groupby(cols, sort=True, observed=True)["_c"].agg(lambda c: tuple(sorted(c)))
    sig_id, signatures = pd.factorize(signature)
    p, min_p = np.empty(len(observed)), np.empty(len(observed))
    for j, sig in enumerate(signatures):
        members = np.flatnonzero(sig_id == j)
        present, weight = np.unique(sig, return_counts=True)
        null_map = np.zeros(null_size)
        for c, w in zip(present, weight):  # one accumulator, not one array per query
            k, n = configs[c]
            null_map += w * config_null(int(k), int(n), null_size, seed)
        p[members] = p_from_null(np.sort(null_map / len(sig)), observed[members])
        # Shared draws per configuration: the null mAP is 1 only when every configuration's draw is perfect.
        chance = np.prod(perfect_ranking_probability(configs[present, 0], configs[present, 1]))
        min_p[members] = expected_min_p(chance, null_size)
    return p, min_p


def score_groups(
    ap_table: pd.DataFrame,
    group_col: str | Sequence[str],
    protocol: Protocol = "cpjump1",
    null_size: int = 100_000,
    seed: int = 0,
    threshold: float = 0.05,
) -> pd.DataFrame:
    """mAP, p, BH q and the retrieved call per group of queries, under `protocol` (see module docstring).

    Rows without positives or AP are not tests and are dropped. `n_positives` is the mean positives per query;
    `min_p_value` the expected p of a perfect ranking: a group with min_p_value >= threshold can never be
    retrieved (testable False), whatever its profiles.
    """
    from statsmodels.stats.multitest import multipletests

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown retrieval protocol {protocol!r} (known: {', '.join(PROTOCOLS)})")
    cols = [group_col] if isinstance(group_col, str) else list(group_col)
    t = ap_table.loc[ap_table["average_precision"].notna() & (ap_table["n_pos_pairs"] > 0)]
    work = t[cols].assign(_ap=t["average_precision"].to_numpy(np.float64), _k=t["n_pos_pairs"].to_numpy(np.int64),
                          _n=t["n_total_pairs"].to_numpy(np.int64))
    if protocol == "cpjump1":
        p_query = t["p_value"].to_numpy(np.float64) if "p_value" in t else query_p_values(t, null_size, seed)
        chance = perfect_ranking_probability(work["_k"].to_numpy(), work["_n"].to_numpy())
        work = work.assign(_log_p=-np.log10(p_query), _log_min_p=-np.log10(expected_min_p(chance, null_size)))
    grouped = work.groupby(cols, sort=True, observed=True)
    out = grouped.agg(mean_average_precision=("_ap", "mean"), n_queries=("_ap", "size"), n_positives=("_k", "mean"))
    if protocol == "cpjump1":
        p = 10.0 ** -grouped["_log_p"].mean().to_numpy()
        min_p = 10.0 ** -grouped["_log_min_p"].mean().to_numpy()
    else:
        p, min_p = _map_null_p(work, cols, out["mean_average_precision"].to_numpy(), null_size, seed)
    out = out.reset_index()
    at = len(cols)
    out.insert(at + 1, "p_value", p)
    out.insert(at + 2, "corrected_p_value", multipletests(p, method="fdr_bh")[1] if len(p) else p)
    out.insert(at + 3, "below_p", out["p_value"] < threshold)
    out.insert(at + 4, "below_corrected_p", out["corrected_p_value"] < threshold)
    return out.assign(min_p_value=min_p, testable=min_p < threshold, protocol=protocol)[cols + SCORE_COLUMNS]


def fraction_retrieved(scored: pd.DataFrame, threshold: float = 0.05) -> float:
    """Share of groups (perturbations, genes) with BH q-value < threshold; NaN when there is none."""
    return float((scored["corrected_p_value"] < threshold).mean()) if len(scored) else float("nan")


def wilson_interval(successes: np.ndarray | int, trials: np.ndarray | int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (statsmodels' proportion_confint); NaN where there are no trials."""
    from statsmodels.stats.proportion import proportion_confint

    k, n = np.asarray(successes, np.float64), np.asarray(trials, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = proportion_confint(k, np.where(n > 0, n, 1.0), alpha=1 - level, method="wilson")
    low = np.where(k == 0, 0.0, np.clip(low, 0, 1))  # exact ends: no -1e-17 from rounding
    high = np.where(k == n, 1.0, np.clip(high, 0, 1))
    return np.where(n > 0, low, np.nan), np.where(n > 0, high, np.nan)
