"""ViT branch throughput: end-to-end embedding (crop cache -> workers -> device -> model) against the bare
forward pass of the same model, batch size and device; MAE training steps/s; peak memory.

The ratio end-to-end / bare says whether the input pipeline keeps the model fed (goal >= 0.8).
CPU here; on a GPU machine run the same command with --device cuda (see README, "Measured").

  python scripts/bench_vit.py --model vit_small_patch16_224 --input-size 224 --patch-size 16 --crop-size 224 --fields 24
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from paintbench import CHANNELS
from paintbench.illum import illum_filename
from paintbench.loaddata import load_data_table
from paintbench.metadata import plate_layout, select_wells
from paintbench.synthetic import generate_plate, ground_truth
from paintbench.vit import build_encoder, pick_device
from paintbench.vit.crops import CropDataset, build_crop_cache
from paintbench.vit.embed import bare_forward_throughput, end_to_end_throughput
from paintbench.vit.model import build_mae

PLATE = "BR00116991"
CPJUMP1 = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}


def make_cache(work: Path, fields: int, field_size: int, crop_size: int, mode: str, workers: int) -> tuple[Path, float]:
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=0, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(PLATE), "all")[:fields]
    generate_plate(PLATE, wells, [1], CPJUMP1, truth, work / "images", field_size=field_size, cells_per_field=40)
    (work / "illum").mkdir()
    for channel in CHANNELS:
        np.save(work / "illum" / illum_filename(PLATE, channel), np.ones((field_size, field_size), np.float32))
    table = load_data_table(PLATE, work / "images", wells, [1], CPJUMP1)
    began = time.perf_counter()
    build_crop_cache(table, work / "illum", work / "crops", mode=mode, crop_size=crop_size, num_workers=workers)
    return work / "crops", fields / (time.perf_counter() - began)


def train_steps_per_s(encoder_config: dict, crops: Path, batch_size: int, steps: int, device: torch.device) -> float:
    mae = build_mae(encoder_config).to(device)
    optimizer = torch.optim.AdamW(mae.parameters(), lr=1e-4)
    data = CropDataset([crops])
    batch = torch.stack([data[i % len(data)] for i in range(batch_size)]).to(device)
    batch = torch.nn.functional.interpolate(batch, size=encoder_config["img_size"], mode="bilinear")
    for step in range(steps + 2):
        if step == 2:
            began = time.perf_counter()
        loss, _, _ = mae(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--model-kwargs", default="{}")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--mode", choices=["tiles", "nuclei"], default="tiles")
    parser.add_argument("--field-size", type=int, default=1080)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = pick_device(args.device)
    config = {"model": args.model, "img_size": args.input_size, "patch_size": args.patch_size, "in_chans": 5,
              "kwargs": json.loads(args.model_kwargs)}
    encoder = build_encoder(config["model"], config["img_size"], config["patch_size"], kwargs=config["kwargs"]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        crops, fields_per_s = make_cache(Path(tmp), args.fields, args.field_size, args.crop_size, args.mode, args.num_workers)
        n_crops = len(CropDataset([crops]))
        bare = bare_forward_throughput(encoder, args.input_size, args.batch_size, str(device), seconds=args.seconds)
        e2e = end_to_end_throughput(crops, encoder, config, args.batch_size, str(device), args.num_workers,
                                    seconds=args.seconds)
        steps = train_steps_per_s(config, crops, args.batch_size, args.train_steps, device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = [
        ("device", str(device), ""), ("model", f"{args.model} {args.input_size}px/{args.patch_size}", ""),
        ("crop cache build", f"{fields_per_s:.2f}", f"fields/s ({args.field_size}px, {n_crops} {args.mode} crops)"),
        ("bare forward", f"{bare['crops_per_s']:.1f}", f"crops/s (batch {args.batch_size})"),
        ("end-to-end embedding", f"{e2e['crops_per_s']:.1f}", f"crops/s ({args.num_workers} workers)"),
        ("end-to-end / bare", f"{e2e['crops_per_s'] / bare['crops_per_s']:.2f}", "(goal >= 0.8)"),
        ("MAE training", f"{steps:.3f}", f"steps/s (batch {args.batch_size})"),
        ("peak RSS", f"{peak:.0f}", "MiB (this process)"),
    ]
    if device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}", "MiB"))
    for name, value, unit in rows:
        print(f"{name:<24} {value:>12}  {unit}")


if __name__ == "__main__":
    main()
