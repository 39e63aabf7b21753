"""Where every file of a run lives: the one description the workflow's rules and the Python code share.

`RunPaths(results_dir, data_dir)` answers with paths as strings. Every argument is used as given, so a Snakemake
wildcard passes straight through: `paths.load_data("{plate}")` is the rule's output pattern, and
`paths.load_data("BR00116991")` the file of one plate. docs/output.md describes each file's columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from paintbench.registry import TARGET_ID_TABLES

ILLUM_FILE = "{plate}_Illum{channel}.npy"  # the Cell Painting Gallery's name of an illumination function


def illum_filename(plate: str, channel: str) -> str:
    return ILLUM_FILE.format(plate=plate, channel=channel)


def crop_prefix(sample: str) -> str:
    """The prefix of a crop cache (PREFIX.npy, .parquet, .norm.json, .centres.parquet) from any of its files."""
    for suffix in (".centres.parquet", ".norm.json", ".parquet", ".npy"):
        if sample.endswith(suffix):
            return sample[: -len(suffix)]
    raise ValueError(f"{sample}: not a file of a crop cache (PREFIX.npy, .parquet, .norm.json or .centres.parquet)")


@dataclass(frozen=True)
class RunPaths:
    results: str
    data: str = "data"

    def _r(self, *parts: str) -> str:
        return "/".join((self.results, *parts))

    # download: images, LoadData, QC
    def image_dir(self, plate: str) -> str:
        """Images fetched (s3) or generated (synthetic); a local source reads its own folder (local.image_dir)."""
        return f"{self.data}/images/{plate}"

    def ground_truth(self) -> str:
        return self._r("synthetic", "ground_truth.parquet")

    def position_effects(self) -> str:
        """The synthetic plates' planted per-well-position artefact."""
        return self._r("synthetic", "position_effects.parquet")

    def load_data(self, plate: str) -> str:
        return self._r("load_data", f"{plate}.csv")

    def qc_fragment(self, plate: str, stage: str) -> str:
        """What one image-reading stage left out of a plate (qc.QC_COLUMNS)."""
        return self._r("qc", plate, f"{stage}.tsv")

    def plate_qc(self, plate: str) -> str:
        return self._r("qc", f"{plate}.tsv")

    def missing_fields(self) -> str:
        return self._r("qc", "missing_fields.tsv")

    # illumination
    def illum_function(self, plate: str, channel: str) -> str:
        return self._r("illum", plate, illum_filename(plate, channel))

    # CellProfiler
    def cellprofiler_shard(self, plate: str, shard: str) -> str:
        return self._r("cellprofiler", plate, "shards", f"{shard}.parquet")

    def cellprofiler_shard_qc(self, plate: str, shard: str) -> str:
        return self._r("cellprofiler", plate, "shards", f"{shard}.qc.parquet")

    def single_cells(self, plate: str) -> str:
        return self._r("cellprofiler", plate, "single_cells.parquet")

    def skipped_fields(self, plate: str) -> str:
        return self._r("cellprofiler", plate, "skipped_fields.tsv")

    # ViT: per plate a crop cache, per method a pretraining folder
    def crops(self, plate: str, part: str = "npy") -> str:
        """One file of a plate's crop cache: npy (the pretraining sample), parquet (its index), norm.json,
        centres.parquet (every crop centre, which embedding cuts from the images)."""
        return self._r("vit", "crops", f"{plate}.{part}")

    def finetune_split(self) -> str:
        """The fine-tuning split of the run's perturbations (paintbench.holdout)."""
        return self._r("vit", "finetune", "split.tsv")

    def vit_file(self, method: str, name: str) -> str:
        """encoder.pt, checkpoint.pt, train_log.tsv or train_loss.png of one method's pretraining; of <method>_ft:
        encoder.pt and finetune_log.tsv of its fine-tuning."""
        return self._r("vit", method, name)

    # profiles
    def encoder_file(self, name: str, file: str) -> str:
        """backbone.pt and finetune_log.tsv of an external encoder fine-tuned by the run (<name>_ft)."""
        return self._r("encoders", name, file)

    def well_profiles(self, feature_set: str, plate: str) -> str:
        return self._r("profiles", feature_set, f"{plate}.parquet")

    def annotated(self, feature_set: str) -> str:
        """Every plate's well profiles with the platemap's annotation: what each chain starts from."""
        return self._r("profiles", feature_set, "annotated.parquet")

    def scored(self, profile_set: str) -> str:
        """The profiles of one (feature set, chain) pair, registry.profile_set's 'FS/CHAIN': what retrieval scores."""
        return self._r("profiles", f"{profile_set}.parquet")

    def chain_steps(self, profile_set: str) -> str:
        """What each step of the chain did (features in and out, wells it fitted on)."""
        return self._r("profiles", f"{profile_set}.steps.tsv")

    def published_cache(self) -> str:
        return f"{self.data}/published_profiles"

    # retrieval and target identification
    def retrieval(self, profile_set: str, task: str, per_query: bool = False) -> str:
        """Per-unit results of a task on one profile set; per_query: its per-query AP table."""
        return self._r("retrieval", profile_set, f"{task}{'_ap' if per_query else ''}.parquet")

    def layout_controls(self, profile_set: str) -> str:
        """The layout and batch controls of one profile set (controls.LAYOUT_COLUMNS)."""
        return self._r("retrieval", profile_set, "layout_controls.parquet")

    def target_id(self, profile_set: str, table: str = "summary") -> str:
        if table not in TARGET_ID_TABLES:
            raise ValueError(f"unknown target-identification table {table!r} (known: {', '.join(TARGET_ID_TABLES)})")
        return self._r("target_id", f"{profile_set}{'' if table == 'summary' else '_' + table}.parquet")

    # report
    def summary(self) -> str:
        return self._r("reports", "summary.tsv")

    def comparisons(self) -> str:
        """Paired comparisons of profile sets on the same perturbations."""
        return self._r("reports", "comparisons.tsv")

    def figures_dir(self) -> str:
        return self._r("reports", "figures")

    def report_html(self) -> str:
        return self._r("reports", "index.html")

    def query_stem(self, name: str, feature_set: str) -> str:
        """`paintbench query`'s output stem; a profile set FS/CHAIN is written FS_CHAIN (one file, no folder)."""
        return self._r("reports", "query", f"{name}_{feature_set.replace('/', '_')}")

    # every rule's log and benchmark
    def log(self, *parts: str) -> str:
        return self._r("logs", *parts[:-1], f"{parts[-1]}.log")

    def benchmark(self, *parts: str) -> str:
        return self._r("benchmarks", *parts[:-1], f"{parts[-1]}.tsv")
