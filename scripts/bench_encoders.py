"""External encoders' throughput: end to end (images -> DataLoader workers decoding and cutting the format's crops ->
device -> the format's scaling and model) against the bare forward of the same embedder on one batch already on the
device, per format, with the format's published architecture and input size (random weights: the cost does not
depend on them); peak memory.

The ratio end-to-end / bare says whether decoding and cutting keep the model fed (goal >= 0.8).

  python scripts/bench_encoders.py                                # every image format, synthetic 1080 px fields
  python scripts/bench_encoders.py --formats cell_dino --fields 4 --device cuda
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
from paintbench.encoder_formats import resolve
from paintbench.loaddata import load_data_table
from paintbench.metadata import plate_layout, select_wells
from paintbench.paths import illum_filename
from paintbench.synthetic import generate_plate, ground_truth
from paintbench.vit.core import autocast, pick_device
from paintbench.vit.embed import embed_batches
from paintbench.vit.encoders import load_embedder
from paintbench.vit.stream import Geometry, RawSource

PLATE = "BR00116991"
CPJUMP1 = {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}
IMAGE_FORMATS = ["cellpaintssl", "cell_dino", "openphenom"]


def bare_crops_per_s(embedder, crop_size: int, batch_size: int, device: torch.device, seconds: float) -> float:
    x = torch.rand(batch_size, len(CHANNELS), crop_size, crop_size, device=device) * 20000
    with torch.inference_mode(), autocast(device):
        embedder(x)
        began, batches = time.perf_counter(), 0
        while time.perf_counter() - began < seconds or batches < 2:
            embedder(x)
            batches += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batches * batch_size / (time.perf_counter() - began)


def end_to_end_crops_per_s(source: RawSource, embedder, batch_size: int, device: torch.device,
                           num_workers: int) -> tuple[float, int]:
    crops, began = 0, None
    for k, (_, (emb,)) in enumerate(embed_batches(source, [embedder], batch_size=batch_size, device=device,
                                                  num_workers=num_workers, progress=False)):
        if k == 0:  # worker start-up and the first decode are not timed
            began = time.perf_counter()
            continue
        crops += len(emb)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return crops / (time.perf_counter() - began) if crops else float("nan"), crops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", nargs="+", default=IMAGE_FORMATS, choices=IMAGE_FORMATS)
    parser.add_argument("--fields", type=int, default=6)
    parser.add_argument("--field-size", type=int, default=1080)
    parser.add_argument("--cells-per-field", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    device = pick_device(args.device)
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=0, strong_fraction=0.4, null_fraction=0.3)
        wells = select_wells(plate_layout(PLATE), "all")[: args.fields]
        generate_plate(PLATE, wells, [1], CPJUMP1, truth, work / "images", field_size=args.field_size,
                       cells_per_field=args.cells_per_field)
        table = load_data_table(PLATE, work / "images", wells, [1], CPJUMP1)
        (work / "illum").mkdir()
        for channel in CHANNELS:
            np.save(work / "illum" / illum_filename(PLATE, channel), np.ones((args.field_size,) * 2, np.float32))
        for fmt in args.formats:
            spec = resolve(fmt, {"format": fmt, "checkpoint": "random"})
            embedder = load_embedder(spec, device)
            geometry = Geometry(spec.crop, spec.crop_size, tuple(sorted((spec.foreground or {}).items())))
            bare = bare_crops_per_s(embedder, spec.crop_size, args.batch_size, device, args.seconds)
            source = RawSource(table, work / "illum", PLATE, geometry)
            streamed, crops = end_to_end_crops_per_s(source, embedder, args.batch_size, device, args.num_workers)
            row = {"format": fmt, "crop": spec.crop, "crop_size": spec.crop_size, "input_size": spec.input_size,
                   "device": str(device), "batch_size": args.batch_size, "fields": args.fields, "crops": crops,
                   "bare_crops_per_s": round(bare, 2), "end_to_end_crops_per_s": round(streamed, 2),
                   "ratio": round(streamed / bare, 3),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
            print(json.dumps(row), flush=True)
            report.append(row)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
