"""`paintbench vit-crops | vit-pretrain | vit-embed`: the ViT branch's commands (registered by paintbench.cli; torch is
imported by the commands, never at registration, so every other command starts without it)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from paintbench.cli_format import METADATA_HELP, add_command

log = logging.getLogger("paintbench")


def _encoder_config(args: argparse.Namespace) -> dict:
    return {"model": args.model, "img_size": args.input_size, "patch_size": args.patch_size, "in_chans": 5,
            "kwargs": json.loads(args.model_kwargs)}


def _set_cpu_threads(threads: int, num_workers: int) -> None:
    """On CPU, leave the worker processes their cores instead of oversubscribing."""
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(max(1, threads - num_workers))


def _write_qc(records: list[dict], path: str | None) -> None:
    if path:
        from paintbench.atomic import write_table
        from paintbench.qc import qc_table

        write_table(qc_table(records), path)


def cmd_vit_crops(args: argparse.Namespace) -> None:
    from paintbench.atomic import read_table
    from paintbench.vit.crops import build_crop_cache

    cache = build_crop_cache(read_table(args.load_data), Path(args.illum_dir), Path(args.output_prefix),
                             mode=args.mode, crop_size=args.crop_size, num_workers=args.num_workers, seed=args.seed,
                             max_crops_per_field=args.max_crops_per_field, sample_per_field=args.sample_per_field,
                             skip_bad_fields=args.skip_bad_fields)
    _write_qc(cache.skipped, args.qc_output)
    log.info("%d crop centres, pretraining sample of %d crops -> %s.npy", len(cache.centres), len(cache.index),
             args.output_prefix)


def _mae_flags(args: argparse.Namespace) -> dict:
    """The MAE options given on the command line, as method settings."""
    flags = {"mask_ratio": args.mask_ratio, "decoder_dim": args.decoder_dim, "decoder_depth": args.decoder_depth,
             "decoder_heads": args.decoder_heads, "norm_pix_loss": args.norm_pix_loss}
    return {k: v for k, v in flags.items() if v is not None}


def _relaunch_with_torchrun(processes: int) -> None:
    """Run this same command as `processes` torchrun workers on this node (one per GPU), then exit with them."""
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "paintbench", *sys.argv[1:]]
    log.info("launching %d processes: %s", processes, " ".join(command))
    raise SystemExit(subprocess.call(command, env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))}))


def cmd_vit_pretrain(args: argparse.Namespace) -> None:
    import os

    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_with_torchrun(args.gpus)
    from paintbench.vit.crops import CropDataset, fingerprint
    from paintbench.vit.train import pretrain

    workers = 0 if args.device == "cpu" or args.num_workers <= 1 else args.num_workers
    _set_cpu_threads(args.num_workers, 0)
    crops = CropDataset(args.crops)
    settings = {**json.loads(args.settings), **(_mae_flags(args) if args.method == "mae" else {})}
    log.info("%s pretraining on %d crops of %d plate(s)", args.method, len(crops), len(args.crops))
    track = None
    if args.track_every:
        from paintbench.vit.tracking import replicate_tracker

        track = replicate_tracker(crops, crops.index, args.metadata_dir, args.input_size, args.pooling,
                                  args.track_crops_per_well, seed=args.seed)
    pretrain(crops, _encoder_config(args), Path(args.out_dir), method=args.method, settings=settings,
             views=json.loads(args.views), pooling=args.pooling, steps=args.steps, batch_size=args.batch_size,
             lr=args.lr, warmup_steps=args.warmup_steps, checkpoint_every=args.checkpoint_every, seed=args.seed,
             weight_decay=args.weight_decay, device=args.device, num_workers=workers, precision=args.precision,
             compile_model=args.compile, data_fingerprint=fingerprint(args.crops), track=track,
             track_every=args.track_every)


def cmd_vit_embed(args: argparse.Namespace) -> None:
    from paintbench.vit import pick_device
    from paintbench.vit.embed import embed_plate
    from paintbench.vit.model import load_encoder

    from paintbench.atomic import read_table
    from paintbench.vit.stream import CacheSource, ImageSource

    _set_cpu_threads(args.num_workers, args.num_workers)
    if len(args.encoder) != len(args.output):
        raise SystemExit(f"vit-embed: {len(args.encoder)} --encoder files but {len(args.output)} --output files; "
                         "give one output per encoder, in the same order")
    given = _encoder_config(args) if args.model else None
    encoders = [load_encoder(path, pick_device(args.device), given) for path in args.encoder]
    if args.load_data:
        source = ImageSource(read_table(args.load_data), Path(args.illum_dir), Path(args.crops), args.skip_bad_fields)
    else:
        source = CacheSource(Path(args.crops))
    embed_plate(source, encoders, [Path(output) for output in args.output], pooling=args.pooling,
                batch_size=args.batch_size, device=args.device, num_workers=args.num_workers)
    _write_qc(source.skipped, args.qc_output)


def _model_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--model", required=required, help="timm model name, e.g. vit_small_patch16_224")
    p.add_argument("--input-size", type=int, default=224, help="model input size in pixels (crops are resized to it)")
    p.add_argument("--patch-size", type=int, default=16, help="ViT patch size in pixels")
    p.add_argument("--model-kwargs", default="{}", help="JSON of extra timm.create_model arguments")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "vit-crops", "one plate's crop centres, normalization and pretraining sample of crops",
                    ["paintbench vit-crops --load-data results/load_data/BR00116991.csv "
                     "--illum-dir results/illum/BR00116991 --sample-per-field 16 "
                     "--qc-output results/qc/BR00116991/vit_crops.tsv --output-prefix results/vit/crops/BR00116991"])
    p.add_argument("--load-data", required=True, help="the plate's LoadData CSV")
    p.add_argument("--illum-dir", required=True, help="folder with <plate>_Illum<Channel>.npy")
    p.add_argument("--mode", choices=["tiles", "nuclei"], default="nuclei",
                   help="a grid of tiles, or single-cell crops centred on nuclei")
    p.add_argument("--crop-size", type=int, default=160, help="crop (tile) size in field pixels")
    p.add_argument("--max-crops-per-field", type=int, default=None, help="cap on every field's crops (embedding too)")
    p.add_argument("--sample-per-field", type=int, default=None,
                   help="crops per field kept on disk for pretraining (default: all)")
    p.add_argument("--num-workers", type=int, default=2, help="processes reading the fields")
    p.add_argument("--seed", type=int, default=0, help="seed of the crop subsets")
    p.add_argument("--skip-bad-fields", action="store_true", help="leave unreadable fields out and record them")
    p.add_argument("--qc-output", default=None, help="TSV of the fields left out")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX.npy/.parquet (sample), PREFIX.centres.parquet, PREFIX.norm.json")
    p.set_defaults(func=cmd_vit_crops)

    p = add_command(sub, "vit-pretrain", "self-supervised pretraining (MAE, DINO or SimCLR) on crop caches",
                    ["paintbench vit-pretrain --crops results/vit/crops/BR00116991 results/vit/crops/BR00116992 "
                     "--method dino --model vit_small_patch16_224 --steps 20000 --out-dir results/vit/dino"])
    p.add_argument("--crops", nargs="+", required=True, help="crop cache prefixes")
    p.add_argument("--out-dir", required=True, help="checkpoint.pt, encoder.pt, train_log.tsv, train_loss.png")
    p.add_argument("--method", choices=["mae", "dino", "simclr"], default="mae", help="self-supervised objective")
    p.add_argument("--settings", default="{}", help="JSON of the method's settings (config vit.<method>)")
    p.add_argument("--views", default="{}", help="JSON of the view augmentations of DINO and SimCLR (config vit.views)")
    _model_options(p, required=True)
    p.add_argument("--pooling", choices=["cls", "mean"], default="mean",
                   help="crop embedding the objectives train (DINO, SimCLR) and embedding uses")
    p.add_argument("--mask-ratio", type=float, default=None, help="MAE: share of patches hidden (default 0.75)")
    p.add_argument("--decoder-dim", type=int, default=None, help="MAE decoder width")
    p.add_argument("--decoder-depth", type=int, default=None, help="MAE decoder blocks")
    p.add_argument("--decoder-heads", type=int, default=None, help="MAE decoder attention heads")
    p.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="MAE: regress per-patch standardized pixels (discards patch intensity; off by default)")
    p.add_argument("--steps", type=int, required=True, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=256, help="global batch (split over --gpus processes)")
    p.add_argument("--lr", type=float, default=1.5e-4, help="peak learning rate (AdamW, warmup then cosine)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    p.add_argument("--warmup-steps", type=int, default=1000, help="steps of the linear learning-rate warmup")
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between resumable checkpoints")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization, sampling and views")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the objective (default: on CUDA only)")
    p.add_argument("--gpus", type=int, default=1,
                   help="processes on this node (torchrun, DistributedDataParallel): one per GPU; gloo on CPU")
    p.add_argument("--num-workers", type=int, default=4, help="DataLoader workers (CPU threads on CPU)")
    p.add_argument("--track-every", type=int, default=0,
                   help="every N steps, replicate-retrieval mAP of a fixed crop sample (log only; 0 = off)")
    p.add_argument("--track-crops-per-well", type=int, default=8, help="crops per well in the tracked sample")
    p.add_argument("--metadata-dir", default=None, help="CPJUMP1 metadata for tracking; default: the bundled config/metadata")
    p.set_defaults(func=cmd_vit_pretrain)

    p = add_command(sub, "vit-embed", "well-level embeddings of every crop of one plate",
                    ["paintbench vit-embed --crops results/vit/crops/BR00116991 "
                     "--load-data results/load_data/BR00116991.csv --illum-dir results/illum/BR00116991 "
                     "--encoder results/vit/mae/encoder.pt results/vit/dino/encoder.pt "
                     "--qc-output results/qc/BR00116991/vit_embed.tsv "
                     "--output results/profiles/vitmae/BR00116991.parquet results/profiles/vitdino/BR00116991.parquet"])
    p.add_argument("--crops", required=True, help="crop prefix (its .centres.parquet and .norm.json, or a full cache)")
    p.add_argument("--load-data", default=None,
                   help="the plate's LoadData CSV: crops are cut from the images (else read from the cache)")
    p.add_argument("--illum-dir", default=None, help="with --load-data: the plate's illumination functions")
    p.add_argument("--skip-bad-fields", action="store_true", help="leave unreadable fields out and record them")
    p.add_argument("--qc-output", default=None, help="TSV of the fields left out")
    p.add_argument("--encoder", nargs="+", required=True,
                   help="encoder.pt / checkpoint.pt, or a timm state_dict (give --model); several embed the same "
                        "decoded crops")
    _model_options(p, required=False)
    p.add_argument("--pooling", choices=["cls", "mean"], default="mean",
                   help="crop embedding: mean of the patch tokens or the CLS token (as pretrained)")
    p.add_argument("--batch-size", type=int, default=512, help="crops per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    p.add_argument("--num-workers", type=int, default=2, help="processes decoding the images")
    p.add_argument("--output", nargs="+", required=True, help="well-level Parquet per --encoder, in the same order")
    p.set_defaults(func=cmd_vit_embed)
