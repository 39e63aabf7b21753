"""The self-supervised objectives the training loop (paintbench.vit.train) runs, and what they share.

An objective is an nn.Module with
- `encoder`: the timm ViT that embedding keeps (a plain timm model; its state_dict is the feature set's encoder);
- `forward(crops, seeds, step) -> loss`: crops (b, 5, S, S) on the device, `seeds` (b,) int64, one per sample,
  drawn for the whole global batch from (seed, step) and sliced per process, so a sample's masking or views do not
  depend on which process holds it (that is what makes N-process training equal one process's);
- `after_step(step)`: after each optimizer step (DINO's EMA teacher); `clip_grad`: max gradient norm or None;
- `compile_networks()`: torch.compile the networks in place (the random views and masks stay eager: they are
  drawn per sample from seeds, which the compiler cannot trace, and cost little next to the networks).
Each method has its own module (mae.py, dino.py, simclr.py), built on paintbench.vit.core; this module only maps the
config's method names to them. A method's settings default to the schema's vit.<method> section (paintbench.schema).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from paintbench import schema
from paintbench.registry import VIT_METHODS, VIT_TRAINING_KEYS
from paintbench.vit.dino import DinoObjective
from paintbench.vit.mae import FIXED_SETTINGS as MAE_FIXED_SETTINGS
from paintbench.vit.mae import MaeObjective
from paintbench.vit.simclr import SimclrObjective

OBJECTIVES: dict[str, Callable[..., nn.Module]] = {"mae": MaeObjective, "dino": DinoObjective, "simclr": SimclrObjective}


def method_defaults(method: str) -> dict[str, Any]:
    """A method's settings as the schema's vit.<method> section defaults them (training keys and checkpoint
    excluded: they override vit.*), plus the architecture the configuration does not expose."""
    if method not in VIT_METHODS:
        raise ValueError(f"unknown self-supervised method {method!r}; known: {list(VIT_METHODS)}")
    section = schema.key_schema(f"vit.{method}")["properties"]
    defaults = {k: schema.default(f"vit.{method}.{k}") for k in section if k not in (*VIT_TRAINING_KEYS, "checkpoint")}
    return defaults | (MAE_FIXED_SETTINGS if method == "mae" else {})


def method_settings(method: str, given: dict[str, Any] | None) -> dict[str, Any]:
    """The method's defaults updated with `given`; unknown methods or keys are errors naming the config key."""
    defaults = method_defaults(method)
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"config key 'vit.{method}': unknown setting(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(given or {})}


def build_objective(method: str, encoder_config: dict[str, Any], settings: dict[str, Any], views: dict[str, Any],
                    pooling: str, total_steps: int) -> nn.Module:
    """The objective of `method` (settings already complete: see method_settings)."""
    return OBJECTIVES[method](encoder_config, settings, views, pooling, total_steps)
