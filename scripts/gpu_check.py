#!/usr/bin/env python
"""The prepared GPU check: what only a GPU can show about the ViT branch, in one command of at most 8 minutes,
everything written to one folder (`--out`: gpu_check.tsv, gpu_check.log, nvidia_smi.txt, cuda_tests.txt).

1. nvidia-smi's view, and the versions (torch, CUDA, timm, the GPU).
2. Training: MAE, DINO and SimCLR on ViT-S/16 at 224 px through the pipeline's own training step
   (paintbench.vit.train: bf16 autocast, fused AdamW, torch.compile with inductor): steps/s and peak GPU memory at
   batch 64 and 256.
3. Agreement: the same first steps from the same seed on the GPU (fp32, TF32 off, no compile) and on the CPU: the
   losses agree to LOSS_TOLERANCE (relative); bf16 against fp32 on the GPU to BF16_TOLERANCE.
4. Fine-tuning: steps/s and peak memory of the second phase's step (linear head, cross-entropy) at batch 64 and 256.
5. Embedding: crops/s end to end (synthetic 1080 px fields -> DataLoader workers decoding and cutting crops -> GPU ->
   ViT-S/16) against the bare forward on the same batch (goal >= 0.8), for 2, 4, 8 and 14 workers: how many the GPU
   needs to be fed.
6. The CUDA-only tests (`pytest -m cuda`).

It runs on the torch it finds (a GPU machine's own may be older than the lock's: a CUDA wheel is too large to carry);
missing small packages (imagecodecs) are installed from the wheels `scripts/gpu_wheels.sh` puts in .whl/.
`--dry-run` runs every step at tiny size on the CPU and writes the same files (tests/test_gpu_check.py, in CI).

  bash scripts/gpu_check.sh --out /tmp/gpu                # on the GPU machine, from a copy of the repository
  python scripts/gpu_check.py --dry-run --out /tmp/gpu    # anywhere: the same steps, tiny, on the CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

LOSS_TOLERANCE = 2e-3  # relative: GPU fp32 (TF32 off) against CPU fp32, the same seed and steps
BF16_TOLERANCE = 5e-2  # relative: bf16 autocast against fp32 on the GPU
COLUMNS = ["step", "method", "batch_size", "metric", "value", "unit", "detail"]
FULL = dict(model=dict(model="vit_small_patch16_224", img_size=224, patch_size=16, in_chans=5, kwargs={}),
            batches=(64, 256), timed_steps=10, warm_steps=3, agree_steps=3, agree_batch=16, fields=24,
            field_size=1080, workers=(2, 4, 8, 14), embed_batch=256, seconds=15)
DRY = dict(model=dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5, kwargs={"depth": 2}),
           batches=(4, 8), timed_steps=2, warm_steps=1, agree_steps=2, agree_batch=4, fields=4, field_size=256,
           workers=(0, 1), embed_batch=4, seconds=1)
log = logging.getLogger("gpu_check")


class Results:
    def __init__(self, out: Path):
        self.path, self.rows = out / "gpu_check.tsv", []

    def add(self, step: str, metric: str, value, unit: str = "", method: str = "", batch_size="", detail: str = ""):
        self.rows.append(dict(step=step, method=method, batch_size=batch_size, metric=metric, value=value, unit=unit,
                              detail=detail))
        log.info("%s %s %s %s: %s %s %s", step, method, batch_size, metric, value, unit, detail)
        self.write()

    def write(self) -> None:  # after every row: a check cut off at its time limit keeps what it measured
        import csv

        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS, delimiter="\t")
            writer.writeheader()
            writer.writerows(self.rows)


def environment(results: Results, out: Path) -> None:
    import timm
    import torch

    smi = shutil.which("nvidia-smi")
    text = subprocess.run([smi], capture_output=True, text=True).stdout if smi else "nvidia-smi: not found\n"
    (out / "nvidia_smi.txt").write_text(text)
    results.add("environment", "torch", torch.__version__)
    results.add("environment", "cuda", str(torch.version.cuda))
    results.add("environment", "timm", timm.__version__)
    results.add("environment", "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")


def train_config(method: str, batch_size: int, steps: int, precision: str) -> dict:
    from paintbench.vit.methods import method_settings

    settings = method_settings(method, {})
    return dict(method=method, settings=settings, views={}, pooling="mean", steps=steps, batch_size=batch_size,
                lr=1e-4, weight_decay=0.05, warmup_steps=1, seed=0, crop_shape=[5, 0, 0], precision=precision)


def run_steps(method: str, encoder_config: dict, device, batch_size: int, steps: int, precision: str,
              compile_model: bool | None) -> tuple[list[float], float, float]:
    """(losses, seconds per step after the first step, peak memory MiB) of the pipeline's own training step."""
    import torch

    from paintbench.vit.train import build_state, train_step

    config = train_config(method, batch_size, steps, precision)
    size = encoder_config["img_size"]
    config["crop_shape"] = [5, size, size]
    state = build_state(encoder_config, device, config, compile_model)
    generator = torch.Generator().manual_seed(1)
    batch = torch.rand(batch_size, 5, size, size, generator=generator)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    losses, began = [], None
    for step in range(1, steps + 1):
        if step == 2:
            if cuda:
                torch.cuda.synchronize(device)
            began = time.perf_counter()
        losses.append(float(train_step(state, batch, step)))
    if cuda:
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - began) / max(1, steps - 1)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process's, on the CPU
    return losses, per_step, peak


def training(results: Results, sizes: dict, device) -> None:
    for method in ("mae", "dino", "simclr"):
        for batch in sizes["batches"]:
            try:
                losses, per_step, peak = run_steps(method, sizes["model"], device, batch,
                                                   sizes["warm_steps"] + sizes["timed_steps"], "auto", None)
            except Exception as error:  # e.g. out of memory at the larger batch: recorded, the check goes on
                results.add("training", "error", repr(error)[:300], method=method, batch_size=batch)
                continue
            results.add("training", "steps_per_s", round(1 / per_step, 3), "steps/s", method, batch,
                        "bf16 autocast on CUDA, fused AdamW, torch.compile (inductor) on CUDA")
            results.add("training", "crops_per_s", round(batch / per_step, 1), "crops/s", method, batch)
            results.add("training", "peak_memory", round(peak), "MiB", method, batch)
            results.add("training", "loss_falls", bool(losses[-1] < losses[0]), "", method, batch,
                        f"first {losses[0]:.4f}, last {losses[-1]:.4f}")


def agreement(results: Results, sizes: dict, device) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu = torch.device("cpu")
    for method in ("mae", "dino", "simclr"):
        steps, batch = sizes["agree_steps"], sizes["agree_batch"]
        reference, _, _ = run_steps(method, sizes["model"], cpu, batch, steps, "fp32", False)
        same, _, _ = run_steps(method, sizes["model"], device, batch, steps, "fp32", False)
        low, _, _ = run_steps(method, sizes["model"], device, batch, steps, "bf16", False)
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(same, reference))
        results.add("agreement", "fp32_vs_cpu_max_rel", f"{worst:.2e}", "", method, batch,
                    f"{'PASS' if worst <= LOSS_TOLERANCE else 'FAIL'} at {LOSS_TOLERANCE:g}; losses {same} vs {reference}")
        worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(low, same))
        results.add("agreement", "bf16_vs_fp32_max_rel", f"{worst:.2e}", "", method, batch,
                    f"{'PASS' if worst <= BF16_TOLERANCE else 'FAIL'} at {BF16_TOLERANCE:g}")


def fine_tuning(results: Results, sizes: dict, device) -> None:
    """The second phase's loop as the workflow runs it (paintbench.vit.finetune.train_classifier: labelled crops in
    memory through a DataLoader, the encoder's pooled embedding, a linear head, cross-entropy, fused AdamW, bf16
    autocast on CUDA) on random crops of 100 classes; each step ends with the loss on the host, so steps are timed."""
    import pandas as pd
    import torch

    from paintbench.vit.core import build_encoder
    from paintbench.vit.finetune import LabelledTensors, PooledViT, train_classifier

    config = sizes["model"]
    for batch in sizes["batches"]:
        encoder = build_encoder(**config)
        n = 2 * batch
        crops = torch.rand(n, 5, config["img_size"], config["img_size"])
        data = LabelledTensors(crops, pd.Series([f"p{k % 100}" for k in range(n)]), pd.DataFrame(index=range(n)))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        warm, timed = sizes["warm_steps"], sizes["timed_steps"]
        rows = train_classifier(PooledViT(encoder, config["img_size"], "mean"), int(encoder.num_features), data,
                                len(data.labels), steps=warm + timed, batch_size=batch, lr=1e-4, warmup_steps=1,
                                device=str(device))
        per_step = (rows[-1]["seconds"] - rows[warm - 1]["seconds"]) / timed
        results.add("fine_tuning", "steps_per_s", round(1 / per_step, 3), "steps/s", "classify", batch)
        if device.type == "cuda":
            results.add("fine_tuning", "peak_memory", round(torch.cuda.max_memory_allocated(device) / 2**20), "MiB",
                        "classify", batch)


def embedding(results: Results, sizes: dict, device, work: Path) -> None:
    import numpy as np

    from paintbench.loaddata import load_data_table
    from paintbench.metadata import plate_layout, select_wells
    from paintbench.paths import illum_filename
    from paintbench.registry import CHANNELS
    from paintbench.synthetic import generate_plate, ground_truth
    from paintbench.vit.core import build_encoder
    from paintbench.vit.crops import build_crop_cache
    from paintbench.vit.embed import bare_forward_throughput, end_to_end_throughput
    from paintbench.vit.stream import ImageSource

    plate, channels = "BR00116991", {"DNA": 5, "ER": 4, "RNA": 3, "AGP": 2, "Mito": 1}
    truth = ground_truth(["JUMP-Target-1_compound_platemap"], seed=0, strong_fraction=0.4, null_fraction=0.3)
    wells = select_wells(plate_layout(plate), "all")[: sizes["fields"]]
    generate_plate(plate, wells, [1], channels, truth, work / "images", field_size=sizes["field_size"],
                   cells_per_field=150 if sizes is FULL else 12)
    table = load_data_table(plate, work / "images", wells, [1], channels)
    (work / "illum").mkdir()
    for channel in CHANNELS:
        np.save(work / "illum" / illum_filename(plate, channel), np.ones((sizes["field_size"],) * 2, np.float32))
    crop = 160 if sizes is FULL else 48
    build_crop_cache(table, work / "illum", work / "crops", "nuclei", crop, num_workers=2, sample_per_field=4)
    config = sizes["model"]
    encoder = build_encoder(**config).eval()
    bare = bare_forward_throughput(encoder, config["img_size"], sizes["embed_batch"], str(device),
                                   seconds=sizes["seconds"])
    results.add("embedding", "bare_forward", round(bare["crops_per_s"], 1), "crops/s", batch_size=sizes["embed_batch"])
    for workers in sizes["workers"]:
        source = ImageSource(table, work / "illum", work / "crops")
        streamed = end_to_end_throughput(source, encoder, config, sizes["embed_batch"], str(device), workers)
        ratio = streamed["crops_per_s"] / bare["crops_per_s"]
        results.add("embedding", "end_to_end", round(streamed["crops_per_s"], 1), "crops/s",
                    batch_size=sizes["embed_batch"], detail=f"{workers} workers; ratio {ratio:.2f} (goal >= 0.8); "
                                                           f"{streamed['crops']} crops")


def cuda_tests(results: Results, out: Path, dry_run: bool) -> None:
    # The files of the cuda marker only: the others import the test-only tools a GPU machine lacks (moto, copairs).
    command = [sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_vit_views.py"),
               str(ROOT / "tests" / "test_cuda.py"), "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    if dry_run:
        command.append("--collect-only")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    (out / "cuda_tests.txt").write_text(done.stdout[-20000:] + done.stderr[-5000:])
    results.add("cuda_tests", "exit_code", done.returncode, detail=done.stdout.strip().splitlines()[-1][:200]
                if done.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder every result is written to")
    parser.add_argument("--dry-run", action="store_true", help="every step at tiny size on the CPU")
    parser.add_argument("--steps", nargs="+",
                        default=["environment", "training", "agreement", "fine_tuning", "embedding", "cuda_tests"],
                        help="the steps to run (default: all)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(args.out / "gpu_check.log"), logging.StreamHandler()])
    import torch

    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device; run with --dry-run to check the steps on the CPU")
    sizes = DRY if args.dry_run else FULL
    results = Results(args.out)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for step in args.steps:
            began = time.perf_counter()
            try:
                {"environment": lambda: environment(results, args.out),
                 "training": lambda: training(results, sizes, device),
                 "agreement": lambda: agreement(results, sizes, device),
                 "fine_tuning": lambda: fine_tuning(results, sizes, device),
                 "embedding": lambda: embedding(results, sizes, device, Path(tmp)),
                 "cuda_tests": lambda: cuda_tests(results, args.out, args.dry_run)}[step]()
            except Exception as error:  # one broken step does not hide the others' figures
                log.exception("step %s failed", step)
                results.add(step, "error", repr(error)[:300])
            results.add(step, "seconds", round(time.perf_counter() - began, 1), "s")
    results.add("total", "seconds", round(time.perf_counter() - started, 1), "s", detail=json.dumps({"dry_run": args.dry_run}))


if __name__ == "__main__":
    main()
