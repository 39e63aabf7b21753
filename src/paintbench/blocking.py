"""Which candidates each query can rank, found from the pair rules before any similarity is computed.

Every positive of a query shares its `pos_same` columns (or, with labels, one of its labels); every negative is a
`neg_mask` candidate that shares its `neg_same` columns and differs in its `neg_diff` columns. So a query can only
ever rank two lists: its P list (the candidates with its positive key) and the N list of its negative group (the
masked candidates with its negative key). Every other candidate is neither positive nor negative, and its
similarity is never needed. N lists are shared by all the queries of a group (a plate, in replicate retrieval), so
their similarities are one matrix product per group; P lists are short and per query. Replicate retrieval then
costs queries x (replicates + the plate's controls) x features, not queries x wells x features.

A neg_diff column blocks too when it has few values (modality: compounds against genes). Without any positive
rule (no pos_same, no labels) positives can be anywhere: one group whose N list is every candidate, which is the
whole similarity matrix, computed in row blocks as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SMALL_GROUPS = 16  # a neg_diff column with at most this many distinct values also blocks the negatives


@dataclass(frozen=True)
class Lists:
    """Variable-length lists of candidate positions: list i is indices[indptr[i]:indptr[i + 1]]."""

    indptr: np.ndarray
    indices: np.ndarray

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.indptr[rows + 1] - self.indptr[rows]

    def padded(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), longest) positions of the given lists, -1 after each list's end."""
        lengths = self.lengths(rows)
        width = int(lengths.max(initial=0))
        out = np.full((len(rows), width), -1, dtype=np.int64)
        if width:
            col = np.arange(width)
            inside = col < lengths[:, None]
            out[inside] = self.indices[(self.indptr[rows][:, None] + col)[inside]]
        return out


def ranges(source: np.ndarray, start: np.ndarray, end: np.ndarray) -> Lists:
    """Lists made of slices [start, end) of `source`, one per row."""
    lengths = (end - start).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(indptr[-1]) - np.repeat(indptr[:-1], lengths)
    return Lists(indptr, source[np.repeat(start, lengths) + within].astype(np.int64))


def same_key_lists(query_key: np.ndarray, cand_key: np.ndarray) -> Lists:
    """For each query, the candidates whose key equals its own."""
    order = np.argsort(cand_key, kind="stable")
    ordered = cand_key[order]
    return ranges(order, np.searchsorted(ordered, query_key, "left"), np.searchsorted(ordered, query_key, "right"))


def joint_key(query_codes: list[np.ndarray], cand_codes: list[np.ndarray], n_query: int,
              n_cand: int) -> tuple[np.ndarray, np.ndarray]:
    """One integer per row for a tuple of code columns, equal across the two tables exactly when every code is
    (all zeros for no column)."""
    n = n_query
    key = np.zeros(n_query + n_cand, dtype=np.int64)
    for q, c in zip(query_codes, cand_codes):
        both = np.concatenate([q, c]).astype(np.int64)
        key = pd.factorize(key * (int(both.max(initial=0)) + 1) + both)[0].astype(np.int64)
    return key[:n], key[n:]


@dataclass(frozen=True)
class NegativeGroups:
    """The queries' negative groups: `of_row[i]` is output row i's group; group g's N list is `members(g)`."""

    of_row: np.ndarray
    same_key: np.ndarray  # per group, its neg_same key (-1: none)
    diff_codes: np.ndarray  # (groups, small neg_diff columns) codes the group's negatives must differ from
    cand_same: np.ndarray  # per candidate, its neg_same key
    cand_diff: np.ndarray  # (candidates, small neg_diff columns)
    mask: np.ndarray  # per candidate: may it be a negative at all (neg_mask; everything without a positive rule)
    by_same: Lists  # per group, the masked candidates with its neg_same key

    def members(self, g: int) -> np.ndarray:
        pool = self.by_same.indices[self.by_same.indptr[g] : self.by_same.indptr[g + 1]]
        if self.cand_diff.shape[1]:
            pool = pool[(self.cand_diff[pool] != self.diff_codes[g]).all(axis=1)]
        return pool

    def contains(self, g: int, idx: np.ndarray) -> np.ndarray:
        """Whether each position of idx (-1 = none) is in group g's N list."""
        safe = np.where(idx >= 0, idx, 0)
        inside = (idx >= 0) & self.mask[safe] & (self.cand_same[safe] == self.same_key[g])
        for j in range(self.cand_diff.shape[1]):
            inside &= self.cand_diff[safe, j] != self.diff_codes[g, j]
        return inside


def negative_groups(row_query: np.ndarray, n_query: int, neg_mask: np.ndarray, same_codes: list[tuple[np.ndarray, np.ndarray]],
                    diff_codes: list[tuple[np.ndarray, np.ndarray]], everything: bool) -> NegativeGroups:
    """Groups of output rows (row_query[i]: the query of output row i) by their negative key: the neg_same codes
    and the codes of the neg_diff columns with few values. `everything`: no positive rule, so one group whose N
    list is every candidate."""
    n_cand = len(neg_mask)
    if everything:
        return NegativeGroups(np.zeros(len(row_query), np.int64), np.zeros(1, np.int64), np.zeros((1, 0), np.int64),
                              np.zeros(n_cand, np.int64), np.zeros((n_cand, 0), np.int64), np.ones(n_cand, bool),
                              Lists(np.array([0, n_cand]), np.arange(n_cand)))
    small = [(q, c) for q, c in diff_codes if len(np.unique(c)) <= SMALL_GROUPS]
    q_same, c_same = joint_key([q for q, _ in same_codes], [c for _, c in same_codes], n_query, n_cand)
    q_diff = np.stack([q for q, _ in small], axis=1) if small else np.zeros((len(q_same), 0), np.int64)
    c_diff = np.stack([c for _, c in small], axis=1) if small else np.zeros((n_cand, 0), np.int64)
    q_group = pd.factorize(pd.MultiIndex.from_arrays([q_same, *q_diff.T]) if small else q_same)[0]
    first = np.unique(q_group, return_index=True)[1]
    group_same, group_diff = q_same[first], q_diff[first]
    masked = np.flatnonzero(neg_mask)
    by_same = same_key_lists(group_same, c_same[masked])
    by_same = Lists(by_same.indptr, masked[by_same.indices])
    return NegativeGroups(q_group[row_query].astype(np.int64), group_same, group_diff, c_same, c_diff,
                          np.asarray(neg_mask, bool), by_same)


def chunks(rows: np.ndarray, widths: np.ndarray, shared: int, budget: int, features: int) -> list[np.ndarray]:
    """`rows` (sorted by their P-list width, ascending) cut so that each chunk's rows x (its widest P list + the
    group's N list) stays within `budget` similarities, and its gathered P profiles within 4 x budget values."""
    out, i = [], 0

    def fits(take: int) -> bool:
        widest = int(widths[min(i + take, len(rows)) - 1])
        return take * (shared + widest) <= budget and take * widest * features <= 4 * budget

    while i < len(rows):
        take = max(1, budget // max(1, shared + int(widths[i])))
        while take > 1 and not fits(take):
            take //= 2
        out.append(rows[i : i + take])
        i += take
    return out
