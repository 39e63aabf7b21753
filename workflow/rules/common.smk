# Input functions and run-wide values shared by every rule file.
import json
import os
from functools import lru_cache
from pathlib import Path

import yaml

from paintbench.cellprofiler import shard_wells
from paintbench.config import VIT_FEATURE_SETS, resolve_command, resolve_input_path, vit_method
from paintbench.metadata import known_plates, plate_info, plate_layout, select_wells
from paintbench.plan import plate_disk_mb

RESULTS = config["results_dir"]
DATA = config["data_dir"]
# Relative input paths: the working directory's copy, else the workflow folder's (paintbench.config.PATH_RULE).
WORKFLOW_DIR = Path(workflow.basedir)
METADATA_DIR = str(resolve_input_path(config["metadata_dir"], workflow_dir=WORKFLOW_DIR))
PLATES = config["plates"]
FLUORESCENT = ["DNA", "ER", "RNA", "AGP", "Mito"]
CELLPROFILER = {
    **config["cellprofiler"],
    "pipeline": str(resolve_input_path(config["cellprofiler"]["pipeline"], workflow_dir=WORKFLOW_DIR)),
    "executable": resolve_command(config["cellprofiler"]["executable"], workflow_dir=WORKFLOW_DIR),
}

# published_cellprofiler: the consortium's own profiles of the same plates (s3 source), scored side by side;
# a run of it alone (config/paper.yaml) reads no image at all.
FEATURE_SETS = config["feature_sets"]
IMAGE_SETS = [fs for fs in FEATURE_SETS if fs == "cellprofiler" or fs in VIT_FEATURE_SETS]
VIT_METHODS = [VIT_FEATURE_SETS[fs] for fs in FEATURE_SETS if fs in VIT_FEATURE_SETS]
TASKS = ["replicate_retrieval", "sister_matching", "compound_gene_matching"]
VIT = config["vit"]
QC = config["qc"]
SKIP_BAD_FIELDS = "--skip-bad-fields" if QC["skip_bad_fields"] else ""
VIT_PRETRAIN_PLATES = VIT["pretrain_plates"] or PLATES
METHOD = {method: vit_method(config, method) for method in ("mae", "dino", "simclr")}
PRETRAINED = [m for m in VIT_METHODS if not METHOD[m]["checkpoint"]]  # methods this run pretrains itself


def vit_encoder(method: str) -> str:
    """A user-supplied encoder (vit.<method>.checkpoint) skips pretraining; otherwise the run pretrains its own."""
    given = METHOD[method]["checkpoint"]
    return str(resolve_input_path(given, workflow_dir=WORKFLOW_DIR)) if given else f"{RESULTS}/vit/{method}/encoder.pt"


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
    cpjump1 = set(known_plates(WORKFLOW_DIR / "config" / "metadata"))
    return "cpjump1" if set(PLATES) <= cpjump1 else "own"


def gpu_request(gpus: int) -> int:
    """GPUs a ViT job asks for: none when the run's ViTs are on the CPU (vit.device: cpu), so those jobs share the cores
    like any other instead of queueing one at a time behind the workstation profile's gpu=1 cap."""
    return 0 if VIT["device"] == "cpu" else gpus


def mem_mb(request: int) -> int:
    return min(request, MACHINE_MEM_MB) if LOCAL_RUN else request


def disk_mb(stage: str):
    """The disk a stage's job writes for its plate (paintbench.plan), for schedulers that place jobs by disk."""
    return lambda wildcards: plate_disk_mb(config, wildcards.plate, METADATA_DIR, stage)


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
    return shard_wells(plate_wells(plate), CELLPROFILER["wells_per_shard"])


def channel_arg() -> str:
    return ",".join(f"{name}={number}" for name, number in config["channels"].items() if number is not None)


def plate_image_dir(plate: str) -> str:
    if config["source"] == "local":
        return config["local"]["image_dir"].format(plate=plate, data_dir=DATA)
    return f"{DATA}/images/{plate}"


def source_args(wildcards) -> str:
    """The source-specific options of `paintbench download` for one plate."""
    if config["source"] == "s3":
        dl = config["download"]
        return f"{s3_args()} --workers {dl['workers']} --max-attempts {dl['max_attempts']}"
    if config["source"] == "synthetic":
        syn = config["synthetic"]
        return (
            f"--ground-truth {RESULTS}/synthetic/ground_truth.parquet --seed {syn['seed']}"
            f" --field-size {syn['field_size']} --cells-per-field {syn['cells_per_field']}"
        )
    return ""


def s3_args() -> str:
    """Options that locate the S3 endpoint, shared by the download and Gallery-illumination commands."""
    endpoint = f" --endpoint-url {config['endpoint_url']}" if config["endpoint_url"] else ""
    signed = "" if config["download"]["anonymous"] else " --signed"
    return f"--bucket {config['bucket']} --gallery-prefix {config['gallery_prefix']}{endpoint}{signed}"


def gallery_args(wildcards) -> str:
    return s3_args() if config["illum"]["source"] == "gallery" else ""


def encoder_config_args() -> str:
    kwargs = json.dumps(VIT["model_kwargs"], separators=(",", ":"))
    return (
        f"--model {VIT['model']} --input-size {VIT['input_size']} --patch-size {VIT['patch_size']}"
        f" --model-kwargs '{kwargs}'"
    )


def vit_train_args(wildcards) -> str:
    """vit-pretrain's options for one method: shared keys, the method's overrides and settings, views, tracking."""
    v, m = VIT, METHOD[wildcards.method]
    compact = lambda value: json.dumps(value, separators=(",", ":"))
    compile_flag = "" if v["compile"] is None else ("--compile" if v["compile"] else "--no-compile")
    return (
        f"{encoder_config_args()} --method {wildcards.method} --settings '{compact(m['settings'])}'"
        f" --views '{compact(v['views'])}' --pooling {v['pooling']} --steps {m['steps']} --batch-size {m['batch_size']}"
        f" --lr {m['lr']} --weight-decay {m['weight_decay']} --warmup-steps {m['warmup_steps']}"
        f" --checkpoint-every {v['checkpoint_every']} --seed {v['seed']} --device {v['device']}"
        f" --precision {v['precision']} {compile_flag} --gpus {v['gpus']} --track-every {v['track_every']}"
        f" --track-crops-per-well {v['track_crops_per_well']} --metadata-dir {METADATA_DIR}"
    )


def vit_encoder_args() -> str:
    """A user checkpoint may be a plain state_dict: its architecture then comes from the config (a paintbench
    checkpoint must then have been trained with the same architecture)."""
    return encoder_config_args() if any(METHOD[method]["checkpoint"] for method in VIT_METHODS) else ""


def plate_qc_fragments(wildcards) -> list[str]:
    """What each image-reading stage of the run's feature sets recorded about the plate."""
    plate = wildcards.plate
    fragments = [f"{RESULTS}/qc/{plate}/download.tsv", f"{RESULTS}/qc/{plate}/illum.tsv"]
    if "cellprofiler" in IMAGE_SETS:
        fragments.append(f"{RESULTS}/cellprofiler/{plate}/skipped_fields.tsv")
    if VIT_METHODS:
        fragments.append(f"{RESULTS}/qc/{plate}/vit_crops.tsv")
        fragments.append(f"{RESULTS}/qc/{plate}/vit_embed.tsv")
    return fragments


def report_inputs(wildcards) -> dict[str, list[str]]:
    """Everything the figures read: retrieval results, well profiles, illumination, crop caches, the MAE's log
    (only what the run's feature sets produce)."""
    inputs = {
        "results": expand(f"{RESULTS}/retrieval/{{fs}}/{{task}}{{suffix}}.parquet", fs=FEATURE_SETS, task=TASKS, suffix=["", "_ap"]),
        "normalized": expand(f"{RESULTS}/profiles/{{fs}}/normalized.parquet", fs=IMAGE_SETS),
        "target_id": target_id_tables(),
    }
    if IMAGE_SETS:
        inputs["illum"] = expand(rules.illum.output.functions, plate=PLATES)
    if "cellprofiler" in IMAGE_SETS:
        inputs["cell_counts"] = expand(f"{RESULTS}/profiles/cellprofiler/{{plate}}.parquet", plate=PLATES)
    if IMAGE_SETS:
        inputs["qc"] = expand(f"{RESULTS}/qc/{{plate}}.tsv", plate=PLATES) + [f"{RESULTS}/qc/missing_fields.tsv"]
    if VIT_METHODS:
        inputs["crops"] = expand(f"{RESULTS}/vit/crops/{{plate}}.parquet", plate=PLATES)
    if PRETRAINED:
        inputs["train_logs"] = expand(f"{RESULTS}/vit/{{method}}/train_log.tsv", method=PRETRAINED)
    return inputs


def target_id_tables() -> list[str]:
    """What the report reads of the target_id stage: its summary, per-query, polypharmacology and pair tables."""
    return expand(f"{RESULTS}/target_id/{{fs}}{{suffix}}.parquet", fs=FEATURE_SETS,
                  suffix=["", "_queries", "_polypharmacology", "_pairs"])


def retrieval_args() -> str:
    r = config["retrieval"]
    return (f"--protocol {r['protocol']} --compound-gene-negatives {r['compound_gene_negatives']}"
            f" --null-size {r['null_size']} --seed {r['seed']}")


def all_outputs() -> list[str]:
    return [f"{RESULTS}/reports/index.html", f"{RESULTS}/reports/summary.tsv"]
