"""Planted phenotypes: the known answer of every synthetic plate.

Each gene of the genetic libraries gets a random unit direction over the morphology parameters
and a class (strong / weak / null). Its CRISPR guides move cells along that direction, its ORF
along the same or the opposite direction, and a compound along the (mixed) direction of up to two
of its targets. Controls and null perturbations have an effect of exactly 0, so they are drawn
from the same distribution as the negative controls.

Effects are shifts of a well's mean parameter, in units of the parameter's cell-to-cell SD.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from paintbench import metadata
from paintbench.metadata import MODALITIES, NEGCON, perturbation_library, target_genes


@dataclass(frozen=True)
class Parameter:
    """One morphological parameter of a cell: population mean, cell-to-cell SD, physical range."""

    name: str
    mean: float
    sd: float
    low: float
    high: float


# Intensities are counts above background at illumination 1; areas in px^2 (field_size 320).
PARAMETER_SPECS: tuple[Parameter, ...] = (
    Parameter("nucleus_area", 280.0, 45.0, 150.0, 480.0),  # ~19 px equivalent diameter
    Parameter("cell_area", 1150.0, 200.0, 500.0, 2400.0),
    Parameter("nucleus_eccentricity", 0.55, 0.12, 0.0, 0.9),
    Parameter("dna_intensity", 1800.0, 300.0, 400.0, 6000.0),
    Parameter("er_intensity", 700.0, 130.0, 80.0, 3000.0),
    Parameter("rna_intensity", 600.0, 110.0, 80.0, 3000.0),
    Parameter("agp_intensity", 800.0, 150.0, 80.0, 3000.0),
    Parameter("mito_intensity", 900.0, 170.0, 100.0, 4000.0),
    Parameter("texture_scale", 0.5, 0.15, 0.0, 1.0),  # 0 fine ... 1 coarse ER/RNA texture
    Parameter("mito_puncta", 28.0, 7.0, 3.0, 80.0),  # puncta per cell
    Parameter("golgi_compactness", 0.6, 0.12, 0.05, 1.0),  # 1 = tight bright blob
    Parameter("nucleoli", 3.0, 1.0, 0.0, 8.0),  # nucleoli per nucleus (rounded when drawn)
)
PARAMETERS: list[str] = [p.name for p in PARAMETER_SPECS]
EFFECT_COLUMNS: list[str] = [f"effect_{name}" for name in PARAMETERS]

# Norm of the effect vector (in cell SDs). A well mean of ~24 cells x a few sites has an SE of
# ~0.1 SD and the per-well nuisance ~0.2 SD: strong is obvious, weak is near the noise floor.
MAGNITUDE = {"strong": (1.5, 2.0), "weak": (0.4, 0.7)}
CLASS_ORDER = {"strong": 0, "weak": 1, "null": 2}
EMPTY = "empty"

# Tags that keep the random streams of different purposes apart (SeedSequence entropy).
TAG_GENE, TAG_OWN, TAG_MAGNITUDE, TAG_POSITION = 1, 2, 3, 4


def stable_ints(text: str) -> list[int]:
    """A string as non-negative ints, length-prefixed so ('AB', 1) and ('A', 66, 1) differ.

    Python's hash() is salted per process; this is the same on every run and machine.
    """
    data = text.encode("utf-8")
    return [len(data), *data]


def seeded_rng(seed: int, tag: int, *parts: int | str) -> np.random.Generator:
    """A generator determined by (seed, tag, parts) only, whatever else is generated."""
    entropy: list[int] = [int(seed), int(tag)]
    for part in parts:
        entropy.extend(stable_ints(part) if isinstance(part, str) else [int(part)])
    return np.random.default_rng(np.random.SeedSequence(entropy))


def modality_of(platemap: str) -> str:
    """'JUMP-Target-1_crispr_platemap' -> 'crispr'."""
    found = [token for token in platemap.lower().split("_") if token in MODALITIES]
    if len(found) != 1:
        raise ValueError(f"platemap {platemap!r}: cannot tell the modality (expected one of {MODALITIES} in the name)")
    return found[0]


@dataclass(frozen=True)
class GeneEffect:
    name: str
    direction: np.ndarray  # unit vector over PARAMETERS
    klass: str
    orf_sign: int
    order: float  # deterministic tie-break when a compound's targets are picked


def _draw_gene(name: str, seed: int) -> tuple[np.ndarray, float, int, float]:
    """Direction, class draw u, ORF sign, pick order of one gene: a function of (seed, name) only."""
    rng = seeded_rng(seed, TAG_GENE, name)
    direction = rng.standard_normal(len(PARAMETERS))
    direction /= np.linalg.norm(direction)
    u = float(rng.random())
    sign = int(rng.choice([-1, 1]))
    return direction, u, sign, float(rng.random())


def _class_by_threshold(u: float, strong_fraction: float, null_fraction: float) -> str:
    if u < strong_fraction:
        return "strong"
    return "null" if u >= 1.0 - null_fraction else "weak"


def gene_effects(genes: list[str], seed: int, strong_fraction: float, null_fraction: float,
                 classes: dict[str, str] | None = None) -> dict[str, GeneEffect]:
    """Classes by rank of each gene's draw, so the library holds (rounded) exactly the asked shares; `classes`
    then sets named genes' classes (to plant a known pattern, e.g. CPJUMP1's BI-2536: BRD4 null, PLK1 strong)."""
    classes = classes or {}
    unknown = sorted(set(classes) - set(genes))
    if unknown:
        raise ValueError(f"synthetic.gene_classes: {unknown} not perturbed by any genetic platemap of the metadata")
    bad = {g: c for g, c in classes.items() if c not in MAGNITUDE and c != "null"}
    if bad:
        raise ValueError(f"synthetic.gene_classes: {bad}: a class is one of strong, weak, null")
    draws = {gene: _draw_gene(gene, seed) for gene in sorted(set(genes))}
    ranked = sorted(draws, key=lambda g: (draws[g][1], g))
    n_strong = round(strong_fraction * len(ranked))
    n_null = round(null_fraction * len(ranked))
    effects = {}
    for rank, gene in enumerate(ranked):
        klass = "strong" if rank < n_strong else "null" if rank >= len(ranked) - n_null else "weak"
        direction, _u, sign, order = draws[gene]
        effects[gene] = GeneEffect(gene, direction, classes.get(gene, klass), sign, order)
    return effects


def outside_gene_effect(gene: str, seed: int, strong_fraction: float, null_fraction: float) -> GeneEffect:
    """A compound target that no genetic library holds: same draw, class by threshold."""
    direction, u, sign, order = _draw_gene(gene, seed)
    return GeneEffect(gene, direction, _class_by_threshold(u, strong_fraction, null_fraction), sign, order)


def library_genes(metadata_dir: str | Path | None = None) -> list[str]:
    """Genes perturbed by any CRISPR/ORF platemap in the metadata folder (controls excluded).

    Taken from the whole folder, not just the requested platemaps, so a compound's phenotype does
    not depend on which other platemaps a run happens to include.
    """
    folder = (Path(metadata_dir) if metadata_dir is not None else metadata.DEFAULT_METADATA_DIR) / "jump_target"
    genes: set[str] = set()
    for path in sorted(folder.glob("*_platemap.tsv")):
        if modality_of(path.stem) == "compound":
            continue
        library = perturbation_library(path.stem, metadata_dir)
        treated = ~library["Metadata_control_type"].isin([NEGCON, EMPTY])
        genes |= {g for g in library.loc[treated, "Metadata_gene"].dropna() if g}
    return sorted(genes)


def pick_targets(targets: set[str], genes: dict[str, GeneEffect], outside: dict[str, GeneEffect]) -> list[GeneEffect]:
    """At most two active targets: library genes first, then the strongest, then a fixed random order.

    Compounds hit many genes; keeping two makes polypharmacology a mixture of two known directions.
    An empty result means every target is null.
    """
    in_library = [genes[t] for t in targets if t in genes]
    candidates = in_library or [outside[t] for t in targets]
    active = [g for g in candidates if g.klass != "null"]
    return sorted(active, key=lambda g: (CLASS_ORDER[g.klass], g.order, g.name))[:2]


def _effect_row(direction: np.ndarray | None, klass: str, seed: int, modality: str, sample: str) -> np.ndarray:
    if direction is None or klass not in MAGNITUDE:
        return np.zeros(len(PARAMETERS))
    low, high = MAGNITUDE[klass]
    magnitude = seeded_rng(seed, TAG_MAGNITUDE, modality, sample).uniform(low, high)
    return magnitude * direction


def _perturbation_truth(
    row: pd.Series,
    modality: str,
    genes: dict[str, GeneEffect],
    seed: int,
    strong_fraction: float,
    null_fraction: float,
) -> dict[str, object]:
    """effect_class, direction id, orf_sign and effect vector of one perturbation."""
    sample = row["Metadata_broad_sample"]
    if row["Metadata_control_type"] in (NEGCON, EMPTY):
        return {"effect_class": "negcon", "direction": "", "orf_sign": 0, "effect": np.zeros(len(PARAMETERS))}
    if modality in ("crispr", "orf"):
        name = row["Metadata_gene"]
        if pd.isna(name) or not name:
            raise ValueError(f"{modality} perturbation {sample!r} names no gene")
        gene = genes.get(name) or outside_gene_effect(name, seed, strong_fraction, null_fraction)
        sign = gene.orf_sign if modality == "orf" else 1
        klass, direction = gene.klass, sign * gene.direction
        direction_id = f"gene:{gene.name}"
        orf_sign = sign if modality == "orf" else 0
    else:
        targets = target_genes(row["Metadata_target_list"])
        orf_sign = 0
        if targets:
            outside = {
                t: outside_gene_effect(t, seed, strong_fraction, null_fraction) for t in targets if t not in genes
            }
            picked = pick_targets(targets, genes, outside)
            klass = picked[0].klass if picked else "null"
            total = sum((g.direction for g in picked), np.zeros(len(PARAMETERS)))
            norm = np.linalg.norm(total)
            direction = total / norm if norm > 1e-9 else (picked[0].direction if picked else total)
            names = sorted(g.name for g in picked)
            direction_id = f"gene:{names[0]}" if len(names) == 1 else f"mix:{'|'.join(names)}" if names else ""
        else:  # no annotated target: the compound is its own direction
            own = outside_gene_effect(f"compound:{sample}", seed, strong_fraction, null_fraction)
            klass, direction, direction_id = own.klass, own.direction, own.name
    if klass == "null":
        direction_id = ""
    effect = _effect_row(direction, klass, seed, modality, sample)
    return {"effect_class": klass, "direction": direction_id, "orf_sign": orf_sign, "effect": effect}


def ground_truth(
    platemaps: list[str],
    seed: int,
    strong_fraction: float,
    null_fraction: float,
    metadata_dir: str | Path | None = None,
    effect_scale: float = 1.0,
    gene_classes: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per (modality, broad_sample) of the given platemaps with its planted effect.

    `effect_scale` multiplies every effect: a few cells per well (the offline demo) need larger
    shifts for the same retrievability as a real well's thousands of cells. `gene_classes` overrides the drawn
    class of named genes (see gene_effects).

    Columns: Metadata_broad_sample, Metadata_modality, Metadata_control_type, Metadata_pert_iname,
    Metadata_gene, Metadata_target_list, effect_class (negcon/null/weak/strong), direction
    ('gene:X', 'mix:X|Y', 'compound:BRD...', '' for null and controls), orf_sign (+1/-1 for ORF
    treatments, else 0), magnitude (norm of the effect), effect_<parameter> for every PARAMETERS.
    """
    if not (0 <= strong_fraction <= 1 and 0 <= null_fraction <= 1 and strong_fraction + null_fraction <= 1):
        raise ValueError(f"strong_fraction {strong_fraction} + null_fraction {null_fraction} must lie in [0, 1]")
    genes = gene_effects(library_genes(metadata_dir), seed, strong_fraction, null_fraction, gene_classes)
    rows = []
    seen: set[tuple[str, str]] = set()
    for platemap in platemaps:
        modality = modality_of(platemap)
        library = perturbation_library(platemap, metadata_dir).drop_duplicates("Metadata_broad_sample")
        for _, row in library.iterrows():
            key = (modality, row["Metadata_broad_sample"])
            if key in seen:  # the same compound on two platemaps has one phenotype
                continue
            seen.add(key)
            truth = _perturbation_truth(row, modality, genes, seed, strong_fraction, null_fraction)
            effect = truth.pop("effect")
            rows.append(
                {
                    "Metadata_broad_sample": key[1],
                    "Metadata_modality": modality,
                    "Metadata_control_type": row["Metadata_control_type"],
                    "Metadata_pert_iname": row["Metadata_pert_iname"],
                    "Metadata_gene": row["Metadata_gene"],
                    "Metadata_target_list": row["Metadata_target_list"],
                    **truth,
                    "magnitude": float(np.linalg.norm(effect)),
                    **dict(zip(EFFECT_COLUMNS, effect.tolist())),
                }
            )
    truth = pd.DataFrame(rows)
    scaled = [c for c in truth.columns if c.startswith("effect_") and c != "effect_class"] + ["magnitude"]
    truth[scaled] = truth[scaled] * effect_scale
    return truth


def effect_lookup(truth: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(modality, broad_sample) -> effect vector over PARAMETERS."""
    missing = set(EFFECT_COLUMNS) - set(truth.columns)
    if missing:
        raise ValueError(f"ground truth lacks columns {sorted(missing)}: regenerate it with this version")
    values = truth[EFFECT_COLUMNS].to_numpy(dtype=float)
    keys = zip(truth["Metadata_modality"], truth["Metadata_broad_sample"])
    return {key: values[i] for i, key in enumerate(keys)}


def position_effect(well: str, seed: int, sd: float) -> np.ndarray:
    """The planted artefact of one well position (cell-SD units over PARAMETERS), the same on every plate: CPJUMP1's
    replicate plates share a layout, so an artefact of the position (edge evaporation, a reader's illumination) is
    shared by every replicate pair. Zero when sd is 0."""
    if sd <= 0:
        return np.zeros(len(PARAMETERS))
    return seeded_rng(seed, TAG_POSITION, well).normal(0.0, sd, len(PARAMETERS))


def position_effects(wells: list[str], seed: int, sd: float) -> pd.DataFrame:
    """The ground truth of the position artefact: one row per well position, effect_* columns."""
    rows = [{"Metadata_Well": well, **dict(zip(EFFECT_COLUMNS, position_effect(well, seed, sd)))} for well in wells]
    return pd.DataFrame(rows, columns=["Metadata_Well", *EFFECT_COLUMNS])
