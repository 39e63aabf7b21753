"""SimCLR contrastive learning (Chen et al. 2020) on Cell Painting crops.

Two views of each crop (paintbench.vit.views, global settings) pass through the encoder and a projection MLP;
NT-Xent pulls a crop's two projections together against every other view in the batch, at `temperature`. Under
multi-process training the negatives come from all processes: projections are gathered with a gradient
(methods.gather_with_grad), so N processes of b crops optimize the same loss as one process of N*b.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paintbench.vit.core import (build_encoder, compile_encoder, compile_module, gather_with_grad, mlp, normalized,
                                 pool_tokens, world)
from paintbench.vit.views import multi_crop, view_settings


def nt_xent(local: tuple[torch.Tensor, torch.Tensor], everyone: tuple[torch.Tensor, torch.Tensor], offset: int,
            temperature: float) -> torch.Tensor:
    """Mean NT-Xent over this process's 2b projections (unit rows) against all 2B of the global batch.

    local = (view 1, view 2) of this process's b crops, rows offset .. offset+b-1 of everyone's (view 1, view 2).
    """
    b, total = local[0].shape[0], everyone[0].shape[0]
    keys = torch.cat(everyone)  # (2B, d): view 1 of every crop, then view 2
    queries = torch.cat(local)  # (2b, d)
    logits = queries @ keys.T / temperature
    rows = torch.arange(b, device=logits.device) + offset
    own = torch.cat([rows, rows + total])  # each query's own column: excluded
    partner = torch.cat([rows + total, rows])  # the other view of the same crop: the positive
    logits[torch.arange(2 * b, device=logits.device), own] = float("-inf")
    return F.cross_entropy(logits, partner)


class SimclrObjective(nn.Module):
    def __init__(self, encoder_config: dict[str, Any], settings: dict[str, Any], views: dict[str, Any],
                 pooling: str, total_steps: int) -> None:
        super().__init__()
        self.backbone = build_encoder(**encoder_config)
        self.head = mlp(self.backbone.embed_dim, settings["hidden_dim"], settings["proj_dim"], settings["head_layers"])
        self.views = view_settings(views, encoder_config["img_size"], "global")
        self.temperature, self.pooling, self.clip_grad = settings["temperature"], pooling, settings["clip_grad"]

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def compile_networks(self) -> None:
        compile_encoder(self.backbone)
        compile_module(self.head)

    def forward(self, crops: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
        first, second = multi_crop(crops, self.views, self.views, 2, 0, seeds)
        projected = normalized(self.head(pool_tokens(self.backbone, torch.cat([first, second]), self.pooling)))
        local = projected.chunk(2)
        everyone = (gather_with_grad(local[0]), gather_with_grad(local[1]))
        rank = world()[0]
        return nt_xent((local[0], local[1]), everyone, rank * crops.shape[0], self.temperature)

    def after_step(self, step: int) -> None:
        pass
