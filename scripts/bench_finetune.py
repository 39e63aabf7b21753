"""Fine-tuning's cost: optimizer steps per second and peak memory of paintbench's fine-tuning loop
(paintbench.vit.finetune.train_classifier: a sampler and DataLoader over the labelled crops, the encoder's own
embedding path, a linear head, AdamW with warmup-cosine) against a bare PyTorch loop doing the same arithmetic (the
same model, head and AdamW on one batch already in memory), each in its own process, same batch, same device.

The ratio paintbench / bare says what the loop around the model costs (goal >= 0.9).

  python scripts/bench_finetune.py                     # the demo's tiny ViT and CellPaintSSL's ViT-S/16, on the CPU
  python scripts/bench_finetune.py --device cuda --batch-size 64 --steps 50
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from paintbench import CHANNELS
from paintbench.encoder_formats import resolve
from paintbench.vit.core import autocast, build_encoder, pick_device
from paintbench.vit.encoders import load_embedder
from paintbench.vit.finetune import Classifier, LabelledTensors, PooledViT, train_classifier

# Each model as fine-tuning runs it: (what it is, crop size, how to build its embedding module and width).
MODELS = {
    "demo_vit": "paintbench's demo ViT (3 blocks of ViT-Ti, 48 px crops at 32 px input, 8 px patches)",
    "cellpaintssl": "CellPaintSSL's ViT-S/16 (224 px tiles at 224 px input), an external encoder",
}
CLASSES = 32


def features(name: str) -> tuple[torch.nn.Module, int, int]:
    """(embedding module, width, crop size)."""
    if name == "demo_vit":
        config = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=len(CHANNELS),
                      kwargs={"depth": 3})
        encoder = build_encoder(**config)
        return PooledViT(encoder, 32, "mean"), int(encoder.num_features), 48
    embedder = load_embedder(resolve(name, {"format": name, "checkpoint": "random"}))
    return embedder, embedder.width, embedder.spec.crop_size


def labelled(crop_size: int, n: int) -> LabelledTensors:
    generator = torch.Generator().manual_seed(0)
    crops = torch.rand(n, len(CHANNELS), crop_size, crop_size, generator=generator) * 20000
    labels = pd.Series([f"p{k % CLASSES}" for k in range(n)])
    return LabelledTensors(crops, labels, pd.DataFrame({"Metadata_Well": ["A01"] * n}))


def paintbench_loop(name: str, batch_size: int, steps: int, device: str) -> dict:
    module, width, size = features(name)
    data = labelled(size, max(4 * batch_size, 256))
    rows = train_classifier(module, width, data, CLASSES, steps=steps, batch_size=batch_size, lr=1e-4,
                            warmup_steps=1, device=device)
    seconds = rows[-1]["seconds"] - rows[0]["seconds"]  # the first step (allocation, warm-up) not timed
    return {"steps_per_s": (steps - 1) / seconds}


def bare_loop(name: str, batch_size: int, steps: int, device: str) -> dict:
    dev = pick_device(device)
    module, width, size = features(name)
    model = Classifier(module, width, CLASSES).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True if dev.type == "cuda" else None)
    # A new batch each step, as a sampler gives (the same batch every step runs ~7% faster from the caches).
    batches = [torch.rand(batch_size, len(CHANNELS), size, size, device=dev) * 20000 for _ in range(4)]
    y = torch.randint(0, CLASSES, (batch_size,), device=dev)
    began = None
    for step in range(steps):
        if step == 1:
            began = time.perf_counter()
        with autocast(dev):
            logits = model(batches[step % len(batches)])
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"steps_per_s": (steps - 1) / (time.perf_counter() - began)}


def measure(loop: str, name: str, batch_size: int, steps: int, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    figures = {"paintbench": paintbench_loop, "bare": bare_loop}[loop](name, batch_size, steps, device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available() and device != "cpu":
        figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return {**figures, "peak_rss_mb": round(peak)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")  # each measurement's peak memory is its own
    report = []
    for name in args.models:
        row = {"model": name, "what": MODELS[name], "device": args.device, "batch_size": args.batch_size,
               "steps": args.steps}
        for loop in ("bare", "paintbench"):
            with context.Pool(1) as pool:
                figures = pool.apply(measure, (loop, name, args.batch_size, args.steps, args.device, args.threads))
            row.update({f"{loop}_{key}": round(value, 3) for key, value in figures.items()})
        row["ratio"] = round(row["paintbench_steps_per_s"] / row["bare_steps_per_s"], 3)
        print(json.dumps(row), flush=True)
        report.append(row)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
