"""The files of a finished run that the report reads, each by what it is.

The report commands take these files as arguments (the rules of workflow/rules/report.smk declare every one of
them), so a section is in the report because its files were given, never because a file happened to exist: a
missing file is an error that names it. `RunFiles.from_results_dir` fills the same fields from a results folder
laid out as paintbench.paths describes, for use by hand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from paintbench.paths import ILLUM_FILE, RunPaths
from paintbench.registry import CELLPROFILER, CHANNELS, TASKS

log = logging.getLogger(__name__)

PlateFiles = dict[str, Path]  # plate -> file
SetFiles = dict[str, Path]  # feature set (or profile set FS/CHAIN) -> file


@dataclass
class RunFiles:
    feature_sets: list[str]  # in report order (the consortium's published profiles included; the paper's never)
    plates: list[str]
    retrieval: dict[str, SetFiles] = field(default_factory=dict)  # task -> per-unit result table per feature set
    replicate_ap: SetFiles = field(default_factory=dict)  # per-query replicate-retrieval APs
    shortlists: SetFiles = field(default_factory=dict)  # target_id/<fs>.parquet
    polypharmacology: SetFiles = field(default_factory=dict)
    pairs: SetFiles = field(default_factory=dict)
    profiles: SetFiles = field(default_factory=dict)  # the image feature sets' scored profiles (headline chain)
    layout_controls: SetFiles = field(default_factory=dict)  # retrieval/<fs>/<chain>/layout_controls.parquet
    chain_steps: SetFiles = field(default_factory=dict)  # profiles/<fs>/<chain>.steps.tsv
    illum: dict[str, dict[str, Path]] = field(default_factory=dict)  # plate -> channel -> function
    cell_counts: PlateFiles = field(default_factory=dict)  # CellProfiler well profiles (Metadata_Object_Count)
    qc: PlateFiles = field(default_factory=dict)
    crops: PlateFiles = field(default_factory=dict)  # pretraining samples (PREFIX.npy, its index PREFIX.parquet)
    crop_centres: PlateFiles = field(default_factory=dict)
    train_logs: dict[str, Path] = field(default_factory=dict)  # method -> train_log.tsv
    mae_checkpoint: Path | None = None
    ground_truth: Path | None = None

    def result(self, feature_set: str, task: str) -> Path:
        try:
            return self.retrieval[task][feature_set]
        except KeyError:
            raise ValueError(f"no {task} results given for feature set {feature_set!r}") from None

    def check(self) -> "RunFiles":
        """Every file given exists; the message names the first that does not."""
        for name, path in self.files():
            if not path.exists():
                raise FileNotFoundError(f"{path}: the report's {name} is missing")
        return self

    def files(self) -> list[tuple[str, Path]]:
        listed: list[tuple[str, Path]] = []
        for task, sets in self.retrieval.items():
            listed += [(f"{task} results ({fs})", p) for fs, p in sets.items()]
        for label in ("replicate_ap", "shortlists", "polypharmacology", "pairs", "profiles", "layout_controls",
                      "chain_steps", "cell_counts", "qc", "crops", "crop_centres", "train_logs"):
            listed += [(f"{label.replace('_', ' ')} ({key})", p) for key, p in getattr(self, label).items()]
        listed += [(f"illumination function ({plate} {ch})", p) for plate, chs in self.illum.items() for ch, p in chs.items()]
        listed += [(label, p) for label, p in (("MAE checkpoint", self.mae_checkpoint),
                                               ("ground truth", self.ground_truth)) if p is not None]
        return listed

    @classmethod
    def from_results_dir(cls, results_dir: str | Path, feature_sets: list[str], plates: list[str],
                         methods: list[str] | None = None) -> "RunFiles":
        """The files of a results folder (paintbench.paths), `feature_sets` naming profile sets (FS/CHAIN, as
        registry.profile_set writes them): the retrieval results of every one are
        required; every other file is taken when the folder has it (what a run of other feature sets lacks)."""
        paths = RunPaths(str(results_dir))
        found = lambda text: Path(text) if Path(text).exists() else None  # noqa: E731
        present = lambda mapping: {k: Path(v) for k, v in mapping.items() if found(v)}  # noqa: E731
        files = cls(list(feature_sets), list(plates),
                    retrieval={task: {fs: Path(paths.retrieval(fs, task)) for fs in feature_sets} for task in TASKS})
        files.replicate_ap = present({fs: paths.retrieval(fs, TASKS[0], per_query=True) for fs in feature_sets})
        for table in ("polypharmacology", "pairs"):
            setattr(files, table, present({fs: paths.target_id(fs, table) for fs in feature_sets}))
        files.shortlists = present({fs: paths.target_id(fs) for fs in feature_sets})
        files.profiles = present({fs: paths.scored(fs) for fs in feature_sets})
        files.layout_controls = present({fs: paths.layout_controls(fs) for fs in feature_sets})
        files.chain_steps = present({fs: paths.chain_steps(fs) for fs in feature_sets})
        files.illum = {p: {c: Path(paths.illum_function(p, c)) for c in CHANNELS} for p in plates
                       if all(found(paths.illum_function(p, c)) for c in CHANNELS)}
        files.cell_counts = present({p: paths.well_profiles(CELLPROFILER, p) for p in plates})
        files.qc = present({p: paths.plate_qc(p) for p in plates})
        files.crops = present({p: paths.crops(p) for p in plates})
        files.crop_centres = present({p: paths.crops(p, "centres.parquet") for p in plates})
        files.train_logs = present({m: paths.vit_file(m, "train_log.tsv") for m in methods or ("mae", "dino", "simclr")})
        files.mae_checkpoint = found(paths.vit_file("mae", "checkpoint.pt")) if "mae" in files.train_logs else None
        files.ground_truth = found(paths.ground_truth())
        log.info("from %s: %d file(s) for %d feature set(s) and %d plate(s)", results_dir, len(files.files()),
                 len(feature_sets), len(plates))
        return files


def illum_by_plate(paths: list[str] | None) -> dict[str, dict[str, Path]]:
    """Illumination function files, named as the Gallery names them, by plate and channel."""
    prefix, suffix = ILLUM_FILE.split("{plate}")[1].split("{channel}")  # "_Illum", ".npy"
    grouped: dict[str, dict[str, Path]] = {}
    for text in paths or []:
        path = Path(text)
        plate, marker, rest = path.name.rpartition(prefix)
        if not marker or not rest.endswith(suffix):
            raise ValueError(f"{path}: not an illumination function file ({ILLUM_FILE})")
        grouped.setdefault(plate, {})[rest[: -len(suffix)]] = path
    return grouped


def merge(base: RunFiles, given: Mapping[str, object]) -> RunFiles:
    """`base` with every non-empty field of `given` (the explicit files of a command line) taking precedence."""
    for name, value in given.items():
        if value:
            setattr(base, name, value)
    return base
