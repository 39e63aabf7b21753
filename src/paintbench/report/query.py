"""Target look-up on a finished run: which genes look like a compound, which compounds look like a gene.

`paintbench query --compound NAME` ranks the genetic perturbations (CRISPR and ORF consensus profiles, per
cell type and time point) by |cosine| to the compound's consensus profile; `--gene SYMBOL` ranks compounds
(virtual screening). Consensus = median of the replicate wells (as in sister and compound-gene matching), on the
feature set's scored profiles; |cosine| because an ORF can mimic a compound's inhibition in reverse.

Pair p-value: the pair's |cosine| against every compound-gene pair of the same cell type, compound time point
and genetic modality/time point that is *not* an annotated target pair (the background of unrelated pairs):
p = (1 + #background >= s) / (1 + #background). q: Benjamini-Hochberg over the ranked list of one query in one
condition. The run's compound-gene matching mAP, p and q of each gene (its row of the per-gene table) are joined
when present. Positive controls count as treatments (the benchmark scores them); negative controls do not.
"""

from __future__ import annotations

import difflib
import glob
from pathlib import Path

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from paintbench.atomic import read_table
from paintbench.paths import RunPaths
from paintbench.retrieval import PERT, is_query, scorable_features
from paintbench.target_id import CONDITION_COLUMNS, GENETIC, Cosines, background_p_values, condition_pairs

OUTPUT_COLUMNS = [*CONDITION_COLUMNS, "rank", "Metadata_gene", "Metadata_broad_sample", "Metadata_pert_iname", "cosine", "abs_cosine",
                  "p_value", "q_value", "annotated_target"]


def _suggest(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=5, cutoff=0.6)
    spelled = {k.lower(): k for k in known}
    hint = f"; did you mean {', '.join(spelled[c] for c in close)}?" if close else f" ({len(known)} known)"
    return ValueError(f"unknown {kind} {name!r} in this run{hint}")


def _only_control(profiles: pd.DataFrame, columns: list[str], name: str) -> str | None:
    """The control type when `name` is in the run only as a negative control or empty well (never scored)."""
    controls = profiles[~is_query(profiles)]
    for column in columns:
        hit = controls[controls[column].astype(str).str.lower() == name.lower()]
        if not hit.empty:
            return str(hit["Metadata_control_type"].iloc[0])
    return None


def _resolve(profiles: pd.DataFrame, kind: str, name: str, modalities: tuple[str, ...], columns: list[str],
             answer: str, suggest_from: str) -> str:
    """The `answer` column's value of the treated perturbation whose `columns` match `name` (case-insensitive)."""
    treated = profiles[profiles["Metadata_modality"].isin(modalities) & is_query(profiles)]
    for column in columns:
        hit = treated[treated[column].astype(str).str.lower() == name.lower()]
        if not hit.empty:
            return str(hit[answer].iloc[0])
    control = _only_control(profiles[profiles["Metadata_modality"].isin(modalities)], columns, name)
    if control is not None:
        raise ValueError(f"{kind} {name!r} is in this run only as a control ({control}), which the benchmark does "
                         "not score; query a treated perturbation")
    raise _suggest(kind, name, sorted(set(treated[suggest_from].dropna().astype(str))))


def resolve_compound(profiles: pd.DataFrame, name: str) -> str:
    """A compound's broad_sample from its broad_sample or name (case-insensitive); unknown names suggest close ones."""
    return _resolve(profiles, "compound", name, ("compound",), [PERT, "Metadata_pert_iname"], PERT,
                    "Metadata_pert_iname")


def resolve_gene(profiles: pd.DataFrame, symbol: str) -> str:
    return _resolve(profiles, "gene", symbol, GENETIC, ["Metadata_gene"], "Metadata_gene", "Metadata_gene")


def _ranked(condition: dict, values: np.ndarray, cosines: Cosines, annotated_pairs: np.ndarray,
            partners: pd.DataFrame, annotated: np.ndarray) -> pd.DataFrame:
    """The partners of one query ranked by |cosine| (`values`), p against the condition's unannotated pairs."""
    abs_cos = np.abs(values)
    p = background_p_values(abs_cos, cosines, annotated_pairs)
    table = partners.assign(cosine=values, abs_cosine=abs_cos, p_value=p,
                            q_value=multipletests(p, method="fdr_bh")[1], annotated_target=annotated, **condition)
    table = table.sort_values(["abs_cosine", "annotated_target"], ascending=[False, False]).reset_index(drop=True)
    return table.assign(rank=np.arange(1, len(table) + 1))


def query(profiles: pd.DataFrame, compound: str | None = None, gene: str | None = None) -> tuple[str, pd.DataFrame]:
    """(resolved name, ranked partners) for exactly one of compound / gene."""
    if (compound is None) == (gene is None):
        raise ValueError("give exactly one of --compound or --gene")
    features = scorable_features(profiles)
    name = resolve_compound(profiles, compound) if compound is not None else resolve_gene(profiles, gene)
    parts = []
    for condition, comp_table, gene_table, cosine, annotated in condition_pairs(profiles, features):
        if compound is not None:
            rows = np.flatnonzero(comp_table[PERT].to_numpy() == name)
            if rows.size:
                partners = gene_table[["Metadata_gene"]].assign(
                    Metadata_broad_sample=name, Metadata_pert_iname=comp_table["Metadata_pert_iname"].iloc[rows[0]])
                values = next(cosine.row_blocks(rows[:1]))[1][0]
                parts.append(_ranked(condition, values, cosine, annotated, partners, annotated[rows[0]]))
        else:
            cols = np.flatnonzero(gene_table["Metadata_gene"].to_numpy() == name)
            if cols.size:
                partners = comp_table[[PERT, "Metadata_pert_iname"]].assign(Metadata_gene=name)
                # from the rows, as the background is: the gene's own unannotated pairs then count exactly
                values = np.concatenate([block[:, cols[0]] for _, block in cosine.row_blocks()])
                parts.append(_ranked(condition, values, cosine, annotated, partners, annotated[:, cols[0]]))
    if not parts:
        kind = "compound" if compound is not None else "gene"
        raise ValueError(f"{kind} {name!r} has no {'genetic' if compound else 'compound'} perturbations of the same "
                         "cell type in this run to compare with")
    return name, pd.concat(parts, ignore_index=True)[OUTPUT_COLUMNS]


def with_matching_scores(ranked: pd.DataFrame, matching: pd.DataFrame | None) -> pd.DataFrame:
    """Join the run's per-gene compound-gene matching mAP / p / q (per gene and matched condition)."""
    if matching is None or matching.empty:
        return ranked
    keys = matching.rename(columns={"Metadata_timepoint": "compound_timepoint", "Metadata_plate_group": "compound_plate_group",
                                    "Metadata_matched_timepoint": "matched_timepoint",
                                    "Metadata_matched_plate_group": "matched_plate_group",
                                    "mean_average_precision": "gene_matching_map",
                                    "p_value": "gene_matching_p", "corrected_p_value": "gene_matching_q"})
    columns = [c for c in CONDITION_COLUMNS if c in keys] + ["Metadata_gene"]
    scores = keys[columns + ["gene_matching_map", "gene_matching_p", "gene_matching_q"]]
    return ranked.merge(scores, on=columns, how="left")


def headline_set(results_dir: str | Path, feature_set: str) -> str:
    """A profile set FS/CHAIN as given; a bare feature set -> its headline chain, as the run's summary.tsv names
    it (else its only chain)."""
    if "/" in feature_set:
        return feature_set
    paths = RunPaths(str(results_dir))
    summary_path = Path(paths.summary())
    if summary_path.exists():
        summary = read_table(summary_path)
        heads = summary.loc[(summary["feature_set"] == feature_set) & summary["headline"].astype(str).eq("True"),
                            "profile_set"].dropna()
        if len(heads):
            return str(heads.iloc[0])
    # A chain's table has its steps record beside it; the plates' well profiles in the same folder do not.
    chains = sorted(Path(p).name.removesuffix(".steps.tsv") for p in glob.glob(paths.chain_steps(f"{feature_set}/*")))
    if len(chains) == 1:
        return f"{feature_set}/{chains[0]}"
    raise FileNotFoundError(f"feature set {feature_set!r}: name one of its chains as {feature_set}/CHAIN "
                            f"(this run has: {', '.join(chains) or 'none'})")


def load_run(results_dir: str | Path, feature_set: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(scored profiles, compound-gene matching results or None) of one feature set (its headline chain) or
    profile set FS/CHAIN of a finished run (a user's look-up in a results folder, as paintbench.paths lays it out;
    matching is optional: a run may have stopped before it)."""
    paths = RunPaths(str(results_dir))
    name = headline_set(results_dir, feature_set)
    profiles_path = Path(paths.scored(name))
    if not profiles_path.exists():
        available = sorted(f"{Path(p).parent.name}/{Path(p).name.removesuffix('.steps.tsv')}"
                           for p in glob.glob(paths.chain_steps("*/*")))
        raise FileNotFoundError(f"{profiles_path}: no scored profiles for {name!r} "
                                f"(this run has: {', '.join(available) or 'none'})")
    matching_path = Path(paths.retrieval(name, "compound_gene_matching"))
    matching = read_table(matching_path) if matching_path.exists() else None
    return read_table(profiles_path), matching


def query_figure(ranked: pd.DataFrame, kind: str, label: str, feature_set: str, stem: Path, top: int = 10) -> list[Path]:
    """Top partners per condition as horizontal |cosine| bars; annotated targets highlighted, q in the labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paintbench.report.figures import save_figure

    groups = list(ranked.groupby(CONDITION_COLUMNS, sort=True))
    height = max(2.5, 0.32 * min(top, max(len(g) for _, g in groups)) + 1.2)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 * len(groups), height), squeeze=False)
    partner = "Metadata_gene" if kind == "compound" else "Metadata_pert_iname"
    for ax, ((cell, ctime, _, modality, gtime, _), group) in zip(axes[0], groups):
        shown = group.nsmallest(top, "rank").iloc[::-1]
        colours = ["#D55E00" if hit else "#999999" for hit in shown["annotated_target"]]
        ax.barh(range(len(shown)), shown["abs_cosine"], color=colours)
        ax.set_yticks(range(len(shown)),
                      [f"{name}  (q {q:.2g})" for name, q in zip(shown[partner].astype(str), shown["q_value"])], fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("|cosine| to the query's consensus profile")
        ax.set_title(f"{cell}: compound {ctime} h vs {modality} {gtime} h", fontsize=10)
    fig.suptitle(f"{label} ({feature_set}): orange = annotated target", fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(stem))
