#!/usr/bin/env python
"""Self-supervised methods side by side: training steps/s and peak memory of MAE, DINO and SimCLR against a bare
forward+backward of the same encoder on the same batch (the ratio says what each objective's views, heads and
teacher cost), and DDP scaling from 1 to N processes (gloo on CPU, NCCL on GPUs).

Each measurement runs in its own child process, so its peak memory (ru_maxrss) is its own.

  python scripts/bench_methods.py --model tiny --batch-size 64 --steps 10          # the demo's model, 32 px
  python scripts/bench_methods.py --model small --batch-size 32 --steps 5          # ViT-S/16 at 224 px
  python scripts/bench_methods.py --model small --device cuda --batch-size 256 --steps 50 --processes 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "tiny": dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5, kwargs={"depth": 3}),
    "small": dict(model="vit_small_patch16_224", img_size=224, patch_size=16, in_chans=5, kwargs={}),
}
SETTINGS = {"mae": {}, "dino": {"local_crops": 6}, "simclr": {}}


def measure_step(method: str, encoder_config: dict, batch: int, steps: int, device: str, precision: str) -> dict:
    """Seconds per training step (after 2 warm-up steps) of `method`, or of a bare encoder forward+backward."""
    import torch

    from paintbench.vit import autocast, build_encoder, pick_device
    from paintbench.vit.core import pool_tokens, step_seeds
    from paintbench.vit.methods import build_objective, method_settings

    dev = pick_device(device)
    size = encoder_config["img_size"]
    crops = torch.rand(batch, 5, size, size, device=dev)
    if method == "bare":
        encoder = build_encoder(**encoder_config).to(dev)
        params = list(encoder.parameters())

        def loss_of(step: int) -> torch.Tensor:
            return pool_tokens(encoder, crops, "mean").sum()
    else:
        objective = build_objective(method, encoder_config, method_settings(method, SETTINGS[method]), {}, "mean",
                                    steps + 2).to(dev)
        params = [p for p in objective.parameters() if p.requires_grad]

        def loss_of(step: int) -> torch.Tensor:
            return objective(crops, step_seeds(0, step, batch), step)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    for step in range(1, steps + 3):
        if step == 3:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast(dev, precision):
            loss = loss_of(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if method == "dino":
            objective.after_step(step)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": method, "s_per_step": seconds, "steps_per_s": 1 / seconds, "crops_per_s": batch / seconds,
            "peak_mib": round(peak)}


def child(args: argparse.Namespace, method: str) -> dict:
    """measure_step in a fresh process (its own peak memory)."""
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_methods as b; "
            f"print(json.dumps(b.measure_step({method!r}, b.MODELS[{args.model!r}], {args.batch_size}, {args.steps}, "
            f"{args.device!r}, {args.precision!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def ddp_seconds(processes: int, method: str, args: argparse.Namespace) -> float:
    """Wall seconds of a pretraining run of args.steps steps on `processes` torchrun processes (same global batch)."""
    with tempfile.TemporaryDirectory() as work:
        script = Path(work) / "run.py"
        script.write_text(
            "import sys, torch\n"
            "from paintbench.vit.train import pretrain\n"
            f"crops = [torch.rand(5, {MODELS[args.model]['img_size']}, {MODELS[args.model]['img_size']}) "
            f"for _ in range({4 * args.batch_size})]\n"
            f"pretrain(crops, {MODELS[args.model]!r}, sys.argv[1], steps={args.steps}, batch_size={args.batch_size}, "
            f"lr=1e-4, warmup_steps=1, checkpoint_every={args.steps}, seed=0, method={method!r}, "
            f"settings={SETTINGS[method]!r}, device={args.device!r}, progress=False)\n")
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                        str(script), str(Path(work) / "out")], check=True, env=env, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2], help="DDP scaling: process counts")
    parser.add_argument("--ddp-method", default="mae")
    args = parser.parse_args()
    rows = [child(args, method) for method in ("bare", "mae", "dino", "simclr")]
    bare = rows[0]["s_per_step"]
    print(f"model {args.model}, batch {args.batch_size}, device {args.device}, precision {args.precision}")
    print("method\tsteps/s\tcrops/s\tpeak MiB\tx bare forward+backward")
    for row in rows:
        print(f"{row['method']}\t{row['steps_per_s']:.2f}\t{row['crops_per_s']:.0f}\t{row['peak_mib']}\t"
              f"{row['s_per_step'] / bare:.2f}")
    if len(args.processes) > 1:
        times = {n: ddp_seconds(n, args.ddp_method, args) for n in args.processes}
        base = times[args.processes[0]]
        print(f"DDP {args.ddp_method}, {args.steps} steps, global batch {args.batch_size} (wall s incl. start-up):")
        for n, seconds in times.items():
            print(f"  {n} process(es): {seconds:.1f} s, speed-up {base / seconds:.2f}x")


if __name__ == "__main__":
    main()
