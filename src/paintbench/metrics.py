"""Retrieval metrics for the three CPJUMP1 tasks: average precision, mAP with a permutation p-value,
Benjamini-Hochberg q-values and the fraction retrieved. One vectorized engine serves all tasks.

Definitions follow copairs 0.5.5 (the reference; tests compare against it) so that numbers agree:
- Rank key: copairs stores similarities as float32 and sorts by `1 - sim` in float32, so two
  similarities equal after that rounding tie. We rank by the same key (`rank_key`).
- Ties: copairs lists positives before negatives and stable-sorts, so a positive ranks ahead of every
  negative with an equal key. Hence the i-th positive (by key) sits at rank i + #(negatives with a
  strictly smaller key), and AP = mean_i i / rank_i.
- Null: AP of a uniformly random rank list with the query's (n_pos, n_total). One set of `null_size`
  draws per configuration is shared by every query with that configuration (copairs does the same),
  so a group's null mAP is the draw-wise mean of its queries' configuration nulls. When all queries
  of a group share one configuration, that is the single-query AP null (wider than the null of a
  mean of independent APs: conservative).
- p = (1 + #{draws with null mAP > observed mAP}) / (null_size + 1): copairs' strict '>', with values
  within TIE_TOL counted as ties (copairs compares float32 null values with float64 mAPs, so its
  treatment of exact ties depends on rounding; we make it explicit). BH via statsmodels.
Pair rules (a candidate that is both positive and negative is positive; self is never a candidate):
positives share every `pos_same` column (and >= 1 label) and differ in every `pos_diff` column;
negatives are `neg_mask` candidates sharing every `neg_same` column, differing in every `neg_diff`
column and sharing no label.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

BLOCK_ELEMENTS = 4_000_000  # similarity block (query rows x candidates): 32 MB of float64
COUNTING_MAX_POS = 48  # up to this many positives per query, counting beats sorting whole rows
TIE_TOL = 1e-6  # > float32 rounding of null APs (~6e-8), far below any AP difference that matters


def rank_key(sim: np.ndarray) -> np.ndarray:
    """copairs' sort key, ascending = most similar first: float32(1) - float32(sim)."""
    key = np.array(sim, dtype=np.float32)  # a float32 copy: the subtraction then needs no temporary
    return np.subtract(np.float32(1), key, out=key)


def _ap_counting(key: np.ndarray, positive: np.ndarray, negative: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """AP from ranks of the few positives: O(rows x candidates x max positives), no full sort."""
    kmax = int(n_pos.max())
    rows, cols = np.nonzero(positive)
    starts = np.concatenate([[0], np.cumsum(n_pos)[:-1]])
    pos_key = np.full((key.shape[0], kmax), np.inf, dtype=np.float32)
    pos_key[rows, np.arange(rows.size) - starts[rows]] = key[rows, cols]
    pos_key.sort(axis=1)
    neg_key = np.where(negative, key, np.float32(np.inf))  # inf is never strictly smaller
    better = np.empty(pos_key.shape, dtype=np.int64)
    for i in range(kmax):
        better[:, i] = np.count_nonzero(neg_key < pos_key[:, i, None], axis=1)
    i = np.arange(1, kmax + 1)
    precision = np.where(i <= n_pos[:, None], i / (i + better), 0.0)
    return precision.sum(axis=1) / n_pos


def _ap_sorting(key: np.ndarray, positive: np.ndarray, negative: np.ndarray, n_pos: np.ndarray) -> np.ndarray:
    """AP from a full stable sort (many positives): key ascending, positives first on ties."""
    primary = np.where(positive | negative, key, np.float32(np.inf))  # invalid candidates go last
    order = np.lexsort((~positive, primary), axis=1)
    relevant = np.take_along_axis(positive, order, axis=1)
    precision = np.cumsum(relevant, axis=1) / np.arange(1, key.shape[1] + 1)
    return np.where(relevant, precision, 0.0).sum(axis=1) / n_pos


def average_precision(
    sim: np.ndarray, positive: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP per query row over its valid candidates; returns (ap, n_pos, n_total). AP is NaN without positives."""
    positive = np.asarray(positive, dtype=bool) & valid
    negative = np.asarray(valid, dtype=bool) & ~positive
    n_pos, n_total = positive.sum(axis=1), np.asarray(valid).sum(axis=1)
    ap = np.full(len(n_pos), np.nan)
    step = max(1, BLOCK_ELEMENTS // max(1, sim.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, len(n_pos), step):
            b = slice(s, s + step)
            if n_pos[b].max(initial=0) == 0:
                continue
            engine = _ap_counting if n_pos[b].max() <= COUNTING_MAX_POS else _ap_sorting
            ap[b] = engine(rank_key(sim[b]), positive[b], negative[b], n_pos[b])
    ap[n_pos == 0] = np.nan
    return ap, n_pos, n_total


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1)
    if not np.all(norm > 0):
        raise ValueError(f"{int(np.sum(~(norm > 0)))} profile(s) have zero or NaN norm: cosine undefined")
    return x / norm[:, None]


def cosine_similarity(a: np.ndarray, b: np.ndarray, abs_similarity: bool = False) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b` (small inputs; retrieval_ap blocks)."""
    sim = _unit_rows(np.asarray(a, dtype=np.float64)) @ _unit_rows(np.asarray(b, dtype=np.float64)).T
    return np.abs(sim) if abs_similarity else sim


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


@lru_cache(maxsize=256)
def _config_null(n_pos: int, n_total: int, null_size: int, seed: int) -> np.ndarray:
    """Null of one configuration; its stream depends on (seed, configuration) only, never on order."""
    null = null_distribution(n_pos, n_total, null_size, np.random.default_rng([seed, n_pos, n_total]))
    null.flags.writeable = False
    return null


def mean_average_precision(
    ap_table: pd.DataFrame,
    group_col: str | Sequence[str],
    null_size: int = 100_000,
    seed: int = 0,
    threshold: float = 0.05,
) -> pd.DataFrame:
    """mAP per group with permutation p-value and BH q-value (see module docstring).

    Rows without positives or AP are dropped; `n_positives` is the mean positives per query.
    """
    from statsmodels.stats.multitest import multipletests

    cols = [group_col] if isinstance(group_col, str) else list(group_col)
    t = ap_table.loc[ap_table["average_precision"].notna() & (ap_table["n_pos_pairs"] > 0)]
    confs, conf_ix = np.unique(t[["n_pos_pairs", "n_total_pairs"]].to_numpy(np.int64), axis=0, return_inverse=True)
    nulls = [_config_null(int(k), int(n), null_size, seed) for k, n in confs]
    work = t[cols].assign(_ap=t["average_precision"].to_numpy(), _k=t["n_pos_pairs"].to_numpy(), _c=conf_ix.ravel())
    grouped = work.groupby(cols, sort=True, observed=True)
    out = grouped.agg(mean_average_precision=("_ap", "mean"), n_queries=("_ap", "size"), n_positives=("_k", "mean"))
    # Groups with the same multiset of configurations share one null mAP distribution: compute it once.
    sig_id, signatures = pd.factorize(grouped["_c"].agg(lambda c: tuple(sorted(c))))
    observed = out["mean_average_precision"].to_numpy()
    p = np.empty(len(out))
    for j, sig in enumerate(signatures):
        members = np.flatnonzero(sig_id == j)
        confs_in, weight = np.unique(sig, return_counts=True)
        null_map = np.zeros(null_size)
        for c, w in zip(confs_in, weight):  # one accumulator, not one array per query
            null_map += w * nulls[c]
        null_map = np.sort(null_map / len(sig))
        exceed = null_size - np.searchsorted(null_map, observed[members] + TIE_TOL, side="right")
        p[members] = (exceed + 1) / (null_size + 1)
    out = out.reset_index()
    out.insert(len(cols) + 1, "p_value", p)
    out.insert(len(cols) + 2, "corrected_p_value", multipletests(p, method="fdr_bh")[1] if len(p) else p)
    out.insert(len(cols) + 3, "below_p", out["p_value"] < threshold)
    out.insert(len(cols) + 4, "below_corrected_p", out["corrected_p_value"] < threshold)
    return out


def fraction_retrieved(map_table: pd.DataFrame, threshold: float = 0.05) -> float:
    """Share of groups (perturbations) with BH q-value < threshold."""
    return float((map_table["corrected_p_value"] < threshold).mean()) if len(map_table) else float("nan")


def _labels(column: pd.Series, sep: str) -> list[list[str]]:
    """Multilabel cells: 'a|b' strings or list-likes; NaN/empty means no label."""
    def parse(v: object) -> list[str]:
        if isinstance(v, str):
            return [x for x in v.split(sep) if x]
        return [] if v is None or (np.isscalar(v) and pd.isna(v)) else [str(x) for x in v]
    return [parse(v) for v in column]


def _incidence(labels: list[list[str]], vocab: dict[str, int]) -> sparse.csr_matrix:
    rows = np.repeat(np.arange(len(labels)), [len(x) for x in labels])
    cols = np.array([vocab[x] for xs in labels for x in xs], dtype=np.int64)
    return sparse.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(len(labels), len(vocab)))


def retrieval_ap(
    profiles: pd.DataFrame,
    features: list[str],
    *,
    query_mask: np.ndarray | pd.Series | None = None,
    candidates: pd.DataFrame | None = None,
    pos_same: Sequence[str] = (),
    pos_diff: Sequence[str] = (),
    neg_same: Sequence[str] = (),
    neg_diff: Sequence[str] = (),
    neg_mask: np.ndarray | pd.Series | None = None,
    multilabel: str | None = None,
    multilabel_mode: Literal["any", "per_label"] = "any",
    sep: str = "|",
    abs_similarity: bool = False,
) -> pd.DataFrame:
    """AP of each query (rows of `profiles` selected by `query_mask`) against `candidates`
    (default: `profiles` itself, self excluded). Returns the query rows' metadata (non-feature
    columns, original index) plus average_precision, n_pos_pairs, n_total_pairs.

    Replicate retrieval: pos_same=[perturbation], neg_mask=negcon, neg_same=[plate].
    Multilabel: `multilabel` names a column present in both tables. "any": one row per query,
    positives share >= 1 label. "per_label" (copairs' multilabel): one row per (query, label), the
    column then holds that label; positives carry it, candidates sharing only other labels are
    left out. In both, negatives share no label with the query.
    """
    cand = profiles if candidates is None else candidates
    qmask = np.ones(len(profiles), bool) if query_mask is None else np.asarray(query_mask, bool)
    q_rows = np.flatnonzero(qmask)
    nmask = np.ones(len(cand), bool) if neg_mask is None else np.asarray(neg_mask, bool)
    rules = [(c, True, True) for c in pos_same] + [(c, True, False) for c in pos_diff]
    rules += [(c, False, True) for c in neg_same] + [(c, False, False) for c in neg_diff]
    codes = {}
    for col in {c for c, _, _ in rules}:
        if profiles[col].isna().any() or cand[col].isna().any():
            raise ValueError(f"{col}: missing values in a pair-rule column")
        both = pd.factorize(pd.concat([profiles[col], cand[col]], ignore_index=True))[0]
        codes[col] = (both[: len(profiles)][q_rows], both[len(profiles) :])
    xq = _unit_rows(profiles[features].to_numpy(np.float64)[q_rows])
    xc = _unit_rows(cand[features].to_numpy(np.float64))
    if multilabel is not None:
        ql, cl = _labels(profiles[multilabel].iloc[q_rows], sep), _labels(cand[multilabel], sep)
        vocab = {x: i for i, x in enumerate(sorted({x for xs in ql + cl for x in xs}))}
        aq, ac = _incidence(ql, vocab), _incidence(cl, vocab)
        ac_t = ac.T.tocsr()
    # Output rows: queries, or (query, label) pairs in per-label mode.
    if multilabel is not None and multilabel_mode == "per_label":
        rep = np.repeat(np.arange(len(q_rows)), [len(x) for x in ql])
        row_label = np.array([vocab[x] for xs in ql for x in xs], dtype=np.int64)
    elif multilabel_mode in ("any", "per_label"):
        rep, row_label = np.arange(len(q_rows)), None
    else:
        raise ValueError(f"multilabel_mode must be 'any' or 'per_label', not {multilabel_mode!r}")
    ap = np.full(len(rep), np.nan)
    n_pos, n_total = np.zeros(len(rep), np.int64), np.zeros(len(rep), np.int64)
    step = max(1, BLOCK_ELEMENTS // max(1, len(cand)))
    for s in range(0, len(rep), step):
        r = rep[s : s + step]  # query positions (into q_rows) of this block's output rows
        sim = xq[r] @ xc.T
        if abs_similarity:
            np.abs(sim, out=sim)
        pos = np.ones(sim.shape, bool)
        neg = np.broadcast_to(nmask, sim.shape).copy()
        for col, is_pos, same in rules:
            qc, cc = codes[col]
            eq = qc[r, None] == cc[None, :]
            target = pos if is_pos else neg
            target &= eq if same else ~eq
        if multilabel is not None:
            shared = (aq[r] @ ac.T).toarray() > 0
            pos &= shared if row_label is None else (ac_t[row_label[s : s + step]].toarray() > 0)
            neg &= ~shared
        if candidates is None:  # same table: a query is never its own candidate
            pos[np.arange(len(r)), q_rows[r]] = False
            neg[np.arange(len(r)), q_rows[r]] = False
        ap[s : s + step], n_pos[s : s + step], n_total[s : s + step] = average_precision(sim, pos, pos | neg)
    meta = profiles.iloc[q_rows[rep]].drop(columns=list(features))
    if row_label is not None:
        names = np.array(sorted(vocab, key=vocab.get), dtype=object)
        meta = meta.assign(**{multilabel: names[row_label]})
    return meta.assign(average_precision=ap, n_pos_pairs=n_pos, n_total_pairs=n_total)
