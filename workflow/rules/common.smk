# Input functions and run-wide values shared by the rule files (the Snakefile includes this file first).
# Where files live is paintbench.paths (PATHS), names are paintbench.registry's, and the defaults and options of
# every command come from the schema through paintbench.cli (options, render).
import os
from functools import lru_cache
from shlex import quote as shlex_quote
from pathlib import Path

import yaml

from paintbench.cellprofiler import shard_wells
from paintbench.cli.download import DOWNLOAD_OPTIONS, GENERATOR_OPTIONS, GROUND_TRUTH_OPTIONS, TRANSFER_OPTIONS, gene_classes_words
from paintbench.cli.illum import ILLUM_OPTIONS
from paintbench.cli.cellprofiler import CELLPROFILER_OPTIONS
from paintbench.cli.options import METADATA_DIR as METADATA_DIR_OPTION
from paintbench.cli.options import S3_OPTIONS, render
from paintbench.cli.profiles import PROFILE_CHAIN_OPTIONS, PROFILE_OPTIONS
from paintbench.cli.retrieval import LAYOUT_CONTROL_OPTIONS, RETRIEVAL_OPTIONS
from paintbench.cli.target_id import TARGET_ID_OPTIONS
from paintbench.cli.finetune import ENCODER_FINETUNE_OPTIONS, FINETUNE_OPTIONS, SPLIT_OPTIONS
from paintbench.cli.vit import (CROP_OPTIONS, EMBED_OPTIONS, ENCODER_EMBED_OPTIONS, MODEL_OPTIONS, PRETRAIN_OPTIONS,
                               TRAINING_OPTIONS)
from paintbench.config import resolve_command, resolve_input_path, vit_method
from paintbench.feature_sets import feature_set_chains, finetuned_sets, profile_chains, run_feature_sets
from paintbench.metadata import known_plates, plate_info, plate_layout, select_wells
from paintbench.image_pattern import folder_digest
from paintbench.paths import RunPaths, crop_prefix
from paintbench.plan import plate_disk_mb
from paintbench.registry import (CELLPROFILER, CHANNELS, FEATURE_SET_METHODS, IMAGE_FEATURE_SETS, MATCHING_TASKS,
                                 FINETUNED_SUFFIX, METHOD_FEATURE_SETS, PAPER, PUBLISHED, TARGET_ID_TABLES, TASKS,
                                 VIT_METHODS, VIT_TRAINING_KEYS, alternatives, profile_set)
from paintbench.schema import BUNDLED_METADATA

RESULTS = config["results_dir"]
DATA = config["data_dir"]
PATHS = RunPaths(RESULTS, DATA)
# Relative input paths: the working directory's copy, else the workflow folder's (paintbench.config.PATH_RULE).
WORKFLOW_DIR = Path(workflow.basedir)
METADATA_DIR = str(resolve_input_path(config["metadata_dir"], workflow_dir=WORKFLOW_DIR))
PLATES = config["plates"]
# The resolved paths of the configuration's input files: what the rules pass on.
RESOLVED = {
    "metadata_dir": METADATA_DIR,
    "cellprofiler.pipeline": str(resolve_input_path(config["cellprofiler"]["pipeline"], workflow_dir=WORKFLOW_DIR)),
    "cellprofiler.executable": resolve_command(config["cellprofiler"]["executable"], workflow_dir=WORKFLOW_DIR),
}

# published_cellprofiler: the consortium's own profiles of the same plates (s3 source), scored side by side;
# a run of it alone (config/paper.yaml) reads no image at all.
# External encoders (encoders.<name>) read the images like the ViTs; precomputed tables (precomputed.<name>) do not.
ENCODERS = config["encoders"]
PRECOMPUTED = config["precomputed"]
FEATURE_SETS = run_feature_sets(config)
# vit.finetune.encoders: each external encoder fine-tuned, embedded by encoder_embed as <name>_ft.
FINETUNED_ENCODERS = {fs: parent for fs, parent in finetuned_sets(config).items() if parent in ENCODERS}
IMAGE_SETS = [fs for fs in FEATURE_SETS if fs in IMAGE_FEATURE_SETS or fs in ENCODERS or fs in FINETUNED_ENCODERS]
ANNOTATED_SETS = [fs for fs in FEATURE_SETS if fs != PUBLISHED]  # the profiles rule annotates their plates' wells
RUN_METHODS = [FEATURE_SET_METHODS[fs] for fs in FEATURE_SETS if fs in FEATURE_SET_METHODS]
VIT = config["vit"]
VIT_PRETRAIN_PLATES = VIT["pretrain_plates"] or PLATES
METHOD = {method: vit_method(config, method) for method in VIT_METHODS}
PRETRAINED = [m for m in RUN_METHODS if not METHOD[m]["checkpoint"]]  # methods this run pretrains itself
# vit.finetune: each method fine-tuned on the split's training side, embedded by the same job as the others.
FINETUNED = {FEATURE_SET_METHODS[parent]: fs for fs, parent in finetuned_sets(config).items()  # method -> vit<m>_ft
             if parent in FEATURE_SET_METHODS}


def embedded_encoders() -> dict[str, str]:
    """Feature set -> encoder file of every encoder the vit_embed job runs: the methods', then the fine-tuned ones."""
    return {**{METHOD_FEATURE_SETS[m]: vit_encoder(m) for m in RUN_METHODS},
            **{fs: PATHS.vit_file(f"{m}{FINETUNED_SUFFIX}", "encoder.pt") for m, fs in FINETUNED.items()}}
# Profile chains: each feature set's chains, headline first (profiles.feature_sets); every (feature set, chain)
# pair, a profile set FS/CHAIN, is scored like a feature set.
CHAINS = profile_chains(config)
SET_CHAINS = feature_set_chains(config)
RUN_CHAINS = list(dict.fromkeys(chain for chains in SET_CHAINS.values() for chain in chains))
PROFILE_SETS = [profile_set(fs, chain) for fs in FEATURE_SETS for chain in SET_CHAINS[fs]]
HEADLINE_SETS = {fs: profile_set(fs, SET_CHAINS[fs][0]) for fs in FEATURE_SETS}


def vit_encoder(method: str) -> str:
    """A user-supplied encoder (vit.<method>.checkpoint) skips pretraining; otherwise the run pretrains its own."""
    given = METHOD[method]["checkpoint"]
    return str(resolve_input_path(given, workflow_dir=WORKFLOW_DIR)) if given else PATHS.vit_file(method, "encoder.pt")


# Workstation runs: the rules' mem_mb add up to at most the machine's memory (so they are enforced, not just
# declared); a request above it is cut to it rather than refused. Cluster runs leave memory to the scheduler.
MACHINE_MEM_MB = int(0.9 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
LOCAL_RUN = workflow.local_exec and not workflow.remote_exec
if LOCAL_RUN and "mem_mb" not in workflow.global_resources:
    workflow.register_resource("mem_mb", MACHINE_MEM_MB)


def run_dataset() -> str:
    """Whose plates the run scores: synthetic, cpjump1 (every plate a CPJUMP1 barcode of the bundled metadata) or
    own; only a cpjump1 run stands beside the paper's values in the report."""
    if config["source"] == "synthetic":
        return "synthetic"
    return "cpjump1" if set(PLATES) <= set(known_plates(BUNDLED_METADATA)) else "own"


def gpu_request(gpus: int) -> int:
    """GPUs a ViT job asks for: none when the run's ViTs are on the CPU (vit.device: cpu), so those jobs share the cores
    like any other instead of queueing one at a time behind the workstation profile's gpu=1 cap."""
    return 0 if VIT["device"] == "cpu" else gpus


def attempt_number(wildcards, attempt) -> int:
    """The job's attempt, 1 then 2, ... on retries (resources.attempt): paintbench exits at once, saying so, on a
    retry of a command whose first attempt failed on its input or configuration, which a rerun cannot change."""
    return attempt


def mem_mb(request: int) -> int:
    return min(request, MACHINE_MEM_MB) if LOCAL_RUN else request


def disk_mb(stage: str):
    """The disk a stage's job writes for its plate (paintbench.plan), for schedulers that place jobs by disk."""
    return lambda wildcards: plate_disk_mb(config, wildcards.plate, METADATA_DIR, stage)


def options(*blocks) -> str:
    """The command-line options of the configuration's keys (paintbench.cli.options.render), input paths resolved."""
    return render([option for block in blocks for option in block], config, RESOLVED)


@lru_cache(maxsize=None)  # the DAG of a full batch asks ~2,500 times; the answer is fixed for a run
def plate_wells(plate: str) -> list[str]:
    """The wells of `plate` this run processes (config keys wells, genes, negcon_wells)."""
    layout = plate_layout(plate, METADATA_DIR)
    wells = select_wells(layout, config["wells"], config["genes"], config["negcon_wells"])
    if not wells:
        raise ValueError(f"config keys 'wells' and 'genes': no well of plate {plate} is selected")
    return wells


def plate_sites(plate: str) -> list[int]:
    if config["sites"] == "all":
        return list(range(1, plate_info(plate, METADATA_DIR).sites_per_well + 1))
    return config["sites"]


def plate_shards(plate: str) -> list[str]:
    """Shard names of a plate: s000, s001, ... (wells_per_shard consecutive wells each)."""
    n = len(plate_shard_wells(plate))
    return [f"s{i:03d}" for i in range(n)]


def shard_wells_of(plate: str, shard: str) -> list[str]:
    return plate_shard_wells(plate)[int(shard[1:])]


@lru_cache(maxsize=None)
def plate_shard_wells(plate: str) -> list[list[str]]:
    return shard_wells(plate_wells(plate), config["cellprofiler"]["wells_per_shard"])


def channel_arg() -> str:
    return ",".join(f"{name}={number}" for name, number in config["channels"].items() if number is not None)


def plate_image_dir(plate: str) -> str:
    if config["source"] == "local":
        return config["local"]["image_dir"].format(plate=plate, data_dir=DATA)
    return PATHS.image_dir(plate)


def local_images_digest(plate: str) -> str:
    """For source: local, a digest of the plate folder's image files (name, size, modification time), a parameter
    of the download job: Snakemake reruns a plate whose images changed, and everything after it. Other sources: ''."""
    return folder_digest(plate_image_dir(plate)) if config["source"] == "local" else ""


def illum_functions(plate: str) -> list[str]:
    """A plate's illumination functions, one per fluorescent channel (both branches read them)."""
    return [PATHS.illum_function(plate, channel) for channel in CHANNELS]


def source_args(wildcards) -> str:
    """The source-specific options of `paintbench download` for one plate."""
    if config["source"] == "s3":
        return options(S3_OPTIONS, TRANSFER_OPTIONS)
    if config["source"] == "synthetic":
        return f"--ground-truth {PATHS.ground_truth()} {options(GENERATOR_OPTIONS)}"
    return ""


def gallery_args(wildcards) -> str:
    return options(S3_OPTIONS) if config["illum"]["source"] == "gallery" else ""


def vit_train_args(wildcards) -> str:
    """vit-pretrain's options for one method: the shared keys with the method's overrides, its settings, views,
    tracking."""
    method = METHOD[wildcards.method]
    effective = {f"vit.{key}": method[key] for key in VIT_TRAINING_KEYS}
    compile_flag = "" if VIT["compile"] is None else ("--compile" if VIT["compile"] else "--no-compile")
    shared = render(PRETRAIN_OPTIONS, config, {**RESOLVED, **effective})
    return f"--method {wildcards.method} --settings '{json_text(method['settings'])}' {compile_flag} {shared}"


def json_text(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))


def chain_step_options(chain: str) -> str:
    """The options (profiles.steps) of the chain's own steps only: changing one step's options reruns the chains
    that use it, not every chain. The heldout step is given the fine-tuning split."""
    steps = {**config["profiles"]["steps"], "heldout": {"split": PATHS.finetune_split()}}
    return json_text({step: steps[step] for step in CHAINS[chain] if step in steps})


def chain_inputs(wildcards) -> list[str]:
    """What a chain reads besides the annotated profiles: the split, for a chain with the heldout step."""
    return [PATHS.finetune_split()] if "heldout" in CHAINS[wildcards.chain] else []


def vit_encoder_args() -> str:
    """A user checkpoint may be a plain state_dict: its architecture then comes from the config (a paintbench
    checkpoint must then have been trained with the same architecture)."""
    if not any(METHOD[method]["checkpoint"] for method in RUN_METHODS):
        return ""
    return f"--model {VIT['model']} {options(MODEL_OPTIONS[1:])}"


def encoder_entries() -> dict[str, dict]:
    """encoders.<name> as encoder-embed takes them: checkpoint paths resolved, unset keys (the format's) left out;
    each fine-tuned one (<name>_ft) as its parent with the run's fine-tuned backbone."""
    entries = {}
    for name, entry in ENCODERS.items():
        given = {k: v for k, v in entry.items() if v is not None and k != "chains"}
        if given["checkpoint"] != "random":
            given["checkpoint"] = str(resolve_input_path(given["checkpoint"], workflow_dir=WORKFLOW_DIR))
        entries[name] = given
    for tuned, parent in FINETUNED_ENCODERS.items():
        entries[tuned] = {**entries[parent], "checkpoint": PATHS.encoder_file(tuned, "backbone.pt")}
    return entries


def encoder_checkpoints(names=None) -> list[str]:
    """The weight files of the named encoders (default: every one encoder_embed runs)."""
    entries = encoder_entries()
    return [entries[n]["checkpoint"] for n in (names or entries) if entries[n]["checkpoint"] != "random"]


def plates_illum(plates) -> list[str]:
    """The illumination functions of several plates."""
    return [path for plate in plates for path in illum_functions(plate)]


def only(names) -> str:
    """A wildcard constraint matching exactly `names`; with none, matching nothing."""
    return alternatives(names) if names else "(?!)"


def precomputed_table(wildcards) -> str:
    path = PRECOMPUTED[wildcards.feature_set]["path"].format(plate=wildcards.plate)
    return str(resolve_input_path(path, workflow_dir=WORKFLOW_DIR))


def plate_qc_fragments(wildcards) -> list[str]:
    """What each image-reading stage of the run's feature sets recorded about the plate."""
    plate = wildcards.plate
    fragments = [PATHS.qc_fragment(plate, "download"), PATHS.qc_fragment(plate, "illum")]
    if CELLPROFILER in IMAGE_SETS:
        fragments.append(PATHS.skipped_fields(plate))
    if RUN_METHODS:
        fragments += [PATHS.qc_fragment(plate, "vit_crops"), PATHS.qc_fragment(plate, "vit_embed")]
    if ENCODERS:
        fragments.append(PATHS.qc_fragment(plate, "encoder_embed"))
    return fragments


def tagged(mapping: dict) -> str:
    """NAME=FILE words of a mapping (the report commands' inputs)."""
    return " ".join(f"{name}={path}" for name, path in mapping.items())


def report_sets(scope: str) -> dict[str, str]:
    """NAME -> profile set of the report's inputs: every profile set by its own name ("all": the summary, the
    bake-off), or each feature set's headline chain under the feature set's name ("headline": figures, the page)."""
    return {ps: ps for ps in PROFILE_SETS} if scope == "all" else HEADLINE_SETS


def retrieval_results(scope: str, per_query: bool = False) -> dict[str, dict[str, str]]:
    sets = report_sets(scope)
    return {task: {name: PATHS.retrieval(ps, task, per_query) for name, ps in sets.items()} for task in TASKS}


def target_id_tables(scope: str) -> dict[str, dict[str, str]]:
    """The target_id stage's tables: summary, per-query, polypharmacology and pairs."""
    sets = report_sets(scope)
    return {table: {name: PATHS.target_id(ps, table) for name, ps in sets.items()} for table in TARGET_ID_TABLES}


def report_files(scope: str = "headline") -> dict[str, dict[str, str]]:
    """Every file the report reads, by role and owner (profile set, feature set, plate or method): only what the
    run's feature sets produce, decided here in the DAG."""
    targets = target_id_tables(scope)
    sets = report_sets(scope)
    files = {**retrieval_results(scope), "replicate_ap": retrieval_results(scope, per_query=True)[TASKS[0]],
             "shortlists": targets["summary"], "polypharmacology": targets["polypharmacology"],
             "pairs": targets["pairs"],
             "profiles": {fs: PATHS.scored(HEADLINE_SETS[fs]) for fs in IMAGE_SETS},
             "layout_controls": {name: PATHS.layout_controls(ps) for name, ps in sets.items()},
             "chain_steps": {name: PATHS.chain_steps(ps) for name, ps in sets.items()}}
    if IMAGE_SETS:
        files["illum"] = {f"{plate}/{channel}": PATHS.illum_function(plate, channel) for plate in PLATES
                          for channel in CHANNELS}
        files["qc"] = {plate: PATHS.plate_qc(plate) for plate in PLATES}
    if CELLPROFILER in IMAGE_SETS:
        files["cell_counts"] = {plate: PATHS.well_profiles(CELLPROFILER, plate) for plate in PLATES}
    if RUN_METHODS:
        files["crops"] = {plate: PATHS.crops(plate) for plate in PLATES}
        files["crop_centres"] = {plate: PATHS.crops(plate, "centres.parquet") for plate in PLATES}
    if PRETRAINED:
        files["train_logs"] = {method: PATHS.vit_file(method, "train_log.tsv") for method in PRETRAINED}
    if "mae" in PRETRAINED:
        files["mae_checkpoint"] = {"mae": PATHS.vit_file("mae", "checkpoint.pt")}
    if config["source"] == "synthetic":
        files["ground_truth"] = {"truth": PATHS.ground_truth()}
    return files


# The report commands' options for each role of report_files().
REPORT_OPTIONS = {**{task: f"--{task.replace('_', '-')}" for task in TASKS}, "replicate_ap": "--replicate-ap",
                  "shortlists": "--shortlists", "polypharmacology": "--polypharmacology", "pairs": "--pairs",
                  "profiles": "--profiles", "layout_controls": "--layout-controls", "chain_steps": "--chain-steps",
                  "cell_counts": "--cell-counts", "qc": "--qc", "crops": "--crops",
                  "crop_centres": "--crop-centres", "train_logs": "--train-log"}
UNTAGGED = {"illum": "--illum", "mae_checkpoint": "--mae-checkpoint", "ground_truth": "--ground-truth"}


def report_inputs(*roles: str, scope: str = "headline"):
    """An input function of the report's rules, the files of `roles` as a dict of file lists (for `unpack`)."""
    def inputs(wildcards) -> dict[str, list[str]]:
        files = report_files(scope)
        return {role: list(files[role].values()) for role in roles if files.get(role)}
    return inputs


def report_args(*roles: str, scope: str = "headline") -> str:
    """The report command's options naming the files of `roles` (the same files report_inputs declares)."""
    files = report_files(scope)
    words = []
    for role in roles:
        if not files.get(role):
            continue
        if role in UNTAGGED:
            words.append(f"{UNTAGGED[role]} {' '.join(files[role].values())}")
        else:
            words.append(f"{REPORT_OPTIONS[role]} {tagged(files[role])}")
    return " ".join(words)


def paper_values() -> str:
    """The paper's CellProfiler values: metadata_dir's copy if it has one, else the bundled one (own plates need
    none). Decided when the DAG is built."""
    own = Path(METADATA_DIR) / PAPER_TABLE
    return str(own) if own.exists() else str(BUNDLED_METADATA / PAPER_TABLE)


PAPER_TABLE = "cpjump1_published_cellprofiler.tsv"


def all_outputs() -> list[str]:
    """The report, and the run-wide table of missing images when the run reads any."""
    return [PATHS.report_html(), PATHS.summary(), *([PATHS.missing_fields()] if IMAGE_SETS else [])]
