"""`paintbench finetune-split | vit-finetune | encoder-finetune`: the commands of workflow/rules/finetune.smk, the
second phase (torch is imported by the commands, never at registration)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from paintbench.cli.options import (METADATA_DIR, NUM_WORKERS, SKIP_BAD_FIELDS, ConfigOption, add_command,
                                    add_config_options, add_illum, illum_folder, resolved_metadata_dir,
                                    set_cpu_threads)
from paintbench.registry import CHANNELS

log = logging.getLogger("paintbench")

SPLIT_OPTIONS = [
    ConfigOption("--heldout-fraction", "vit.finetune.heldout_fraction", "share of the perturbations held out"),
    ConfigOption("--seed", "vit.finetune.seed", "seed of the split"),
    METADATA_DIR,
]
TRAINING_OPTIONS = [
    ConfigOption("--steps", "vit.finetune.steps", "optimizer steps"),
    ConfigOption("--batch-size", "vit.finetune.batch_size", "crops per step"),
    ConfigOption("--lr", "vit.finetune.lr", "peak learning rate (AdamW, warmup then cosine)"),
    ConfigOption("--weight-decay", "vit.finetune.weight_decay", "AdamW weight decay"),
    ConfigOption("--warmup-steps", "vit.finetune.warmup_steps", "steps of the linear learning-rate warmup"),
    ConfigOption("--seed", "vit.finetune.seed", "seed of the head's initialization, the batches and the crop sample"),
    ConfigOption("--device", "vit.device", "auto (cuda when available), cpu or cuda[:N]"),
    METADATA_DIR,
]
FINETUNE_OPTIONS = [
    *TRAINING_OPTIONS,
    ConfigOption("--pooling", "vit.pooling", "the embedding the head classifies (as the encoder embeds)"),
]
ENCODER_FINETUNE_OPTIONS = [
    *TRAINING_OPTIONS,
    ConfigOption("--max-crops", "vit.finetune.max_crops", "crops of the sample held in memory (float32, the "
                                                         "format's crop size), the same share from each plate"),
    SKIP_BAD_FIELDS,
]


def cmd_finetune_split(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import write_table
    from paintbench.holdout import leaks, split_perturbations
    from paintbench.metadata import plate_layout

    layouts = pd.concat([plate_layout(p, resolved_metadata_dir(args)) for p in args.plates], ignore_index=True)
    split = split_perturbations(layouts, args.heldout_fraction, args.seed)
    shared = leaks(split, layouts)
    if shared:  # cannot happen by construction; a guard against a future edit
        raise ValueError(f"finetune-split: genes on both sides: {shared[:5]}")
    write_table(split, args.output)
    counts = split["side"].value_counts().to_dict()
    log.info("split of %d perturbations in %d groups: %s -> %s", len(split), split["group"].nunique(), counts,
             args.output)


def cmd_vit_finetune(args: argparse.Namespace) -> None:
    import pandas as pd

    from paintbench.atomic import read_table
    from paintbench.metadata import plate_layout
    from paintbench.vit.crops import CropDataset
    from paintbench.vit.finetune import LabelledCrops, finetune
    from paintbench.vit.model import load_encoder

    set_cpu_threads(args.num_workers, 0)
    encoder, config = load_encoder(args.encoder)
    crops = CropDataset(args.crops)
    plates = sorted(set(crops.index["Metadata_Plate"]))
    layout = pd.concat([plate_layout(p, resolved_metadata_dir(args)) for p in plates], ignore_index=True)
    data = LabelledCrops(crops, layout, read_table(args.split))
    log.info("fine-tuning on %d crops of %d classes (training side and negative controls; %d crops of held-out "
             "perturbations never read)", len(data), len(data.labels), len(crops) - len(data))
    workers = 0 if args.device == "cpu" or args.num_workers <= 1 else args.num_workers
    finetune(encoder, config, data, Path(args.out_dir), pooling=args.pooling, method=Path(args.out_dir).name,
             **_training(args), num_workers=workers)


def cmd_encoder_finetune(args: argparse.Namespace) -> None:
    """An external encoder fine-tuned on its own crops of the training side's wells (paintbench.vit.finetune)."""
    import pandas as pd

    from paintbench.atomic import read_table
    from paintbench.encoder_formats import FINETUNABLE, resolve
    from paintbench.metadata import plate_layout
    from paintbench.vit.encoders import load_embedder
    from paintbench.vit.finetune import finetune_encoder, sample_encoder_crops, well_labels
    from paintbench.vit.stream import Geometry

    set_cpu_threads(args.num_workers, 0)
    spec = resolve(args.name, json.loads(args.encoder))
    if spec.format not in FINETUNABLE:
        raise ValueError(f"encoder-finetune: {args.name} is a {spec.format} model; fine-tuning takes "
                         f"{', '.join(FINETUNABLE)}")
    embedder = load_embedder(spec)  # the weights are checked before any image is read
    plates, layouts = [], []
    for path in args.load_data:
        load_data = read_table(path)
        plate = str(load_data["Metadata_Plate"].iloc[0])
        plates.append((load_data, illum_folder(args, plate, CHANNELS)))
        layouts.append(plate_layout(plate, resolved_metadata_dir(args)))
    labels = well_labels(pd.concat(layouts, ignore_index=True), read_table(args.split))
    data = sample_encoder_crops(plates, labels, Geometry(*spec.geometry), args.max_crops, args.seed,
                                num_workers=args.num_workers, skip_bad_fields=args.skip_bad_fields)
    log.info("fine-tuning %s on %d crops (%.0f MB) of %d classes from %d wells of the training side and negative "
             "controls; no held-out well was read", spec.name, len(data), data.crops.nbytes / 2**20, len(data.labels),
             len(data.fields[["Metadata_Plate", "Metadata_Well"]].drop_duplicates()))
    finetune_encoder(embedder, data, Path(args.out_dir), **_training(args), num_workers=0)


def _training(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "warmup_steps": args.warmup_steps, "seed": args.seed, "device": args.device}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "finetune-split", "the seeded, grouped split of the run's perturbations for fine-tuning",
                    ["paintbench finetune-split --plates BR00116991 BR00117000 --output results/vit/finetune/split.tsv"])
    p.add_argument("--plates", nargs="+", required=True, help="the run's plate barcodes")
    add_config_options(p, SPLIT_OPTIONS)
    p.add_argument("--output", required=True, help="one row per perturbation: its group and side (TSV)")
    p.set_defaults(func=cmd_finetune_split)

    p = add_command(sub, "vit-finetune", "fine-tune a pretrained encoder on the training side of the split",
                    ["paintbench vit-finetune --encoder results/vit/mae/encoder.pt --crops results/vit/crops/BR00116991 "
                     "--split results/vit/finetune/split.tsv --out-dir results/vit/mae_ft"])
    p.add_argument("--encoder", required=True, help="the pretrained encoder.pt")
    p.add_argument("--crops", nargs="+", required=True, help="crop cache prefixes (their pretraining samples)")
    p.add_argument("--split", required=True, help="finetune-split's table")
    add_config_options(p, [*FINETUNE_OPTIONS, NUM_WORKERS])
    p.add_argument("--out-dir", required=True, help="writes encoder.pt and finetune_log.tsv")
    p.set_defaults(func=cmd_vit_finetune)


    p = add_command(sub, "encoder-finetune", "fine-tune an external encoder (config key encoders) on the training "
                    "side of the split", ["paintbench encoder-finetune --name cpssl --encoder '{\"format\": "
                    "\"cellpaintssl\", \"variant\": \"dino\", \"checkpoint\": \"weights/DINO-ViT-S.pth\"}' "
                    "--load-data results/load_data/BR00116991.csv "
                    "--illum results/illum/BR00116991/BR00116991_Illum{DNA,ER,RNA,AGP,Mito}.npy "
                    "--split results/vit/finetune/split.tsv --out-dir results/encoders/cpssl_ft"])
    p.add_argument("--name", required=True, help="the encoder's name: its entry's under encoders")
    p.add_argument("--encoder", required=True, help="JSON: its entry (the keys of an entry under encoders)")
    p.add_argument("--load-data", nargs="+", required=True, help="the LoadData CSV of each plate it learns from")
    add_illum(p)
    p.add_argument("--split", required=True, help="finetune-split's table")
    add_config_options(p, [*ENCODER_FINETUNE_OPTIONS, NUM_WORKERS])
    p.add_argument("--out-dir", required=True, help="writes backbone.pt and finetune_log.tsv")
    p.set_defaults(func=cmd_encoder_finetune)
