"""The masked autoencoder as a training objective (paintbench.vit.methods): each sample's mask comes from its own
seed, so N processes mask a sample as one process would. The network itself is paintbench.vit.model's."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from paintbench.vit.core import compile_module, per_sample_uniform, resize_to
from paintbench.vit.model import build_mae_from_decoder_config

# Architecture of the decoder that the configuration does not expose (the MAE paper's values).
FIXED_SETTINGS: dict[str, Any] = {"decoder_mlp_ratio": 4.0, "decoder_learned_pos": False}


class MaeObjective(nn.Module):
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
