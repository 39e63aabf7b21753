"""Average precision for the three CPJUMP1 tasks: one vectorized engine for every pair rule.
Significance (nulls, p-values, protocols, q-values) lives in paintbench.significance.

Definitions follow copairs 0.5.5 (the reference; tests compare against it) so that APs agree:
- Rank key: copairs stores similarities as float32 and sorts by `1 - sim` in float32, so two
  similarities equal after that rounding tie. We rank by the same key (`rank_key`).
- Ties: copairs lists positives before negatives and stable-sorts, so a positive ranks ahead of every
  negative with an equal key. Hence the i-th positive (by key) sits at rank i + #(negatives with a
  strictly smaller key), and AP = mean_i i / rank_i. (Exact similarity ties between a positive and a
  negative need identical profiles; continuous features practically never produce them.)
Pair rules (a candidate that is both positive and negative is positive; self is never a candidate):
positives share every `pos_same` column (and >= 1 label) and differ in every `pos_diff` column;
negatives are `neg_mask` candidates sharing every `neg_same` column, differing in every `neg_diff`
column and sharing no label.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

BLOCK_ELEMENTS = 4_000_000  # similarity block (query rows x candidates): 32 MB of float64
# The CPJUMP1 paper's compound-gene lists (copairs@880f22a) held every true match twice, as a positive and as a
# negative with the same similarity, ordered by numpy's unstable argsort: the negative twin first in lists of up to
# 16 entries (insertion sort), after its positive in long lists with one positive (measured with numpy 1.23 and
# 1.26); with several positives in a long list the order varied (mean AP of a perfect list ~0.77 for two). We place
# the twin first up to 16 entries and after its positive beyond: exact for short lists and single positives.
PAPER_CODE_SHORT_LIST = 16
COUNTING_MAX_POS = 48  # up to this many positives per query, counting beats sorting whole rows


def rank_key(sim: np.ndarray) -> np.ndarray:
    """copairs' sort key, ascending = most similar first: float32(1) - float32(sim)."""
    key = np.array(sim, dtype=np.float32)  # a float32 copy: the subtraction then needs no temporary
    return np.subtract(np.float32(1), key, out=key)


def _ap_counting(key: np.ndarray, positive: np.ndarray, negative: np.ndarray, n_pos: np.ndarray,
                 ahead: np.ndarray | int = 0) -> np.ndarray:
    """AP from ranks of the few positives: O(rows x candidates x max positives), no full sort. `ahead` adds that
    many list entries in front of every positive of a row (its own negative twin, see PAPER_CODE_SHORT_LIST)."""
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
    better += np.asarray(ahead).reshape(-1, 1)
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
    sim: np.ndarray, positive: np.ndarray, valid: np.ndarray, negative: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP per query row over its valid candidates; returns (ap, n_pos, n_total). AP is NaN without positives.

    `negative` given (the paper code's compound-gene lists): negatives may include positives, which then stand in
    the list twice, the negative twin tied with its positive (see PAPER_CODE_SHORT_LIST).
    """
    positive = np.asarray(positive, dtype=bool) & valid
    twins = negative is not None
    negative = np.asarray(valid, dtype=bool) & ~positive if negative is None else np.asarray(negative, bool)
    n_pos = positive.sum(axis=1)
    n_total = n_pos + negative.sum(axis=1) if twins else np.asarray(valid).sum(axis=1)
    ap = np.full(len(n_pos), np.nan)
    step = max(1, BLOCK_ELEMENTS // max(1, sim.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s in range(0, len(n_pos), step):
            b = slice(s, s + step)
            if n_pos[b].max(initial=0) == 0:
                continue
            if twins:  # the twin goes first in short lists, after its positive in long ones
                ahead = (n_total[b] <= PAPER_CODE_SHORT_LIST).astype(np.int64)
                ap[b] = _ap_counting(rank_key(sim[b]), positive[b], negative[b], n_pos[b], ahead)
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
    paper_code_negatives: bool = False,
) -> pd.DataFrame:
    """AP of each query (rows of `profiles` selected by `query_mask`) against `candidates`
    (default: `profiles` itself, self excluded). Returns the query rows' metadata (non-feature
    columns, original index) plus average_precision, n_pos_pairs, n_total_pairs.

    Replicate retrieval: pos_same=[perturbation], neg_mask=negcon, neg_same=[plate].
    Multilabel: `multilabel` names a column present in both tables. "any": one row per query,
    positives share >= 1 label. "per_label" (copairs' multilabel): one row per (query, label), the
    column then holds that label; positives carry it, candidates sharing only other labels are
    left out. In both, negatives share no label with the query, except with `paper_code_negatives`: then
    every candidate that meets the negative rules is a negative whatever its labels, true matches included (what
    the CPJUMP1 paper's compound-gene matching computed, see PAPER_CODE_SHORT_LIST).
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
            if not paper_code_negatives:
                neg &= ~shared
        if candidates is None:  # same table: a query is never its own candidate
            pos[np.arange(len(r)), q_rows[r]] = False
            neg[np.arange(len(r)), q_rows[r]] = False
        twins = neg if paper_code_negatives else None
        ap[s : s + step], n_pos[s : s + step], n_total[s : s + step] = average_precision(sim, pos, pos | neg, twins)
    meta = profiles.iloc[q_rows[rep]].drop(columns=list(features))
    if row_label is not None:
        names = np.array(sorted(vocab, key=vocab.get), dtype=object)
        meta = meta.assign(**{multilabel: names[row_label]})
    return meta.assign(average_precision=ap, n_pos_pairs=n_pos, n_total_pairs=n_total)
