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

from paintbench import blocking

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
    x /= norm[:, None].astype(x.dtype)
    return x


def unit_rows(x: np.ndarray) -> np.ndarray:
    """A float64 copy of `x` with every row scaled to length 1 (a zero or NaN row raises)."""
    return _unit_rows(np.array(x, dtype=np.float64))


def cosine_similarity(a: np.ndarray, b: np.ndarray, abs_similarity: bool = False) -> np.ndarray:
    """Cosine similarity of every row of `a` with every row of `b` (small inputs; retrieval_ap blocks)."""
    sim = unit_rows(a) @ unit_rows(b).T
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


def _padded_labels(incidence: sparse.csr_matrix) -> np.ndarray:
    """(rows, most labels of a row) label numbers, -1 after a row's last."""
    return blocking.Lists(incidence.indptr, incidence.indices).padded(np.arange(incidence.shape[0]))


def _carries(cand_labels: np.ndarray, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Whether candidate idx[b, c] (-1: none) carries any label of labels[b] ((B, L), -1 padded)."""
    held = cand_labels[np.where(idx >= 0, idx, 0)]  # (B, C, Lc)
    out = np.zeros(idx.shape, bool)
    for j in range(labels.shape[1]):
        want = labels[:, j, None, None]
        out |= ((held == want) & (want >= 0)).any(axis=2)
    return out & (idx >= 0)


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
    dtype: type = np.float64,
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

    Only the candidates a query can rank are compared with it (paintbench.blocking), in blocks of at most
    BLOCK_ELEMENTS similarities: nothing holds a queries x candidates matrix. `dtype=np.float32` halves the memory of
    the profiles; similarities then differ from float64's by ~1e-7, which moves a rank only where two candidates'
    float32 rank keys were within that of each other.
    """
    if multilabel_mode not in ("any", "per_label"):
        raise ValueError(f"multilabel_mode must be 'any' or 'per_label', not {multilabel_mode!r}")
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
    xc = _unit_rows(cand[features].to_numpy(dtype, copy=True))
    if candidates is None:  # the queries are rows of the candidates' array: no second copy
        xq, q_pos = xc, q_rows
    else:
        xq, q_pos = _unit_rows(profiles[features].to_numpy(dtype, copy=True)[q_rows]), np.arange(len(q_rows))
    labels = _label_sets(profiles, cand, q_rows, multilabel, sep) if multilabel is not None else None
    if labels is not None and multilabel_mode == "per_label":  # output rows: (query, label) pairs
        rep = np.repeat(np.arange(len(q_rows)), [len(x) for x in labels["ql"]])
        row_label = np.array([labels["vocab"][x] for xs in labels["ql"] for x in xs], dtype=np.int64)
    else:
        rep, row_label = np.arange(len(q_rows)), None
    positives, p_of_row = _positive_lists(codes, pos_same, labels, rep, row_label, len(q_rows), len(cand))
    groups = blocking.negative_groups(rep, len(q_rows), nmask, [codes[c] for c in neg_same],
                                      [codes[c] for c in neg_diff], everything=positives is None)
    widths = positives.lengths(p_of_row) if positives is not None else np.zeros(len(rep), np.int64)
    order = np.lexsort((widths, groups.of_row))
    cuts = np.flatnonzero(np.diff(groups.of_row[order])) + 1
    ap = np.full(len(rep), np.nan)
    n_pos, n_total = np.zeros(len(rep), np.int64), np.zeros(len(rep), np.int64)
    for rows in np.split(order, cuts) if len(order) else []:
        g = int(groups.of_row[rows[0]])
        members = groups.members(g)
        xn = xc if len(members) == len(xc) else xc[members]
        group_labels = _group_labels(labels, members) if labels is not None else None
        for out in blocking.chunks(rows, widths[rows], len(members), BLOCK_ELEMENTS, len(features)):
            r = rep[out]
            x = xq[q_pos[r]]
            near = positives.padded(p_of_row[out]) if positives is not None else np.zeros((len(out), 0), np.int64)
            near[groups.contains(g, near)] = -1  # in the group's N list already
            gathered = xc[np.where(near >= 0, near, 0)]
            sim = np.concatenate([np.einsum("bf,bcf->bc", x, gathered), x @ xn.T], axis=1)
            if abs_similarity:
                np.abs(sim, out=sim)
            idx = np.concatenate([near, np.broadcast_to(members, (len(out), len(members)))], axis=1)
            pos, neg = _pair_rules(idx, r, codes, rules, nmask)
            if labels is not None:
                shared, carry = _label_rules(labels, group_labels, near, r, None if row_label is None else row_label[out])
                pos &= shared if carry is None else carry
                if not paper_code_negatives:
                    neg &= ~shared
            if candidates is None:  # same table: a query is never its own candidate
                itself = idx == q_rows[r][:, None]
                pos &= ~itself
                neg &= ~itself
            twins = neg if paper_code_negatives else None
            ap[out], n_pos[out], n_total[out] = average_precision(sim, pos, pos | neg, twins)
    meta = profiles.iloc[q_rows[rep]].drop(columns=list(features))
    if row_label is not None:
        names = np.array(sorted(labels["vocab"], key=labels["vocab"].get), dtype=object)
        meta = meta.assign(**{multilabel: names[row_label]})
    return meta.assign(average_precision=ap, n_pos_pairs=n_pos, n_total_pairs=n_total)


def _label_sets(profiles: pd.DataFrame, cand: pd.DataFrame, q_rows: np.ndarray, column: str, sep: str) -> dict:
    ql, cl = _labels(profiles[column].iloc[q_rows], sep), _labels(cand[column], sep)
    vocab = {x: i for i, x in enumerate(sorted({x for xs in ql + cl for x in xs}))}
    aq, ac = _incidence(ql, vocab), _incidence(cl, vocab)
    return {"ql": ql, "vocab": vocab, "aq": aq, "ac": ac, "q_pad": _padded_labels(aq), "c_pad": _padded_labels(ac)}


def _positive_lists(codes: dict, pos_same: Sequence[str], labels: dict | None, rep: np.ndarray,
                    row_label: np.ndarray | None, n_query: int, n_cand: int) -> tuple[blocking.Lists | None, np.ndarray]:
    """Each output row's P list (a superset of its positives) and which list that is: the candidates sharing its
    pos_same key, else those carrying its label (per_label) or sharing one (any); None without a positive rule."""
    if pos_same:
        q_key, c_key = blocking.joint_key([codes[c][0] for c in pos_same], [codes[c][1] for c in pos_same],
                                          n_query, n_cand)
        return blocking.same_key_lists(q_key, c_key), rep
    if labels is None:
        return None, rep
    if row_label is not None:
        by_label = labels["ac"].T.tocsr()
        lists = blocking.ranges(by_label.indices, by_label.indptr[row_label], by_label.indptr[row_label + 1])
        return lists, np.arange(len(rep))
    sharing = (labels["aq"] @ labels["ac"].T).tocsr()
    return blocking.Lists(sharing.indptr.astype(np.int64), sharing.indices.astype(np.int64)), rep


def _group_labels(labels: dict, members: np.ndarray) -> dict:
    ac = labels["ac"][members]
    return {"ac": ac, "by_label": ac.T.tocsr()}


def _pair_rules(idx: np.ndarray, r: np.ndarray, codes: dict, rules: list, nmask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative) of each (query r[b], candidate idx[b, c]) pair by the column rules (-1: no candidate)."""
    valid = idx >= 0
    safe = np.where(valid, idx, 0)
    pos, neg = valid.copy(), valid & nmask[safe]
    for col, is_pos, same in rules:
        qc, cc = codes[col]
        eq = qc[r][:, None] == cc[safe]
        target = pos if is_pos else neg
        target &= eq if same else ~eq
    return pos, neg


def _label_rules(labels: dict, group: dict, near: np.ndarray, r: np.ndarray,
                 row_label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(shares a label with the query, carries the row's label (per_label only)) for the chunk's P part (padded
    labels) and its group's N part (sparse products)."""
    shared = np.concatenate([_carries(labels["c_pad"], near, labels["q_pad"][r]),
                             (labels["aq"][r] @ group["ac"].T).toarray() > 0], axis=1)
    if row_label is None:
        return shared, None
    carry = np.concatenate([_carries(labels["c_pad"], near, row_label[:, None]),
                            group["by_label"][row_label].toarray() > 0], axis=1)
    return shared, carry
