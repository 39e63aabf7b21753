"""External encoders: the field's published Cell Painting encoders, and any timm, TorchScript or Python model, as
feature sets, each behind one small interface the streaming embedder uses (`Embedder`: raw crops in, embeddings out).

What each format is (its published defaults, paintbench.encoder_formats) is read before any job starts; this module
builds the architectures, reads the checkpoints and runs the models. Loading is strict: every key the architecture needs must be in the file and every key of the file must be used or
dropped by a rule of its format (a DINO head, an MAE decoder), else the error lists them. `checkpoint: random` builds
the architecture with seeded random weights: a baseline, labelled as such in the report.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from paintbench.encoder_formats import RANDOM, EncoderSpec
from paintbench.registry import CHANNELS

log = logging.getLogger(__name__)

FINETUNED_KEY = "paintbench_backbone"  # a backbone fine-tuned by paintbench (vit.finetune.encoders), keys as built

# ------------------------------------------------------------------------------------------------ checkpoints
def read_checkpoint(path: Path, trust: bool = False) -> Any:
    """A checkpoint file as stored: safetensors, or a torch pickle read with weights_only (plus argparse.Namespace,
    which training scripts store as their arguments); `trust` reads any pickle (only for files you trust)."""
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise ValueError(f"{path}: not a readable safetensors file: {error}") from error
    try:  # read from a handle: torch dispatches a name ending in .safetensors to safetensors (OpenPhenom's is not)
        with open(path, "rb") as handle:
            if trust:
                return torch.load(handle, map_location="cpu", weights_only=False)
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(handle, map_location="cpu", weights_only=True)
    except Exception as error:
        hint = "" if trust else " (a file you trust that pickles other objects: set trust_checkpoint: true)"
        raise ValueError(f"{path}: not a checkpoint torch can read{hint}: {error}") from error


def _unwrap(obj: Any, path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for key in keys:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return obj[key]
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    raise ValueError(f"{path}: no state dict under {', '.join(keys)} (the file holds {found})")


def _strip(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _split(state: dict[str, torch.Tensor], drop: Callable[[str], bool]) -> tuple[dict, list[str]]:
    return {k: v for k, v in state.items() if not drop(k)}, [k for k in state if drop(k)]


def _cellpaintssl_state(obj: Any, spec: EncoderSpec, path: Path) -> tuple[dict, list[str]]:
    if spec.variant == "dino":  # train_dino.py: {"student", "teacher", ...}; inference takes the teacher
        state = _strip(_unwrap(obj, path, ("teacher",)), ("module.", "backbone."))
        return _split(state, lambda k: k.startswith("head."))
    if spec.variant == "mae":  # {"model": MAE}: the encoder without its final norm and qkv biases, no decoder
        state = _unwrap(obj, path, ("model",))
        return _split(state, lambda k: k.startswith(("decoder", "mask_token")) or k.endswith("attn.qkv.bias")
                      or (k.startswith("norm.") and not spec.final_norm))
    state = _unwrap(obj, path, ("state_dict",))  # Lightning: backbone.* + the projection head mlp.*
    state, dropped = _split(state, lambda k: not k.startswith("backbone."))
    return _strip(state, ("backbone.",)), dropped


def _cell_dino_state(obj: Any, spec: EncoderSpec, path: Path) -> tuple[dict, list[str]]:
    """A flat DinoVisionTransformer state dict; its chunked blocks 'blocks.<chunk>.<i>.' become timm's 'blocks.<i>.'."""
    import re

    state = _unwrap(obj, path, ("teacher", "model", "state_dict"))
    state = {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    return _split(state, lambda k: k == "mask_token")


def _state_of(obj: Any, spec: EncoderSpec, path: Path) -> tuple[dict, list[str]]:
    """(the backbone's state dict, the keys its format drops on purpose)."""
    if spec.format == "cellpaintssl":
        return _cellpaintssl_state(obj, spec, path)
    if spec.format == "cell_dino":
        return _cell_dino_state(obj, spec, path)
    if spec.format == "openphenom":
        from paintbench.vit.openphenom import encoder_state

        return encoder_state(_unwrap(obj, path, ("state_dict",)))
    state = _strip(_unwrap(obj, path, ("state_dict", "model", "encoder")), ("_orig_mod.", "module."))
    return _split(state, lambda k: k.startswith("head."))


# ------------------------------------------------------------------------------------------------ architectures
def build_backbone(spec: EncoderSpec) -> nn.Module:
    """The format's architecture at spec.input_size, randomly initialized (seeded)."""
    import timm

    torch.manual_seed(spec.seed)
    if spec.format == "openphenom":
        from paintbench.vit.openphenom import OpenPhenomEncoder

        return OpenPhenomEncoder()
    kwargs = dict(spec.model_kwargs)
    if spec.format == "cellpaintssl" and spec.variant == "mae":
        kwargs["qkv_bias"] = False
    model = timm.create_model(spec.model, pretrained=False, img_size=spec.input_size, patch_size=spec.patch_size or 16,
                              in_chans=len(spec.channels), num_classes=0, **kwargs)
    if not spec.final_norm:
        model.norm = nn.Identity()
    return model


def _fit_positions(state: dict[str, torch.Tensor], model: nn.Module, spec: EncoderSpec) -> dict[str, torch.Tensor]:
    """Resample learned position embeddings to spec.input_size when it is not the size the weights were made for."""
    stored, wanted = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if stored is None or wanted is None or stored.shape == wanted.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    grid = spec.input_size // (spec.patch_size or 16)
    log.warning("encoder %s: position embeddings resampled from %s to %s (input_size %d, not the published %s)",
                spec.name, tuple(stored.shape), tuple(wanted.shape), spec.input_size, spec.native_size)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return {**state, "pos_embed": resample_abs_pos_embed(stored, (grid, grid), num_prefix_tokens=prefix)}


def _check_channels(state: dict[str, torch.Tensor], spec: EncoderSpec, path: Path) -> None:
    """A patch projection for another number of channels is the commonest wrong file: say so in those words."""
    proj = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight")), None)
    if proj is None or proj.ndim != 4 or spec.format == "openphenom":  # OpenPhenom projects one channel at a time
        return
    if proj.shape[1] != len(spec.channels):
        raise ValueError(f"{path}: the model takes {proj.shape[1]} input channels, config key "
                         f"'encoders.{spec.name}.channels' gives {len(spec.channels)} ({', '.join(spec.channels)})")


def load_backbone(spec: EncoderSpec) -> nn.Module:
    """The encoder's backbone with its weights, loaded strictly (see the module docstring)."""
    if spec.format == "torchscript":
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ValueError(f"{path}: no such TorchScript file (config key 'encoders.{spec.name}.checkpoint')")
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise ValueError(f"{path}: not a TorchScript module: {error}") from error
    if spec.format == "python":
        module_name, _, function = spec.module.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"config key 'encoders.{spec.name}.module': cannot import {spec.module}: {error}") from error
        return factory(spec.checkpoint)  # the function's own format: paintbench passes the configured path
    model = build_backbone(spec)
    if spec.checkpoint == RANDOM:
        return model
    path = Path(spec.checkpoint)
    stored = read_checkpoint(path, spec.trust_checkpoint)
    if isinstance(stored, dict) and isinstance(stored.get(FINETUNED_KEY), dict):
        state, dropped = stored[FINETUNED_KEY], []
    else:
        state, dropped = _state_of(stored, spec, path)
    _check_channels(state, spec, path)
    try:
        missing, unexpected = model.load_state_dict(_fit_positions(state, model, spec), strict=False)
    except RuntimeError as error:  # shapes that do not fit: another width, depth or patch size
        raise ValueError(f"{path}: weights do not fit the {spec.format} architecture: {error}") from error
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match the {spec.format} architecture "
                         f"({spec.variant or spec.model or ''}): missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    if dropped:
        log.info("encoder %s: %d key(s) of %s not part of the embedding, left out as the published code does: %s",
                 spec.name, len(dropped), path.name, dropped[:8])
    return model


# ------------------------------------------------------------------------------------------------ the interface
class Embedder(nn.Module):
    """Raw crops (B, 5, S, S), illumination-corrected camera units in CHANNELS order, to embeddings (B, D): the
    format's channel order, scaling, resize to its input size, normalization, backbone and pooling."""

    def __init__(self, spec: EncoderSpec, backbone: nn.Module):
        super().__init__()
        self.spec, self.backbone = spec, backbone
        self.register_buffer("order", torch.tensor([CHANNELS.index(c) for c in spec.channels]), persistent=False)
        shape = (1, len(CHANNELS), 1, 1)
        self.register_buffer("mean", torch.tensor(spec.mean or [0.0] * len(CHANNELS)).reshape(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std or [1.0] * len(CHANNELS)).reshape(shape), persistent=False)

    def preprocess(self, crops: torch.Tensor) -> torch.Tensor:
        x = crops.float().index_select(1, self.order) / self.spec.divisor
        size = self.spec.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
        if self.spec.normalize == "dataset":
            x = (x - self.mean) / self.std
        elif self.spec.normalize == "instance":
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = (x - mean) / (x.std(dim=(2, 3), keepdim=True, unbiased=False) + self.spec.eps)
        return x

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(crops)
        if self.spec.pooling == "output":
            out = self.backbone(x)
            if out.ndim != 2:
                raise ValueError(f"encoder {self.spec.name}: the model returned shape {tuple(out.shape)}; "
                                 "pooling 'output' needs (batch, dim)")
            return out.float()
        tokens = self.backbone.forward_features(x)
        prefix = int(getattr(self.backbone, "num_prefix_tokens", 1))
        cls, patches = tokens[:, 0].float(), tokens[:, prefix:].float().mean(dim=1)
        return {"cls": cls, "mean": patches, "cls_mean": torch.cat([cls, patches], dim=1)}[self.spec.pooling]


def load_embedder(spec: EncoderSpec, device: torch.device | str = "cpu") -> Embedder:
    embedder = Embedder(spec, load_backbone(spec)).to(device).eval()
    with torch.inference_mode():  # one crop of the format's geometry through the whole path: shapes fail here
        probe = torch.zeros(1, len(CHANNELS), spec.crop_size, spec.crop_size, device=device) + 1.0
        try:
            width = embedder(probe).shape[1]
        except Exception as error:
            raise ValueError(f"encoder {spec.name} ({spec.format}): a {spec.crop_size} px crop resized to "
                             f"{spec.input_size} px does not go through the model: {error}") from error
    embedder.width = int(width)
    return embedder
