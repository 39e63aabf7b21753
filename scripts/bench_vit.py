"""ViT branch disk and throughput at real cell density: what the branch stores against the images it reads,
end-to-end embedding (images -> workers -> device -> model, the pipeline's path; and from a cache of every crop,
the previous design) against the bare forward pass of the same model, batch size and device; MAE training
steps/s; peak memory.

The ratio end-to-end / bare says whether the input pipeline keeps the model fed (goal >= 0.8); the disk ratio
says whether the ViT branch stays within the size of its images (goal <= 1). CPU here; on a GPU machine run the
same command with --device cuda (see README, "Measured").

  python scripts/bench_vit.py --fields 8 --cells-per-field 150      # synthetic 1080 px fields, nuclei crops
  python scripts/bench_vit.py --real-field tests/data/real_site_BR00143976_C03_f03 --channels DNA=5,ER=2,RNA=6,AGP=3,Mito=4
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

from paintbench import CHANNELS
from paintbench.illum import illum_filename
from paintbench.loaddata import load_data_table
from paintbench.metadata import plate_layout, select_wells
from paintbench.synthetic import generate_plate, ground_truth
from paintbench.vit import build_encoder, pick_device
from paintbench.vit.crops import CropDataset, build_crop_cache, cache_files
from paintbench.vit.embed import bare_forward_throughput, end_to_end_throughput
from paintbench.vit.stream import CacheSource, ImageSource
from paintbench.vit.model import build_mae

PLATE = "BR00116991"
CPJUMP1 = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}


def make_fields(work: Path, args: argparse.Namespace) -> tuple[pd.DataFrame, int]:
    """A LoadData table of synthetic fields at the asked density, or of one real field; and the field size."""
    if args.real_field:
        channels = dict(item.split("=") for item in args.channels.split(","))
        name = next(Path(args.real_field).glob("r*c*f*p01-ch*sk1fk1fl1.tiff")).name
        well, site = f"{chr(64 + int(name[1:3]))}{name[4:6]}", int(name[7:9])
        table = load_data_table("REAL", Path(args.real_field), [well], [site], {k: int(v) for k, v in channels.items()})
        return table, int(tifffile.imread(Path(args.real_field) / name).shape[0])
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=0, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(PLATE), "all")[: args.fields]
    generate_plate(PLATE, wells, [1], CPJUMP1, truth, work / "images", field_size=args.field_size,
                   cells_per_field=args.cells_per_field)
    return load_data_table(PLATE, work / "images", wells, [1], CPJUMP1), args.field_size


def image_bytes(table: pd.DataFrame) -> int:
    return sum(Path(row[f"PathName_Orig{c}"]).joinpath(row[f"FileName_Orig{c}"]).stat().st_size
               for _, row in table.iterrows() for c in CHANNELS)


def cache_bytes(prefix: Path) -> int:
    return sum(p.stat().st_size for p in cache_files(prefix).values() if p.exists())


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--model-kwargs", default="{}")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=160)
    parser.add_argument("--mode", choices=["tiles", "nuclei"], default="nuclei")
    parser.add_argument("--field-size", type=int, default=1080)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--cells-per-field", type=int, default=150)
    parser.add_argument("--real-field", default=None, help="a folder holding one real field (Phenix names)")
    parser.add_argument("--channels", default="DNA=5,ER=4,RNA=3,AGP=2,Mito=1", help="with --real-field")
    parser.add_argument("--sample-per-field", type=int, default=16, help="the pretraining sample (vit.pretrain_crops_per_field)")
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
        work = Path(tmp)
        table, size = make_fields(work, args)
        plate = str(table["Metadata_Plate"].iloc[0])
        (work / "illum").mkdir()
        for channel in CHANNELS:
            np.save(work / "illum" / illum_filename(plate, channel), np.ones((size, size), np.float32))
        began = time.perf_counter()
        every = build_crop_cache(table, work / "illum", work / "every", args.mode, args.crop_size, args.num_workers)
        every_s = time.perf_counter() - began
        began = time.perf_counter()
        build_crop_cache(table, work / "illum", work / "sample", args.mode, args.crop_size, args.num_workers,
                                  sample_per_field=args.sample_per_field)
        sample_s = time.perf_counter() - began
        images = image_bytes(table)
        bare = bare_forward_throughput(encoder, args.input_size, args.batch_size, str(device), seconds=args.seconds)
        timed = len(every.centres) >= 4 * args.batch_size  # warm-up batches are not timed: enough must remain
        nothing = {"crops_per_s": float("nan")}
        stream = end_to_end_throughput(ImageSource(table, work / "illum", work / "sample"), encoder, config,
                                       args.batch_size, str(device), args.num_workers, seconds=args.seconds) if timed else nothing
        cached = end_to_end_throughput(CacheSource(work / "every"), encoder, config, args.batch_size, str(device),
                                       args.num_workers, seconds=args.seconds) if timed else nothing
        if not timed:
            print(f"note: {len(every.centres)} crops are too few to time embedding at batch {args.batch_size} "
                  "(4 batches needed); give more --fields or a smaller --batch-size")
        steps = train_steps_per_s(config, work / "sample", args.batch_size, args.train_steps, device)
        disk_every, disk_sample = cache_bytes(work / "every"), cache_bytes(work / "sample")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cells = len(every.centres) / len(table)
    rows = [
        ("device", str(device), ""), ("model", f"{args.model} {args.input_size}px/{args.patch_size}", ""),
        ("fields", f"{len(table)}", f"{size} px, {cells:.0f} {args.mode} crops per field ({args.crop_size} px)"),
        ("images", f"{images / 2**20:.1f}", "MiB"),
        ("cache of every crop", f"{disk_every / 2**20:.1f}", f"MiB = {disk_every / images:.2f}x the images "
                                                               f"(previous design; built at {len(table) / every_s:.2f} fields/s)"),
        ("pretraining sample", f"{disk_sample / 2**20:.1f}", f"MiB = {disk_sample / images:.2f}x the images "
                                                              f"({args.sample_per_field}/field + centres; {len(table) / sample_s:.2f} fields/s)"),
        ("bare forward", f"{bare['crops_per_s']:.1f}", f"crops/s (batch {args.batch_size})"),
        ("embedding from images", f"{stream['crops_per_s']:.1f}",
         f"crops/s = {stream['crops_per_s'] / bare['crops_per_s']:.2f}x bare ({args.num_workers} workers; goal >= 0.8)"),
        ("embedding from a cache", f"{cached['crops_per_s']:.1f}", f"crops/s = {cached['crops_per_s'] / bare['crops_per_s']:.2f}x bare"),
        ("MAE training", f"{steps:.3f}", f"steps/s (batch {args.batch_size})"),
        ("peak RSS", f"{peak:.0f}", "MiB (this process)"),
    ]
    if device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}", "MiB"))
    for name, value, unit in rows:
        print(f"{name:<24} {value:>12}  {unit}")


if __name__ == "__main__":
    main()
