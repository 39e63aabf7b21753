"""From benchmark to biology: how good each feature set's shortlists are, and which target a compound follows.

Target identification: for every compound with annotated targets among the run's perturbed genes, the genes are
ranked by |cosine| of consensus profiles, exactly as `paintbench query --compound` ranks them (per cell type,
compound time point and plate group x genetic modality, time point and plate group). Virtual screening is the
transpose: for every gene that some compound is annotated to, the compounds are ranked.

Per query: the rank of its best annotated partner, and for k in (1, 5, 10) hits@k, recall@k = hits / annotated
and precision@k = hits / min(k, candidates) (a list shorter than k cannot hold k answers). Ties take the worst rank
they share: a partner tied with an unannotated one is never counted as found by luck of the order.

Random expectation: a shortlist drawn uniformly at random holds hits ~ Hypergeometric(candidates, annotated,
min(k, candidates)), so E[recall@k] = min(k, G) / G, E[precision@k] = T / G and E[best rank] = (G + 1) / (T + 1)
for G candidates and T annotated. Per condition the mean over queries is compared with the same mean under
random shortlists drawn independently for every query (the exact distribution of a permutation of the candidates'
labels): p = (1 + #random >= observed) / (1 + N); for the best rank, #random <= observed.

Polypharmacology: for every compound with two or more annotated targets among the genes of a condition, each
target's cosine, rank and pair p-value (`background_p_values`: against every unannotated compound-gene pair of
the condition, the same p `paintbench query` and the report's look-up show), q by Benjamini-Hochberg over that compound's annotated targets (the hypotheses asked about), and
a call: the one target whose q < alpha ("follows"), "several" when more pass, "none" when none does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from paintbench.metrics import unit_rows
from paintbench.registry import SHORTLIST_TASKS
from paintbench.retrieval import PERT, consensus, is_query, with_condition_columns

KS = (1, 5, 10)
TASKS = SHORTLIST_TASKS
GENETIC = ("crispr", "orf")
# The condition of a compound x genetic comparison, as query.py and the pair tables name its columns.
CONDITION_COLUMNS = ["Metadata_cell_type", "compound_timepoint", "compound_plate_group", "Metadata_matched_modality",
                     "matched_timepoint", "matched_plate_group"]
UNITS = {"target_identification": "compound", "virtual_screening": "gene"}
# The summary's condition columns (compound side first), so these rows line up with compound-gene matching's.
CONDITION = ["Metadata_cell_type", "Metadata_modality", "Metadata_timepoint", "Metadata_plate_group",
             "Metadata_matched_modality", "Metadata_matched_timepoint", "Metadata_matched_plate_group"]


KEEP_PAIRS = 20_000_000  # up to this many compound-gene pairs (160 MB) a condition's cosines are kept whole
BLOCK_PAIRS = 4_000_000  # otherwise they are computed this many (32 MB) at a time, where they are read


@dataclass(frozen=True)
class Cosines:
    """One condition's compound x gene cosines of consensus profiles. CPJUMP1's (~50,000 pairs) are kept whole;
    JUMP's (~10^9 pairs, 6.5 GB) are computed a block of compounds or genes at a time by whoever reads them."""

    compounds: np.ndarray  # unit-length consensus profiles
    genes: np.ndarray
    whole: np.ndarray | None

    @classmethod
    def of(cls, compounds: np.ndarray, genes: np.ndarray) -> "Cosines":
        c, g = unit_rows(compounds), unit_rows(genes)
        return cls(c, g, c @ g.T if len(c) * len(g) <= KEEP_PAIRS else None)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.compounds), len(self.genes)

    @property
    def size(self) -> int:
        return len(self.compounds) * len(self.genes)

    def row_blocks(self, rows: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(compound indices, their cosines with every gene), a block at a time; every compound by default."""
        yield from self._blocks(rows, self.compounds, self.genes, lambda r: self.whole[r])

    def column_blocks(self, columns: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(gene indices, their cosines with every compound: genes x compounds), a block at a time."""
        yield from self._blocks(columns, self.genes, self.compounds, lambda r: self.whole[:, r].T)

    def _blocks(self, rows, these: np.ndarray, others: np.ndarray, kept) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(len(these)) if rows is None else np.unique(rows)
        if self.whole is not None:
            if len(rows):
                yield rows, kept(rows)
            return
        # Fixed, aligned blocks: a pair's cosine comes from the same product whoever asks for it, so a query's own
        # unannotated pairs count exactly once in the background it is tested against.
        step = max(1, BLOCK_PAIRS // max(1, len(others)))
        keys = rows // step
        for chosen in np.split(rows, np.flatnonzero(np.diff(keys)) + 1) if len(rows) else []:
            start = chosen[0] // step * step
            yield chosen, (these[start:start + step] @ others.T)[chosen - start]

    def matrix(self) -> np.ndarray:
        return self.whole if self.whole is not None else self.compounds @ self.genes.T


def targets_of(target_list: object) -> set[str]:
    return set() if pd.isna(target_list) else {t for t in str(target_list).split("|") if t}


def condition_pairs(profiles: pd.DataFrame, features: list[str]):
    """Yield (condition dict, compound consensus, gene consensus, their Cosines, annotated-pair mask)."""
    profiles = with_condition_columns(profiles)
    treated = profiles[is_query(profiles)]
    compounds = treated[treated["Metadata_modality"] == "compound"]
    genetic = treated[treated["Metadata_modality"].isin(GENETIC) & treated["Metadata_gene"].notna()]
    for (cell, ctime, cgroup), comp in compounds.groupby(
            ["Metadata_cell_type", "Metadata_timepoint", "Metadata_plate_group"], sort=True):
        comp_table = consensus(comp, features, [PERT])
        for (modality, gtime, ggroup), gen in genetic[genetic["Metadata_cell_type"] == cell].groupby(
                ["Metadata_modality", "Metadata_timepoint", "Metadata_plate_group"], sort=True):
            gene_table = consensus(gen, features, ["Metadata_gene"])
            cosine = Cosines.of(comp_table[features].to_numpy(float), gene_table[features].to_numpy(float))
            annotated = annotated_pairs(comp_table["Metadata_target_list"], gene_table["Metadata_gene"])
            condition = dict(zip(CONDITION_COLUMNS, (cell, ctime, cgroup, modality, gtime, ggroup)))
            yield condition, comp_table, gene_table, cosine, annotated


def annotated_pairs(target_lists: pd.Series, genes: pd.Series) -> np.ndarray:
    """(compounds, genes) mask of the annotated compound-gene pairs, looked up per compound (not per pair: a
    full JUMP condition has ~10^9 pairs)."""
    column = {gene: j for j, gene in enumerate(genes)}
    annotated = np.zeros((len(target_lists), len(genes)), dtype=bool)
    for i, targets in enumerate(target_lists):
        annotated[i, [column[g] for g in targets_of(targets) if g in column]] = True
    return annotated


def background_p_values(scores: np.ndarray, cosine: Cosines, annotated: np.ndarray) -> np.ndarray:
    """(1 + unannotated |cosine| values >= each score) / (1 + their number), counted a block of rows at a time, so
    the ~10^9 background pairs of a JUMP-scale condition are never copied or sorted."""
    order = np.sort(scores)
    counts = np.zeros(len(order) + 1, dtype=np.int64)
    size = 0
    for rows, block in cosine.row_blocks():
        block = np.abs(block)[~annotated[rows]]
        counts += np.bincount(np.searchsorted(order, block, side="right"), minlength=len(order) + 1)
        size += block.size
    at_least = np.cumsum(counts[::-1])[::-1][1:]  # background values >= order[k]
    return (1.0 + at_least[np.searchsorted(order, scores, side="left")]) / (1.0 + size)


def candidate_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every candidate, highest score first; tied candidates all take the worst rank they share."""
    scores = np.asarray(scores, dtype=float)
    return len(scores) - np.searchsorted(np.sort(scores), scores, side="left")


@dataclass(frozen=True)
class Shortlist:
    """One query's ranked candidates: the annotated partners' ranks among n_candidates."""

    target_ranks: np.ndarray
    n_candidates: int

    def hits(self, k: int) -> int:
        return int((self.target_ranks <= k).sum())

    def recall(self, k: int) -> float:
        return self.hits(k) / len(self.target_ranks)

    def precision(self, k: int) -> float:
        return self.hits(k) / min(k, self.n_candidates)


def random_recall(n_candidates: int, k: int) -> float:
    return min(k, n_candidates) / n_candidates


def random_precision(n_candidates: int, n_annotated: int) -> float:
    return n_annotated / n_candidates


def random_best_rank(n_candidates: int, n_annotated: int) -> float:
    return (n_candidates + 1) / (n_annotated + 1)


def _random_hits(candidates: np.ndarray, annotated: np.ndarray, k: int, draws: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(queries, draws) hits@k of random shortlists."""
    shown = np.minimum(k, candidates)
    return np.stack([rng.hypergeometric(t, g - t, m, size=draws) for g, t, m in zip(candidates, annotated, shown)])


def _random_best_ranks(candidates: np.ndarray, annotated: np.ndarray, draws: int,
                       rng: np.random.Generator) -> np.ndarray:
    """(queries, draws) best ranks of random shortlists: P(best > r) = C(G - r, T) / C(G, T), sampled by its CDF."""
    rows = []
    for g, t in zip(candidates, annotated):
        r = np.arange(1, g + 1)
        # C(G - r, T) / C(G, T) = prod_{i<T} (G - r - i) / (G - i), zero once G - r < T.
        survival = np.prod([np.clip(g - r - i, 0, None) / (g - i) for i in range(t)], axis=0)
        rows.append(np.searchsorted(1.0 - survival, rng.random(draws), side="right") + 1)
    return np.stack(rows)


def condition_summary(lists: list[Shortlist], draws: int = 10_000, seed: int = 0) -> list[dict]:
    """Per k: mean recall / precision with their random expectation and p; best ranks against random."""
    rng = np.random.default_rng(seed)
    candidates = np.array([s.n_candidates for s in lists])
    annotated = np.array([len(s.target_ranks) for s in lists])
    best = np.array([s.target_ranks.min() for s in lists], dtype=float)
    random_best = _random_best_ranks(candidates, annotated, draws, rng).mean(axis=0)
    shared = {"n_queries": len(lists), "mean_best_rank": best.mean(), "median_best_rank": float(np.median(best)),
              "random_best_rank": float(np.mean([random_best_rank(g, t) for g, t in zip(candidates, annotated)])),
              "best_rank_p": (1 + (random_best <= best.mean()).sum()) / (1 + draws)}
    rows = []
    for k in KS:
        hits = _random_hits(candidates, annotated, k, draws, rng)
        recall = np.array([s.recall(k) for s in lists]).mean()
        precision = np.array([s.precision(k) for s in lists]).mean()
        null_recall = (hits / annotated[:, None]).mean(axis=0)
        null_precision = (hits / np.minimum(k, candidates)[:, None]).mean(axis=0)
        rows.append({"k": k, **shared, "recall_at_k": recall,
                     "random_recall_at_k": float(np.mean([random_recall(g, k) for g in candidates])),
                     "recall_p": (1 + (null_recall >= recall - 1e-12).sum()) / (1 + draws),
                     "precision_at_k": precision,
                     "random_precision_at_k": float(np.mean([random_precision(g, t) for g, t in zip(candidates, annotated)])),
                     "precision_p": (1 + (null_precision >= precision - 1e-12).sum()) / (1 + draws)})
    return rows


def _summary_condition(condition: dict) -> dict:
    """query.py's condition (compound_timepoint, ...) in the summary's column names."""
    return {"Metadata_cell_type": condition["Metadata_cell_type"], "Metadata_modality": "compound",
            "Metadata_timepoint": condition["compound_timepoint"],
            "Metadata_plate_group": condition["compound_plate_group"],
            "Metadata_matched_modality": condition["Metadata_matched_modality"],
            "Metadata_matched_timepoint": condition["matched_timepoint"],
            "Metadata_matched_plate_group": condition["matched_plate_group"]}


def _query_row(task: str, condition: dict, query: str, name: str, partners: np.ndarray, scores: np.ndarray,
               annotated: np.ndarray) -> tuple[dict, Shortlist]:
    ranks = candidate_ranks(scores)
    shortlist = Shortlist(ranks[annotated], len(scores))
    best = int(np.argmin(np.where(annotated, ranks, np.iinfo(np.int64).max)))
    row = {"task": task, **condition, "query": query, "query_name": name, "n_candidates": len(scores),
           "n_annotated": int(annotated.sum()), "annotated": "|".join(map(str, partners[annotated])),
           "best_partner": str(partners[best]), "best_rank": int(ranks[best]),
           "random_best_rank": random_best_rank(len(scores), int(annotated.sum()))}
    for k in KS:
        row |= {f"hits_at_{k}": shortlist.hits(k), f"recall_at_{k}": shortlist.recall(k),
                f"precision_at_{k}": shortlist.precision(k)}
    return row, shortlist


# One condition's (condition, compound consensus, gene consensus, their cosines, annotated-pair mask).
Comparison = tuple[dict, pd.DataFrame, pd.DataFrame, Cosines, np.ndarray]


def comparisons(profiles: pd.DataFrame, features: list[str]) -> list[Comparison]:
    """Consensus profiles and compound x gene cosines of every condition, computed once for the tables below."""
    return list(condition_pairs(profiles, features))


def shortlists(compared: list[Comparison], draws: int = 10_000,
               seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-condition summary, per-query table) of target identification and virtual screening."""
    queries, summaries = [], []
    for condition, compounds, genes, cosine, annotated in compared:
        place = _summary_condition(condition)
        gene_names = genes["Metadata_gene"].astype(str).to_numpy()
        lists: dict[str, list[Shortlist]] = {task: [] for task in TASKS}
        for rows, block in cosine.row_blocks(np.flatnonzero(annotated.any(axis=1))):
            for i, scores in zip(rows, np.abs(block)):
                row, shortlist = _query_row("target_identification", place, compounds[PERT].iloc[i],
                                            compounds["Metadata_pert_iname"].iloc[i], gene_names, scores, annotated[i])
                queries.append(row)
                lists["target_identification"].append(shortlist)
        compound_names = compounds["Metadata_pert_iname"].astype(str).to_numpy()
        for columns, block in cosine.column_blocks(np.flatnonzero(annotated.any(axis=0))):
            for j, scores in zip(columns, np.abs(block)):
                row, shortlist = _query_row("virtual_screening", place, gene_names[j], gene_names[j], compound_names,
                                            scores, annotated[:, j])
                queries.append(row)
                lists["virtual_screening"].append(shortlist)
        for task, found in lists.items():
            if found:
                summaries += [{"task": task, **place, **row} for row in condition_summary(found, draws, seed)]
    return pd.DataFrame(summaries, columns=SUMMARY_COLUMNS), pd.DataFrame(queries, columns=QUERY_COLUMNS)


SUMMARY_COLUMNS = ["task", *CONDITION, "k", "n_queries", "recall_at_k", "random_recall_at_k", "recall_p",
                   "precision_at_k", "random_precision_at_k", "precision_p", "mean_best_rank", "median_best_rank",
                   "random_best_rank", "best_rank_p"]
QUERY_COLUMNS = ["task", *CONDITION, "query", "query_name", "n_candidates", "n_annotated", "annotated", "best_partner",
                 "best_rank", "random_best_rank",
                 *[f"{m}_at_{k}" for k in KS for m in ("hits", "recall", "precision")]]
POLY_COLUMNS = ["Metadata_broad_sample", "Metadata_pert_iname", *CONDITION, "target", "cosine", "abs_cosine", "rank",
                "n_candidates", "p_value", "q_value", "passes", "call"]


PAIR_COLUMNS = [*CONDITION, "Metadata_broad_sample", "Metadata_pert_iname", "Metadata_target_list", "Metadata_gene",
                "cosine", "annotated"]


def similarity_pairs(compared: list[Comparison]) -> pd.DataFrame:
    """Every compound-gene pair of every condition with its consensus cosine: what the report's look-up ranks."""
    parts = []
    for condition, compounds, genes, cosine, annotated in compared:
        n_compounds, n_genes = cosine.shape
        part = compounds[[PERT, "Metadata_pert_iname", "Metadata_target_list"]].iloc[np.repeat(np.arange(n_compounds), n_genes)]
        part = part.reset_index(drop=True).assign(
            Metadata_gene=np.tile(genes["Metadata_gene"].astype(str).to_numpy(), n_compounds),
            cosine=cosine.matrix().ravel().astype(np.float32), annotated=annotated.ravel(), **_summary_condition(condition))
        parts.append(part[PAIR_COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PAIR_COLUMNS)


def polypharmacology(compared: list[Comparison], alpha: float = 0.05) -> pd.DataFrame:
    """One row per (compound with >= 2 annotated targets among a condition's genes, condition, target)."""
    rows = []
    for condition, compounds, genes, cosine, annotated in compared:
        place = _summary_condition(condition)
        gene_names = genes["Metadata_gene"].astype(str).to_numpy()
        several = np.flatnonzero(annotated.sum(axis=1) >= 2)
        found = []  # per multi-target compound: (row, its targets, their cosines, their ranks)
        for chosen, block in cosine.row_blocks(several):
            for i, values in zip(chosen, block):
                targets = np.flatnonzero(annotated[i])
                found.append((i, targets, values[targets], candidate_ranks(np.abs(values))[targets]))
        if not found:
            continue
        # every compound's targets against the condition's background in one pass
        p_all = background_p_values(np.abs(np.concatenate([values for *_, values, _ in found])), cosine, annotated)
        first = np.cumsum([0] + [len(targets) for _, targets, *_ in found])
        for n, (i, targets, values, ranks) in enumerate(found):
            p = p_all[first[n]:first[n + 1]]
            q = multipletests(p, method="fdr_bh")[1]
            passing = [gene_names[t] for t, passed in zip(targets, q < alpha) if passed]
            call = passing[0] if len(passing) == 1 else "several" if passing else "none"
            for t, value, rank, p_t, q_t in zip(targets, values, ranks, p, q):
                rows.append({PERT: compounds[PERT].iloc[i], "Metadata_pert_iname": compounds["Metadata_pert_iname"].iloc[i],
                             **place, "target": gene_names[t], "cosine": float(value), "abs_cosine": float(abs(value)),
                             "rank": int(rank), "n_candidates": len(genes), "p_value": float(p_t),
                             "q_value": float(q_t), "passes": bool(q_t < alpha), "call": call})
    return pd.DataFrame(rows, columns=POLY_COLUMNS)

