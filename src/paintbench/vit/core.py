"""The core every part of the ViT branch shares: timm encoders, devices and precision, token pooling, resizing,
the distributed helpers and heads of the self-supervised objectives, and torch.compile.

Nothing here knows a method, a file format or the images: the objectives (mae, dino, simclr), training, embedding
and the crop caches all import this module, and it imports none of them.

Contracts of the branch:
- crop cache (per plate): `<dir>/<plate>.npy`, a float16 array (N, 5, S, S) of illumination-corrected,
  per-plate-normalized crops in CHANNELS order, opened with np.load(mmap_mode="r"); and `<dir>/<plate>.parquet`,
  its index, one row per crop: Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Crop (row in the array),
  Metadata_Y, Metadata_X (crop centre in the field, px).
- checkpoint (torch.save dict): {"model": the objective's state_dict, "encoder": state_dict, "optimizer", "step",
  "encoder_config": dict(model=..., img_size=..., patch_size=..., in_chans=5, kwargs=...), "train_config"}.
  Encoders are timm models: `build_encoder(**encoder_config)`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from paintbench.registry import CHANNELS, POOLINGS, PRECISIONS

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
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def pool_tokens(encoder: nn.Module, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, D) float32 embeddings of images x (B, C, H, W)."""
    tokens = encoder.forward_features(x)
    if tokens.ndim != 3:
        raise ValueError(f"forward_features returned shape {tuple(tokens.shape)}, expected (batch, tokens, dim)")
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    if pooling == "cls":
        if getattr(encoder, "cls_token", None) is None:
            raise ValueError("pooling 'cls' needs an encoder with a class token; use 'mean'")
        return tokens[:, 0].float()
    if pooling == "mean":
        return tokens[:, prefix:].float().mean(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")


def resize_to(imgs: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, S, S) crops to the model's img_size (antialiased when shrinking)."""
    if imgs.shape[-1] == size and imgs.shape[-2] == size:
        return imgs
    shrink = imgs.shape[-1] > size or imgs.shape[-2] > size
    return F.interpolate(imgs, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


def step_seeds(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """(batch_size,) int64 per-sample seeds of one step's global batch: a function of (seed, step) only."""
    words = np.random.SeedSequence([seed, 0x5EED, step]).generate_state(batch_size, np.uint64)
    return torch.from_numpy((words >> np.uint64(1)).astype(np.int64))


def per_sample_uniform(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """(b, n) uniforms on the CPU, row i drawn from a generator seeded with seeds[i]."""
    gen = torch.Generator()
    return torch.stack([torch.rand(n, generator=gen.manual_seed(int(s))) for s in seeds.tolist()])


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every process's gradient of the gathered tensor and keeps this process's
    rows. Written on all_reduce, which every backend has (gloo has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rank, size = world()
        parts = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of every process, in rank order (rank r's rows at r*b .. r*b+b-1); itself when not distributed."""
    return tensor if world()[1] == 1 else _GatherWithGrad.apply(tensor)


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over processes (no gradient); itself when not distributed."""
    size = world()[1]
    if size == 1:
        return tensor
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor / size


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int) -> nn.Sequential:
    """Linear-GELU stack with `layers` linears (the projection heads of SimCLR and DINO)."""
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        modules.append(nn.Linear(a, b))
        if i < layers - 1:
            modules.append(nn.GELU())
    head = nn.Sequential(*modules)
    for module in head:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    return head


# torch.compile backend: inductor (the default, as on GPUs). The tests use aot_eager, which traces the same graphs
# (dynamo + AOT autograd: where compile bugs show) without inductor's minutes of C++ code generation on a CPU.
COMPILE_BACKEND = os.environ.get("PAINTBENCH_COMPILE_BACKEND", "inductor")


def compile_module(module: nn.Module) -> None:
    """torch.compile a module in place (its state_dict keys stay plain)."""
    module.compile(backend=COMPILE_BACKEND)


def compile_encoder(encoder: nn.Module) -> None:
    """Compile the path pooled_features takes (forward_features), in place: the state_dict keys stay plain."""
    encoder.forward_features = torch.compile(encoder.forward_features, backend=COMPILE_BACKEND)


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
