"""The self-supervised objectives the training loop (paintbench.vit.train) runs, and what they share.

An objective is an nn.Module with
- `encoder`: the timm ViT that embedding keeps (a plain timm model; its state_dict is the feature set's encoder);
- `forward(crops, seeds, step) -> loss`: crops (b, 5, S, S) on the device, `seeds` (b,) int64, one per sample,
  drawn for the whole global batch from (seed, step) and sliced per process, so a sample's masking or views do not
  depend on which process holds it (that is what makes N-process training equal one process's);
- `after_step(step)`: after each optimizer step (DINO's EMA teacher); `clip_grad`: max gradient norm or None;
- `compile_networks()`: torch.compile the networks in place (the random views and masks stay eager: they are
  drawn per sample from seeds, which the compiler cannot trace, and cost little next to the networks).
Each method has its own module (model.py for MAE, dino.py, simclr.py) and a defaults dict; `METHODS` maps the
config's method names to them and `FEATURE_SETS` to the feature set each one produces.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from paintbench.vit.model import DECODER_DEFAULTS, build_mae_from_decoder_config, resize_to

MAE_DEFAULTS: dict[str, Any] = {"mask_ratio": 0.75, **{f"decoder_{k}": v for k, v in DECODER_DEFAULTS.items()
                                                        if k != "norm_pix_loss"},
                                "norm_pix_loss": DECODER_DEFAULTS["norm_pix_loss"]}


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


class MaeObjective(nn.Module):
    """MAE (model.py's MaskedAutoencoder): each sample's mask comes from its own seed."""

    clip_grad = None

    def __init__(self, encoder_config: dict[str, Any], settings: dict[str, Any], views: dict[str, Any],
                 pooling: str, total_steps: int) -> None:
        super().__init__()
        decoder = {k.removeprefix("decoder_"): v for k, v in settings.items() if k.startswith("decoder_")}
        self.mae = build_mae_from_decoder_config(encoder_config, decoder | {"norm_pix_loss": settings["norm_pix_loss"]})
        self.mask_ratio = settings["mask_ratio"]

    @property
    def encoder(self) -> nn.Module:
        return self.mae.encoder

    def compile_networks(self) -> None:
        compile_module(self.mae)

    def forward(self, crops: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
        imgs = resize_to(crops, self.mae.grid[0] * self.mae.patch_size)
        noise = per_sample_uniform(seeds, self.mae.num_patches).to(imgs.device, non_blocking=True)
        loss, _, _ = self.mae(imgs, self.mask_ratio, noise=noise)
        return loss

    def after_step(self, step: int) -> None:
        pass


def _registry() -> tuple[dict[str, Callable[..., nn.Module]], dict[str, dict[str, Any]]]:
    from paintbench.vit.dino import DINO_DEFAULTS, DinoObjective
    from paintbench.vit.simclr import SIMCLR_DEFAULTS, SimclrObjective

    return ({"mae": MaeObjective, "dino": DinoObjective, "simclr": SimclrObjective},
            {"mae": MAE_DEFAULTS, "dino": DINO_DEFAULTS, "simclr": SIMCLR_DEFAULTS})


FEATURE_SETS = {"mae": "vitmae", "dino": "vitdino", "simclr": "vitsimclr"}
METHOD_OF_FEATURE_SET = {fs: method for method, fs in FEATURE_SETS.items()}


def method_settings(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """The method's defaults updated with `given`; unknown methods or keys are errors naming the config key."""
    _, defaults = _registry()
    if method not in defaults:
        raise ValueError(f"unknown self-supervised method {method!r}; known: {sorted(defaults)}")
    unknown = set(given or {}) - set(defaults[method])
    if unknown:
        raise ValueError(f"config key 'vit.{method}': unknown setting(s) {sorted(unknown)}; known: "
                         f"{sorted(defaults[method])}")
    return {**defaults[method], **(given or {})}


def build_objective(method: str, encoder_config: dict[str, Any], settings: dict[str, Any], views: dict[str, Any],
                    pooling: str, total_steps: int) -> nn.Module:
    """The objective of `method` (settings already complete: see method_settings)."""
    classes, _ = _registry()
    return classes[method](encoder_config, settings, views, pooling, total_steps)


def pooled_features(encoder: nn.Module, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """The crop embedding the objectives train, pooled as embedding pools it (vit.pooling)."""
    from paintbench.vit.embed import pool_tokens

    return pool_tokens(encoder, x, pooling)


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
