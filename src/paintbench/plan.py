"""What a run will cost before it starts: fields, download, CPU and GPU hours, and the disk of every intermediate.

Every estimate is a count of this run's fields times a rate measured on these machines or published, and each
rate carries its source (`RATES`). Rules use the same functions to declare `disk_mb`, so a cluster scheduler
places jobs where the disk is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from paintbench.config import vit_method
from paintbench.metadata import plate_info, plate_layout, select_wells
from paintbench.registry import CELLPROFILER, CHANNELS, FEATURE_SET_METHODS, IMAGE_FEATURE_SETS

CHANNELS_READ = len(CHANNELS)  # the fluorescent channels both branches read
MB = 1e6


@dataclass(frozen=True)
class Rate:
    value: float
    unit: str
    source: str


RATES = {
    "image_mb": Rate(2.42, "MB per 1080 px channel TIFF (LZW)",
                     "the real CPJUMP1-like field BR00143976 C03 f3: 12.1 MB for 5 channels (shared/data, measured)"),
    "cellprofiler_s_per_field": Rate(63.0, "s per 1080 px field per core (analysis.cppipe; 58-68 s at 117-225 cells, "
                                           "no clear trend with density: texture and granularity dominate)",
                                     "scripts/bench_cellprofiler.py --densities 100,200,300 (README table)"),
    "cellprofiler_features": Rate(2700, "float32 values per cell", "analysis.cppipe single-cell table (README)"),
    "decode_s_per_field": Rate(0.085, "s per field per core (5 channels decoded, corrected)",
                               "scripts/bench_vit.py, real 1080 px LZW fields (docs/performance.md)"),
    "gpu_embed_crops_per_s": Rate(3000.0, "ViT-S/16 224 px crops/s, AMP, one RTX 3090",
                                  "timm results/benchmark-infer-amp-nchw-pt112-cu113-rtx3090.csv (not measured here)"),
    "gpu_train_crops_per_s": Rate(1053.0, "ViT-S/16 224 px training crops/s, AMP, one RTX 3090 (full ViT; an MAE "
                                          "encodes 25% of the patches: conservative)",
                                  "timm results/benchmark-train-amp-nchw-pt112-cu113-rtx3090.csv (not measured here)"),
    "cpu_embed_crops_per_s": Rate(25.0, "ViT-S/16 224 px crops/s on 2 CPU cores", "scripts/bench_vit.py (README)"),
    "cpu_train_crops_per_s": Rate(27.0, "ViT-S/16 224 px MAE training crops/s on 2 CPU cores (0.85 steps/s x 32)",
                                  "scripts/bench_vit.py (README)"),
    # The benchmark itself, per profile set, at 500 features (a chain's output; time and memory scale with them).
    "replicate_s_per_well": Rate(3.3e-5, "s per well of replicate retrieval on 2 cores (cpjump1, null 10,000)",
                                 "scripts/bench_scale.py --plates 1700: 652,800 wells in 21.5 s (docs/performance.md)"),
    "retrieval_bytes_per_value": Rate(12.4, "bytes per well x feature at float32 (x2 at float64): the table, its "
                                           "normalized copy and the blocks",
                                      "scripts/bench_scale.py --plates 1700: 4.06 GB peak RSS"),
    "matching_s_per_pair": Rate(5.1e-8, "s per (query, candidate) pair of consensus profiles, sister or "
                                        "compound-gene matching, 2 cores",
                                "scripts/bench_scale.py --plates 1700: compound-gene 156,564 x 15,000 pairs in 120 s "
                                "(sister 141,564 x 108,800 in 548 s)"),
}
BENCHMARK_FEATURES = 500


def rate(name: str) -> float:
    return RATES[name].value


def view_cost(method: str, settings: dict[str, Any]) -> float:
    """Training cost of one crop relative to one full-image forward+backward (the train rate's unit).

    MAE: 1 (conservative: it encodes a quarter of the patches); SimCLR: 2 views; DINO: 2 global views and the
    local ones at their share of the tokens through the student, plus the teacher's 2 forward passes (inference
    rate)."""
    if method == "simclr":
        return 2.0
    if method == "dino":
        local = settings["local_crops"] * settings["local_size_ratio"] ** 2
        return 2.0 + local + 2.0 * rate("gpu_train_crops_per_s") / rate("gpu_embed_crops_per_s")
    return 1.0


def image_bytes(n_fields: int, image_mb: float | None = None, mapped: int = CHANNELS_READ) -> float:
    return n_fields * mapped * (image_mb or rate("image_mb")) * MB


def single_cell_bytes(n_cells: float) -> float:
    return n_cells * rate("cellprofiler_features") * 4


def crop_bytes(n_crops: float, crop_size: int) -> float:
    return n_crops * CHANNELS_READ * crop_size * crop_size * 2  # float16


def illum_bytes(field_px: int = 1080) -> float:
    return CHANNELS_READ * field_px * field_px * 4


def plate_fields(config: dict[str, Any], plate: str, metadata_dir: str) -> tuple[int, int]:
    """(wells, fields) of one plate as the configuration selects them."""
    layout = plate_layout(plate, metadata_dir)
    wells = select_wells(layout, config["wells"], config["genes"], config["negcon_wells"])
    sites = plate_info(plate, metadata_dir).sites_per_well if config["sites"] == "all" else len(config["sites"])
    return len(wells), len(wells) * sites


def estimate(config: dict[str, Any], metadata_dir: str, cells_per_field: float = 150.0) -> list[dict[str, Any]]:
    """Rows (quantity, value, unit, source) for the configured plates: counts, hours and disk per stage."""
    plates = config["plates"]
    counts = [plate_fields(config, plate, metadata_dir) for plate in plates]
    wells, fields = sum(c[0] for c in counts), sum(c[1] for c in counts)
    cells = fields * cells_per_field
    vit = config["vit"]
    images = any(fs in IMAGE_FEATURE_SETS for fs in config["feature_sets"]) or bool(config["encoders"])
    crop_size = int(vit["crop_size"])
    per_field = min(cells_per_field, vit["max_crops_per_field"] or cells_per_field)
    sample = min(per_field, vit["pretrain_crops_per_field"] or per_field)
    scale = (vit["input_size"] / 224) ** 2  # ViT cost grows with the token count
    rows = [
        ("plates", len(plates), "plates", "configuration"),
        ("wells", wells, "wells", "configuration (wells, genes, negcon_wells)"),
        ("fields", fields, "fields", "configuration (sites) and the experiment metadata"),
        ("cells (assumed)", round(cells), f"cells at {cells_per_field:g} per field", "--cells-per-field (real CPJUMP1 "
                                                                                     "fields: 100-300)"),
    ]
    if images:
        mapped = sum(1 for number in config["channels"].values() if number is not None)
        what = f"{mapped} channels of config key 'channels' per field"
        if config["source"] == "local":  # read in place: nothing is downloaded or copied
            rows += [("images read in place", round(fields * mapped), "TIFFs", what + "; local folders, not copied")]
        else:
            rows += [
                ("images to download" if config["source"] == "s3" else "images generated", round(fields * mapped),
                 "TIFFs", what),
                ("download" if config["source"] == "s3" else "synthetic images", round(image_bytes(fields, mapped=mapped)
                                                                                     / 1e9, 1), "GB",
                 RATES["image_mb"].source),
            ]
        rows += [("illumination functions", round(len(plates) * illum_bytes() / 1e9, 2), "GB",
                  f"{CHANNELS_READ} float32 fields per plate")]
    if CELLPROFILER in config["feature_sets"]:
        cp_hours = fields * rate("cellprofiler_s_per_field") / 3600
        rows += [
            ("CellProfiler", round(cp_hours, 1), "CPU-hours", RATES["cellprofiler_s_per_field"].source),
            ("single cells (Parquet, kept)", round(single_cell_bytes(cells) / 1e9, 1), "GB",
             f"{rate('cellprofiler_features'):g} float32 per cell; shards are temp() and merged per plate"),
        ]
    methods = [FEATURE_SET_METHODS[fs] for fs in config["feature_sets"] if fs in FEATURE_SET_METHODS]
    if methods:
        embed_crops = fields * per_field
        rows += [
            ("ViT pretraining sample (kept)", round(crop_bytes(fields * sample, crop_size) / 1e9, 2), "GB",
             f"{sample:g} crops of {crop_size} px per field (vit.pretrain_crops_per_field), float16"),
            ("ViT crop decoding", round((1 + len(methods)) * fields * rate("decode_s_per_field") / 3600, 1),
             "CPU-hours", RATES["decode_s_per_field"].source + "; survey, then once per embedded feature set"),
        ]
        for method in methods:
            m = vit_method(config, method)
            if m["checkpoint"]:
                continue
            work = m["steps"] * m["batch_size"] * scale * view_cost(method, m["settings"])
            rows += [
                (f"ViT pretraining ({method})", round(work / rate("gpu_train_crops_per_s") / 3600, 2), "GPU-hours",
                 RATES["gpu_train_crops_per_s"].source + f"; x{view_cost(method, m['settings']):.2g} per crop for "
                 f"{method}'s views"),
                (f"ViT pretraining ({method}) on CPU", round(work / rate("cpu_train_crops_per_s") / 3600, 1),
                 "hours on 2 cores", RATES["cpu_train_crops_per_s"].source),
            ]
        rows += [
            ("ViT embedding", round(len(methods) * embed_crops * scale / rate("gpu_embed_crops_per_s") / 3600, 2),
             "GPU-hours", RATES["gpu_embed_crops_per_s"].source + f"; {len(methods)} feature set(s)"),
            ("ViT embedding on CPU", round(len(methods) * embed_crops * scale / rate("cpu_embed_crops_per_s") / 3600, 1),
             "hours on 2 cores", RATES["cpu_embed_crops_per_s"].source),
            ("ViT cache of every crop (not made)", round(crop_bytes(embed_crops, crop_size) / 1e9, 1), "GB",
             "what caching every crop would take: embedding streams them from the images instead"),
        ]
    rows += benchmark_rows(config, metadata_dir, wells)
    kept = [r for r in rows if r[2] == "GB" and "not made" not in r[0] and "memory" not in r[0]]
    peak = sum(r[1] for r in kept)
    if CELLPROFILER in config["feature_sets"]:
        peak += max(counts, key=lambda c: c[1])[1] * cells_per_field * rate("cellprofiler_features") * 4 / 1e9
    rows.append(("peak disk", round(peak, 1), "GB", "everything kept plus one plate's CellProfiler shards"))
    return [dict(zip(("quantity", "value", "unit", "source"), row)) for row in rows]


def perturbation_counts(config: dict[str, Any], metadata_dir: str) -> tuple[int, int]:
    """(compounds, genetic reagents) among the wells the configuration selects."""
    compounds, reagents = set(), set()
    for plate in config["plates"]:
        layout = plate_layout(plate, metadata_dir)
        wells = set(select_wells(layout, config["wells"], config["genes"], config["negcon_wells"]))
        treated = layout[layout["Metadata_Well"].isin(wells) & layout["Metadata_control_type"].isna()]
        target = compounds if plate_info(plate, metadata_dir).modality == "compound" else reagents
        target.update(treated["Metadata_broad_sample"].dropna())
    return len(compounds), len(reagents)


def benchmark_rows(config: dict[str, Any], metadata_dir: str, wells: int) -> list[tuple]:
    """The benchmark's own cost: replicate retrieval is linear in the wells (candidates blocked by the pair rules),
    matching compares consensus profiles pairwise (compounds with compounds, compounds with genetic reagents)."""
    from paintbench.feature_sets import feature_set_chains

    profile_sets = sum(len(chains) for chains in feature_set_chains(config).values())
    compounds, reagents = perturbation_counts(config, metadata_dir)
    bytes_per_value = rate("retrieval_bytes_per_value") * (2 if config["retrieval"]["precision"] == "float64" else 1)
    pairs = compounds * compounds + 2 * compounds * reagents + reagents * reagents
    what = f"{profile_sets} profile set(s) at {BENCHMARK_FEATURES} features"
    return [
        ("benchmark: replicate retrieval", _two_digits(profile_sets * wells * rate("replicate_s_per_well") / 60),
         "CPU-minutes", RATES["replicate_s_per_well"].source + f"; {what}"),
        ("benchmark: memory of one retrieval job", _two_digits(wells * BENCHMARK_FEATURES * bytes_per_value / 1e9), "GB",
         RATES["retrieval_bytes_per_value"].source + f"; retrieval.precision {config['retrieval']['precision']}"),
        ("benchmark: matching", _two_digits(profile_sets * pairs * rate("matching_s_per_pair") / 60), "CPU-minutes",
         RATES["matching_s_per_pair"].source + f"; {compounds} compounds, {reagents} genetic reagents, {what}; "
                                               "an upper bound: only those that pass replicate retrieval are matched"),
    ]


def _two_digits(value: float) -> float:
    """Two significant digits: a small run's minutes are not rounded to zero."""
    return float(f"{value:.2g}")


def plate_disk_mb(config: dict[str, Any], plate: str, metadata_dir: str, stage: str,
                  cells_per_field: float = 150.0) -> int:
    """Disk a stage's job writes for one plate (MB, at least 100), for the rules' `disk_mb`."""
    _, fields = plate_fields(config, plate, metadata_dir)
    vit = config["vit"]
    per_stage = {
        "download": image_bytes(fields),
        "cellprofiler": 2 * single_cell_bytes(fields * cells_per_field),  # shards + the merged table
        "vit_crops": crop_bytes(fields * min(cells_per_field, vit["pretrain_crops_per_field"] or cells_per_field),
                                vit["crop_size"]),
    }
    return max(100, int(per_stage.get(stage, 0) / MB))
