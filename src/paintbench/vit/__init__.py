"""The ViT-MAE branch: crop cache -> self-supervised MAE pretraining -> encoder embeddings -> well means.

Shared contracts of the branch's modules:
- crop cache (per plate): `<dir>/<plate>.npy`, a float16 array (N, 5, S, S) of illumination-corrected,
  per-plate-normalized crops in CHANNELS order, opened with np.load(mmap_mode="r"); and `<dir>/<plate>.parquet`,
  its index, one row per crop: Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Crop (row in the array),
  Metadata_Y, Metadata_X (crop centre in the field, px).
- checkpoint (torch.save dict): {"encoder": state_dict, "decoder": state_dict, "optimizer": state_dict,
  "step": int, "encoder_config": dict(model=..., img_size=..., patch_size=..., in_chans=5, kwargs=...),
  "train_config": dict}. Encoders are timm models: `build_encoder(**encoder_config)`.
"""

from __future__ import annotations

from typing import Any

import torch

from paintbench import CHANNELS

IN_CHANS = len(CHANNELS)


def build_encoder(model: str, img_size: int, patch_size: int, in_chans: int = IN_CHANS,
                  kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """A timm ViT without classifier head (features = pooled tokens); nothing is downloaded."""
    import timm

    return timm.create_model(model, pretrained=False, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             num_classes=0, **(kwargs or {}))


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error, not a silent fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config key 'vit.device': {requested!r} requested but no CUDA device is available")
    return torch.device(requested)


def autocast(device: torch.device, precision: str = "auto"):
    """Mixed precision: 'auto' = bf16 on CUDA and fp32 on CPU (bf16 matmuls are slow on most CPUs); 'bf16' also
    on CPU (so the CUDA code path can be exercised without a GPU); 'fp32' never."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
