"""Today's engine before candidate blocking (paintbench 0.2's metrics.retrieval_ap, every query against every
candidate of the table in row blocks), kept verbatim as the reference the blocked engine must equal to 1e-12
(tests/test_blocking.py). The AP kernel (average_precision) is shared: it did not change."""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

from paintbench.metrics import BLOCK_ELEMENTS, average_precision


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1)
    if not np.all(norm > 0):
        raise ValueError(f"{int(np.sum(~(norm > 0)))} profile(s) have zero or NaN norm: cosine undefined")
    return x / norm[:, None]


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


def dense_retrieval_ap(
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
