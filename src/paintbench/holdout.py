"""The split of perturbations for fine-tuning: a seeded share held out, grouped so that no label leaks across.

Fine-tuning (paintbench.vit.finetune) learns to tell the training side's perturbations apart; everything scored
afterwards is scored on the held-out side only. A label leaks when a held-out perturbation shares biology with a
training one, so perturbations are grouped first: a compound and each gene it targets, a CRISPR guide or an ORF and
its gene, are one group (connected components of that graph: two compounds sharing a target, and the guides and ORFs
of that target, always fall on the same side). Groups are then drawn at random (seeded) onto the held-out side until
it holds up to `fraction` of the perturbations (a group that would overshoot it stays on the training side: the
multi-target compounds of JUMP-Target join most of its genes into one group). Negative controls are no perturbation of either side: they are the reference
both sides are normalized to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from paintbench.metadata import NEGCON, target_genes

PERT = "Metadata_broad_sample"
SIDES = ("train", "heldout")
COLUMNS = [PERT, "Metadata_modality", "group", "side"]


class _Groups:
    """Union-find over perturbation and gene nodes."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def perturbation_genes(row: pd.Series) -> set[str]:
    """The genes a perturbation touches: a compound's targets, a guide's or an ORF's gene."""
    if row.get("Metadata_modality") == "compound":
        return target_genes(row.get("Metadata_target_list"))
    gene = row.get("Metadata_gene")
    return {str(gene)} if isinstance(gene, str) and gene else set()


def split_perturbations(annotation: pd.DataFrame, fraction: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """One row per perturbation (COLUMNS): its group and side. `annotation` holds wells or perturbations with
    Metadata_broad_sample, _modality, _control_type, _gene, _target_list (platemap columns)."""
    if not 0 < fraction < 1:
        raise ValueError(f"config key 'vit.finetune.heldout_fraction': {fraction} is not between 0 and 1")
    treated = annotation[(annotation["Metadata_control_type"] != NEGCON) & annotation[PERT].notna()]
    perturbations = treated.drop_duplicates(PERT).reset_index(drop=True)
    groups = _Groups()
    for _, row in perturbations.iterrows():
        node = f"p:{row[PERT]}"
        groups.find(node)
        for gene in perturbation_genes(row):
            groups.join(node, f"g:{gene}")
    roots = [groups.find(f"p:{p}") for p in perturbations[PERT]]
    members: dict[str, list[int]] = {}
    for i, root in enumerate(roots):
        members.setdefault(root, []).append(i)
    ordered = sorted(members.values(), key=lambda rows: min(perturbations.loc[rows, PERT]))  # stable, name-based
    order = np.random.default_rng(seed).permutation(len(ordered))
    side = np.array(["train"] * len(perturbations), dtype=object)
    group = np.zeros(len(perturbations), dtype=np.int64)
    held, want = 0, fraction * len(perturbations)
    for number, k in enumerate(order):  # a group that would overshoot the share stays on the training side
        rows = ordered[k]
        group[rows] = number
        if held + len(rows) <= want:
            side[rows] = "heldout"
            held += len(rows)
    if held == 0:  # every group is larger than the share: the smallest one is held out
        rows = min(ordered, key=len)
        side[rows] = "heldout"
    out = pd.DataFrame({PERT: perturbations[PERT], "Metadata_modality": perturbations["Metadata_modality"],
                        "group": group, "side": side})
    return out.sort_values(PERT).reset_index(drop=True)[COLUMNS]


def leaks(split: pd.DataFrame, annotation: pd.DataFrame) -> list[str]:
    """Genes touched by perturbations on both sides (empty for a valid split)."""
    table = annotation.drop_duplicates(PERT).merge(split[[PERT, "side"]], on=PERT)
    sides: dict[str, set[str]] = {}
    for _, row in table.iterrows():
        for gene in perturbation_genes(row):
            sides.setdefault(gene, set()).add(row["side"])
    return sorted(gene for gene, found in sides.items() if len(found) > 1)
