"""`paintbench vit-crops | vit-pretrain | vit-embed | encoder-embed`: the commands of workflow/rules/vit.smk (torch is imported by
the commands, never at registration, so every other command starts without it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, NUM_WORKERS, SKIP_BAD_FIELDS, ConfigOption, add_command,
                                    add_config_options, add_illum, add_qc_output, illum_folder, resolved_metadata_dir,
                                    set_cpu_threads, tagged, tagged_files)
from paintbench.registry import CHANNELS, VIT_METHODS

log = logging.getLogger("paintbench")

CROP_OPTIONS = [
    ConfigOption("--mode", "vit.crop", "a grid of tiles, or single-cell crops centred on nuclei"),
    ConfigOption("--crop-size", "vit.crop_size", "crop (tile) size in field pixels"),
    ConfigOption("--max-crops-per-field", "vit.max_crops_per_field", "cap on every field's crops, embedding too "
                                                                    "(null: every one)"),
    ConfigOption("--sample-per-field", "vit.pretrain_crops_per_field",
                 "crops per field kept on disk for pretraining (null: all)"),
    ConfigOption("--seed", "vit.seed", "seed of the crop subsets"),
    SKIP_BAD_FIELDS,
]
MODEL_OPTIONS = [
    ConfigOption("--model", "vit.model", "timm model name"),
    ConfigOption("--input-size", "vit.input_size", "model input size in pixels (crops are resized to it)"),
    ConfigOption("--patch-size", "vit.patch_size", "ViT patch size in pixels"),
    ConfigOption("--model-kwargs", "vit.model_kwargs", "JSON of extra timm.create_model arguments"),
]
# The training keys a method may override (vit.<method>.steps, ...): the workflow passes the effective value.
TRAINING_OPTIONS = [
    ConfigOption("--steps", "vit.steps", "optimizer steps"),
    ConfigOption("--batch-size", "vit.batch_size", "global batch (split over --gpus processes)"),
    ConfigOption("--lr", "vit.lr", "peak learning rate (AdamW, warmup then cosine)"),
    ConfigOption("--weight-decay", "vit.weight_decay", "AdamW weight decay"),
    ConfigOption("--warmup-steps", "vit.warmup_steps", "steps of the linear learning-rate warmup"),
]
PRETRAIN_OPTIONS = [
    *MODEL_OPTIONS,
    ConfigOption("--views", "vit.views", "JSON of the view augmentations of DINO and SimCLR"),
    ConfigOption("--pooling", "vit.pooling", "crop embedding the objectives train (DINO, SimCLR) and embedding uses"),
    *TRAINING_OPTIONS,
    ConfigOption("--checkpoint-every", "vit.checkpoint_every", "steps between resumable checkpoints"),
    ConfigOption("--seed", "vit.seed", "seed of initialization, sampling and views"),
    ConfigOption("--device", "vit.device", "auto (cuda when available), cpu or cuda[:N]"),
    ConfigOption("--precision", "vit.precision", "auto: bf16 autocast on CUDA, fp32 on CPU"),
    ConfigOption("--gpus", "vit.gpus", "processes on this node (torchrun, DistributedDataParallel): one per GPU; "
                                       "gloo on CPU"),
    ConfigOption("--track-every", "vit.track_every", "every N steps, replicate-retrieval mAP of a fixed crop sample "
                                                     "(log only; 0 = off)"),
    ConfigOption("--track-crops-per-well", "vit.track_crops_per_well", "crops per well in the tracked sample"),
    METADATA_DIR,
]
EMBED_OPTIONS = [
    ConfigOption("--pooling", "vit.pooling", "crop embedding: mean of the patch tokens or the CLS token (as pretrained)"),
    ConfigOption("--batch-size", "vit.embed_batch_size", "crops per forward pass"),
    ConfigOption("--device", "vit.device", "auto (cuda when available), cpu or cuda[:N]"),
    SKIP_BAD_FIELDS,
]
MAE_FLAGS = ("mask_ratio", "decoder_dim", "decoder_depth", "decoder_heads", "norm_pix_loss")


def _encoder_config(args: argparse.Namespace) -> dict:
    return {"model": args.model, "img_size": args.input_size, "patch_size": args.patch_size, "in_chans": len(CHANNELS),
            "kwargs": args.model_kwargs}


def _write_qc(records: list[dict], path: str | None) -> None:
    if path:
        from paintbench.atomic import write_table
        from paintbench.qc import qc_table

        write_table(qc_table(records), path)


def cmd_vit_crops(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table
    from paintbench.vit.crops import build_crop_cache

    load_data = read_table(args.load_data)
    plate = str(load_data["Metadata_Plate"].iloc[0])
    cache = build_crop_cache(load_data, illum_folder(args, plate, CHANNELS), Path(args.output_prefix),
                             mode=args.mode, crop_size=args.crop_size, num_workers=args.num_workers, seed=args.seed,
                             max_crops_per_field=args.max_crops_per_field, sample_per_field=args.sample_per_field,
                             skip_bad_fields=args.skip_bad_fields)
    _write_qc(cache.skipped, args.qc_output)
    log.info("%d crop centres, pretraining sample of %d crops -> %s.npy", len(cache.centres), len(cache.index),
             args.output_prefix)


def _relaunch_with_torchrun(processes: int) -> None:
    """Run this same command as `processes` torchrun workers on this node (one per GPU), then exit with them."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "paintbench", *sys.argv[1:]]
    log.info("launching %d processes: %s", processes, " ".join(command))
    raise SystemExit(subprocess.call(command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}))


def cmd_vit_pretrain(args: argparse.Namespace) -> None:
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_with_torchrun(args.gpus)
    from paintbench.vit.crops import CropDataset, fingerprint
    from paintbench.vit.train import pretrain

    workers = 0 if args.device == "cpu" or args.num_workers <= 1 else args.num_workers
    set_cpu_threads(args.num_workers, 0)
    crops = CropDataset(args.crops)
    flags = {k: getattr(args, k) for k in MAE_FLAGS if getattr(args, k) is not None} if args.method == "mae" else {}
    settings = {**json.loads(args.settings), **flags}
    log.info("%s pretraining on %d crops of %d plate(s)", args.method, len(crops), len(args.crops))
    track = None
    if args.track_every:
        from paintbench.tracking import replicate_tracker

        track = replicate_tracker(crops, crops.index, resolved_metadata_dir(args), args.input_size, args.pooling,
                                  args.track_crops_per_well, seed=args.seed)
    pretrain(crops, _encoder_config(args), Path(args.out_dir), method=args.method, settings=settings,
             views=args.views, pooling=args.pooling, steps=args.steps, batch_size=args.batch_size,
             lr=args.lr, warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every, seed=args.seed,
             weight_decay=args.weight_decay, device=args.device, num_workers=workers, precision=args.precision,
             compile_model=args.compile, data_fingerprint=fingerprint(args.crops), track=track,
             track_every=args.track_every)


def cmd_vit_embed(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table
    from paintbench.vit.core import pick_device
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.model import load_encoder
    from paintbench.vit.stream import CacheSource, ImageSource

    set_cpu_threads(args.num_workers, args.num_workers)
    if len(args.encoder) != len(args.output):
        raise ValueError(f"vit-embed: {len(args.encoder)} --encoder files but {len(args.output)} --output files; "
                         "give one output per encoder, in the same order")
    given = _encoder_config(args) if args.model else None
    encoders = [load_encoder(path, pick_device(args.device), given) for path in args.encoder]
    if args.load_data:
        load_data = read_table(args.load_data)
        plate = str(load_data["Metadata_Plate"].iloc[0])
        source = ImageSource(load_data, illum_folder(args, plate, CHANNELS), Path(args.crops), args.skip_bad_fields)
    else:
        source = CacheSource(Path(args.crops))
    embed_plate(source, encoders, [Path(output) for output in args.output], pooling=args.pooling,
                batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    _write_qc(source.skipped, args.qc_output)


ENCODER_EMBED_OPTIONS = [EMBED_OPTIONS[2], SKIP_BAD_FIELDS]  # --device, --skip-bad-fields
def cmd_encoder_embed(args: argparse.Namespace) -> None:
    """Every external encoder of one plate: all weights loaded first (a mismatch fails before any image is read),
    then one pass over the images per crop geometry shared by several encoders."""
    from paintbench.atomic import read_table
    from paintbench.encoder_formats import resolve
    from paintbench.vit.core import pick_device
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.encoders import load_embedder
    from paintbench.vit.stream import Geometry, RawSource

    set_cpu_threads(args.num_workers, args.num_workers)
    entries = json.loads(args.encoders)
    outputs = tagged_files(args.output, "--output")
    if set(outputs) != set(entries):
        raise ValueError(f"encoder-embed: --output names {sorted(outputs)}, --encoders names {sorted(entries)}: "
                         "give one NAME=FILE per encoder")
    specs = [resolve(name, entry) for name, entry in entries.items()]
    device = pick_device(args.device)
    embedders = {spec.name: load_embedder(spec, device) for spec in specs}
    for spec in specs:
        log.info("encoder %s: %s", spec.name, json.dumps(entries[spec.name], sort_keys=True))
    load_data = read_table(args.load_data)
    plate = str(load_data["Metadata_Plate"].iloc[0])
    illum = illum_folder(args, plate, CHANNELS)
    groups: dict[tuple, list] = {}
    for spec in specs:
        groups.setdefault(spec.geometry, []).append(spec)
    skipped: dict[tuple, dict] = {}
    for (crop, size, foreground), group in groups.items():
        source = RawSource(load_data, illum, plate, Geometry(crop, size, foreground), args.skip_bad_fields)
        embed_plate(source, [embedders[s.name] for s in group], [Path(outputs[s.name]) for s in group],
                    batch_size=min(s.batch_size for s in group), device=args.device, num_workers=args.num_workers)
        skipped |= {tuple(sorted(r.items())): r for r in source.skipped}  # a bad field is bad for every geometry
    _write_qc(list(skipped.values()), args.qc_output)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "vit-crops", "one plate's crop centres, normalization and pretraining sample of crops",
                    ["paintbench vit-crops --load-data results/load_data/BR00116991.csv "
                     "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy --sample-per-field 16 "
                     "--qc-output results/qc/BR00116991/vit_crops.tsv --output-prefix results/vit/crops/BR00116991"])
    p.add_argument("--load-data", required=True, help="the plate's LoadData CSV")
    add_illum(p)
    add_config_options(p, [*CROP_OPTIONS, NUM_WORKERS])
    add_qc_output(p)
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX.npy/.parquet (sample), PREFIX.centres.parquet, PREFIX.norm.json")
    p.set_defaults(func=cmd_vit_crops)

    p = add_command(sub, "vit-pretrain", "self-supervised pretraining (MAE, DINO or SimCLR) on crop caches",
                    ["paintbench vit-pretrain --crops results/vit/crops/BR00116991 results/vit/crops/BR00116992 "
                     "--method dino --model vit_small_patch16_224 --steps 20000 --out-dir results/vit/dino"])
    p.add_argument("--crops", nargs="+", required=True, help="crop cache prefixes")
    p.add_argument("--out-dir", required=True, help="checkpoint.pt, encoder.pt, train_log.tsv, train_loss.png")
    p.add_argument("--method", choices=VIT_METHODS, default=VIT_METHODS[0], help="self-supervised objective")
    p.add_argument("--settings", default="{}", help="JSON of the method's settings (config vit.<method>; the "
                                                    "schema's defaults for what it leaves out)")
    add_config_options(p, PRETRAIN_OPTIONS)
    mae = p.add_argument_group("MAE settings (override --settings)")
    mae.add_argument("--mask-ratio", type=float, default=None, help="share of patches hidden (config vit.mae.mask_ratio)")
    mae.add_argument("--decoder-dim", type=int, default=None, help="decoder width (config vit.mae.decoder_dim)")
    mae.add_argument("--decoder-depth", type=int, default=None, help="decoder blocks (config vit.mae.decoder_depth)")
    mae.add_argument("--decoder-heads", type=int, default=None, help="decoder attention heads (config vit.mae.decoder_heads)")
    mae.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                     help="regress per-patch standardized pixels (config vit.mae.norm_pix_loss)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the objective (config key vit.compile; unset: on CUDA only)")
    NUM_WORKERS.add(p)
    p.set_defaults(func=cmd_vit_pretrain)

    p = add_command(sub, "vit-embed", "well-level embeddings of every crop of one plate",
                    ["paintbench vit-embed --crops results/vit/crops/BR00116991 "
                     "--load-data results/load_data/BR00116991.csv "
                     "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy "
                     "--encoder results/vit/mae/encoder.pt results/vit/dino/encoder.pt "
                     "--qc-output results/qc/BR00116991/vit_embed.tsv "
                     "--output results/profiles/vitmae/BR00116991.parquet results/profiles/vitdino/BR00116991.parquet"])
    p.add_argument("--crops", required=True, help="crop prefix (its .centres.parquet and .norm.json, or a full cache)")
    p.add_argument("--load-data", default=None,
                   help="the plate's LoadData CSV: crops are cut from the images (else read from the cache)")
    add_illum(p)
    add_qc_output(p)
    p.add_argument("--encoder", nargs="+", required=True,
                   help="encoder.pt / checkpoint.pt, or a timm state_dict (give --model); several embed the same "
                        "decoded crops")
    model = p.add_argument_group("architecture of a plain timm state_dict (paintbench encoders carry their own)")
    model.add_argument("--model", default=None,
                       help="timm model name (config key vit.model); unset: the architecture stored in the encoder file")
    add_config_options(model, MODEL_OPTIONS[1:])
    add_config_options(p, [*EMBED_OPTIONS, NUM_WORKERS])
    p.add_argument("--output", nargs="+", required=True, help="well-level Parquet per --encoder, in the same order")
    p.set_defaults(func=cmd_vit_embed)

    p = add_command(sub, "encoder-embed", "well-level embeddings of one plate by external encoders (config key encoders)",
                    ["paintbench encoder-embed --load-data results/load_data/BR00116991.csv "
                     "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy "
                     "--encoders '{\"cpssl\": {\"format\": \"cellpaintssl\", \"variant\": \"dino\", "
                     "\"checkpoint\": \"weights/DINO-ViT-S.pth\"}}' "
                     "--output cpssl=results/profiles/cpssl/BR00116991.parquet"])
    p.add_argument("--load-data", required=True, help="the plate's LoadData CSV")
    add_illum(p)
    p.add_argument("--encoders", required=True,
                   help="JSON: name -> encoder entry (the keys of config encoders.<name>; the format's published "
                        "defaults for the rest)")
    add_config_options(p, [*ENCODER_EMBED_OPTIONS, NUM_WORKERS])
    add_qc_output(p)
    p.add_argument("--output", nargs="+", type=tagged, required=True, metavar="NAME=FILE",
                   help="well-level Parquet of each encoder")
    p.set_defaults(func=cmd_encoder_embed)
