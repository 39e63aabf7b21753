"""One small pretraining run, the same in-process and under torchrun (tests/test_vit_methods.py).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/vit_ddp_run.py OUT_DIR METHOD
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_vit_train import TINY, BlobCrops, reproducible_cpu  # noqa: E402

from paintbench.vit.train import pretrain  # noqa: E402

SETTINGS = {"mae": dict(decoder_dim=32, decoder_depth=1, decoder_heads=2),
            "dino": dict(out_dim=128, hidden_dim=64, bottleneck_dim=32, local_crops=2, koleo_weight=0.1),
            "simclr": dict(hidden_dim=64, proj_dim=32)}
STEPS, EVERY = 6, 3


class Interrupted(Exception):
    pass


def stop_at(step: int):
    """A tracker that interrupts training when it is first called (at `step`: track_every), after a checkpoint."""
    def track(encoder: torch.nn.Module) -> float:
        raise Interrupted(step)
    return track


def run(out_dir: str | Path, method: str, interrupt_at: int = 0, **overrides) -> Path:
    settings = dict(steps=STEPS, batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=EVERY, seed=3,
                    method=method, settings=SETTINGS[method], device="cpu", log_every=1, progress=False,
                    track=stop_at(interrupt_at) if interrupt_at else None, track_every=interrupt_at) | overrides
    with reproducible_cpu():
        return pretrain(BlobCrops(32, 32, seed=4), TINY, Path(out_dir), **settings)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
