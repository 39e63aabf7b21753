"""Every name the pipeline is built from, in one place: channels, feature sets and the ViT methods behind them,
tasks, and the choices of every enumerated setting.

Snakemake's wildcard constraints, argparse's `choices` and the code all read these tuples; the configuration
schema (workflow/schemas/config.schema.yaml) lists the same values for its enums, and tests/test_registry.py keeps
the two equal. Defaults are not here: they live in the schema alone (paintbench.schema).
"""

from __future__ import annotations

from typing import Iterable

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
"""The five fluorescent Cell Painting channels, in the order every tensor and table uses."""
OPTIONAL_CHANNELS = ("Brightfield",)

# Feature sets: what the benchmark scores side by side.
CELLPROFILER = "cellprofiler"
PUBLISHED = "published_cellprofiler"  # the consortium's published profiles of the same plates
PAPER = "paper_cellprofiler"  # the CPJUMP1 paper's own values: reference rows of the report, never scored
VIT_METHODS = ("mae", "dino", "simclr")
METHOD_FEATURE_SETS = {"mae": "vitmae", "dino": "vitdino", "simclr": "vitsimclr"}  # vit.<method> -> feature set
FEATURE_SET_METHODS = {fs: method for method, fs in METHOD_FEATURE_SETS.items()}
VIT_FEATURE_SETS = tuple(METHOD_FEATURE_SETS.values())
IMAGE_FEATURE_SETS = (CELLPROFILER, *VIT_FEATURE_SETS)  # extracted from the run's own images
FEATURE_SETS = (*IMAGE_FEATURE_SETS, PUBLISHED)
# Training keys of vit.* that vit.<method> may override.
VIT_TRAINING_KEYS = ("steps", "batch_size", "lr", "warmup_steps", "weight_decay")
METHOD_TITLES = {"mae": "ViT-MAE", "dino": "ViT-DINO", "simclr": "ViT-SimCLR"}
LOSS_NAMES = {"mae": "masked-patch MSE", "dino": "DINO cross-entropy", "simclr": "NT-Xent"}

# Tasks: the three CPJUMP1 retrieval tasks, then the shortlists of target identification.
TASKS = ("replicate_retrieval", "sister_matching", "compound_gene_matching")
MATCHING_TASKS = TASKS[1:]  # scored on the consensus profiles of what replicate retrieval retrieved
SHORTLIST_TASKS = ("target_identification", "virtual_screening")
TASK_TITLES = {"replicate_retrieval": "replicate retrieval", "sister_matching": "sister matching",
               "compound_gene_matching": "compound-gene matching"}
TARGET_ID_TABLES = ("summary", "queries", "polypharmacology", "pairs")  # target_id/<feature set><suffix>.parquet

# Choices of enumerated settings (schema enums and argparse choices).
SOURCES = ("s3", "local", "synthetic")
ILLUM_SOURCES = ("computed", "gallery")
PROTOCOLS = ("cpjump1", "copairs")
COMPOUND_GENE_NEGATIVES = ("disjoint", "paper_code")
POOLINGS = ("cls", "mean")
CROP_MODES = ("tiles", "nuclei")
PRECISIONS = ("auto", "bf16", "fp32")
AGGREGATIONS = ("median", "mean")
DATASETS = ("cpjump1", "synthetic", "own")  # whose plates a run scores (only cpjump1 stands beside the paper)
GENE_CLASSES = ("strong", "weak", "null")
# Profile chains (paintbench.chains): the steps, which of them fit on negative controls, and which kind of feature
# set (profiles.feature_sets.<kind>) a feature set takes its chains from.
PROFILE_STEPS = ("none", "var", "mad", "standardize", "int", "featselect", "wellpos", "cc", "outlier", "sphering",
                 "pca", "harmony", "heldout")
FINETUNED_SUFFIX = "_ft"  # vit<method>_ft: a method fine-tuned on the training side (config key vit.finetune)
HELDOUT_CHAIN = "mad_heldout"  # fine-tuned feature sets and their parents are scored on the held-out side with it
EMBEDDING_KIND = "vit"  # the chains of every embedding: the ViTs, external encoders, precomputed tables
CHAIN_KINDS = {CELLPROFILER: "cellprofiler", **{fs: EMBEDDING_KIND for fs in VIT_FEATURE_SETS}, PUBLISHED: "published"}
LAYOUT_CONTROLS = ("same_position_controls", "different_position_replicates", "shuffled_replicates",
                   "plate_predictability", "nearest_neighbour_target_accuracy")
# External encoders (config key encoders.<name>.format; paintbench.vit.encoders holds each format's published facts).
ENCODER_FORMATS = ("timm", "cellpaintssl", "cell_dino", "openphenom", "torchscript", "python")
QC_STAGES = ("download", "illum", "cellprofiler", "vit_crops", "vit_embed", "encoder_embed")  # qc/<plate>/<stage>.tsv fragments


def alternatives(names: Iterable[str]) -> str:
    """A regular expression matching exactly one of `names` (Snakemake wildcard constraints)."""
    return "|".join(names)


def profile_set(feature_set: str, chain: str) -> str:
    """The name of one (feature set, chain) pair: what retrieval, target identification and the report score."""
    return f"{feature_set}/{chain}"


def split_profile_set(name: str) -> tuple[str, str]:
    feature_set, _, chain = name.partition("/")
    return feature_set, chain
