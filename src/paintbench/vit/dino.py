"""DINO self-distillation (Caron et al. 2021) on Cell Painting crops.

A student and a teacher share the architecture: a timm ViT encoder (the same as MAE's) and a projection head (an
MLP to a bottleneck, L2 normalization, and a weight-normalized last layer with its norm fixed at 1). The teacher
is not trained: after every optimizer step it moves towards the student by an exponential moving average whose
momentum follows a cosine from `momentum_teacher` to 1. The teacher sees the 2 global views of a crop, the
student all views (2 global + `local_crops` smaller local ones, paintbench.vit.views); the loss is the
cross-entropy between the teacher's centred, sharpened distribution (temperature warmed up from
`warmup_teacher_temp` to `teacher_temp`) and the student's (`student_temp`), over every pair of different views.
The centre is a running mean of the teacher's outputs (over all processes), which with sharpening keeps the
outputs from collapsing. The teacher's encoder is the feature set's encoder (as the DINO paper evaluates it).
Local views are smaller than the model's input: the encoders interpolate their position embeddings
(timm's dynamic_img_size; the state_dict is that of the plain model).

From DINOv2 (`koleo_weight`, default 0.1 as there; 0 = the DINO paper's objective): the Kozachenko-Leonenko term
-mean(log(distance to the nearest neighbour in the batch)) on the student's L2-normalized crop embeddings of each
global view. It spreads a batch's embeddings over the sphere. Without it, on Cell Painting crops, the prototypes
split one brightness axis: the embeddings' effective dimensionality falls from ~6 (random weights) to 1.3-3.7 and
replicate retrieval of planted phenotypes drops below random weights' (tests/test_vit_retrieval.py).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paintbench.vit.core import (build_encoder, compile_encoder, compile_module, gather_with_grad, mean_over_processes,
                                 mlp, pool_tokens, world)
from paintbench.vit.views import multi_crop, view_settings


def local_size(img_size: int, patch_size: int, ratio: float) -> int:
    """Side of the local views: ratio of the input size, a whole number of patches (at least 2)."""
    return max(2, round(img_size * ratio / patch_size)) * patch_size


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """Cosine schedule from `base` at step 0 to 1 at the last step."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total_steps) / max(1, total_steps)) + 1) / 2


def teacher_temperature(step: int, settings: dict[str, Any]) -> float:
    """Linear warmup from warmup_teacher_temp to teacher_temp over teacher_temp_warmup_steps, then constant."""
    warm = settings["teacher_temp_warmup_steps"]
    if step >= warm:
        return settings["teacher_temp"]
    return settings["warmup_teacher_temp"] + (settings["teacher_temp"] - settings["warmup_teacher_temp"]) * step / warm


def koleo(local: torch.Tensor, everyone: torch.Tensor | None = None, offset: int = 0,
          eps: float = 1e-8) -> torch.Tensor:
    """-mean log distance of each L2-normalized row of `local` to its nearest other row of `everyone` (Sablayrolles
    et al. 2019). `local` is rows offset .. offset+b-1 of `everyone` (the global batch under multi-process
    training; default: local itself), so N processes optimize the term of one process with the whole batch."""
    everyone = local if everyone is None else everyone
    queries, keys = F.normalize(local.float(), dim=-1), F.normalize(everyone.float(), dim=-1)
    distances = torch.cdist(queries, keys)
    rows = torch.arange(len(queries), device=queries.device)
    distances = distances.index_put((rows, rows + offset), torch.tensor(float("inf"), device=queries.device))
    return -torch.log(distances.min(dim=1).values + eps).mean()


class DinoHead(nn.Module):
    """MLP -> L2-normalized bottleneck -> weight-normalized linear (row norms fixed at 1: the DINO paper's
    norm_last_layer, which it found keeps training stable)."""

    def __init__(self, in_dim: int, settings: dict[str, Any]) -> None:
        super().__init__()
        self.mlp = mlp(in_dim, settings["hidden_dim"], settings["bottleneck_dim"], settings["head_layers"])
        self.last_layer = nn.Parameter(torch.empty(settings["out_dim"], settings["bottleneck_dim"]))
        nn.init.trunc_normal_(self.last_layer, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer, dim=-1))


class DinoObjective(nn.Module):
    def __init__(self, encoder_config: dict[str, Any], settings: dict[str, Any], views: dict[str, Any],
                 pooling: str, total_steps: int) -> None:
        super().__init__()
        kwargs = {**encoder_config.get("kwargs", {}), "dynamic_img_size": True}
        self.student = nn.ModuleDict({"encoder": build_encoder(**{**encoder_config, "kwargs": kwargs})})
        self.student["head"] = DinoHead(self.student["encoder"].embed_dim, settings)
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, settings["out_dim"]))
        size, patch = encoder_config["img_size"], encoder_config["patch_size"]
        self.global_views = view_settings(views, size, "global")
        self.local_views = view_settings(views, local_size(size, patch, settings["local_size_ratio"]), "local")
        self.settings, self.pooling, self.total_steps = settings, pooling, total_steps
        self.clip_grad = settings["clip_grad"]

    @property
    def encoder(self) -> nn.Module:
        return self.teacher["encoder"]

    def compile_networks(self) -> None:
        for net in (self.student, self.teacher):
            compile_encoder(net["encoder"])
            compile_module(net["head"])

    def _project(self, net: nn.ModuleDict, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(pooled encoder features, head outputs) per view. Views of one size go through the encoder together
        (one forward per size, as DINO batches them)."""
        features: list[torch.Tensor] = []
        out: list[torch.Tensor] = []
        start = 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[-1] == views[start].shape[-1]:
                end += 1
            feats = pool_tokens(net["encoder"], torch.cat(views[start:end]), self.pooling)
            features += list(feats.chunk(end - start))
            out += list(net["head"](feats).float().chunk(end - start))
            start = end
        return features, out

    def forward(self, crops: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
        s = self.settings
        views = multi_crop(crops, self.global_views, self.local_views, 2, s["local_crops"], seeds)
        student_features, student_out = self._project(self.student, views)
        student = [out / s["student_temp"] for out in student_out]
        with torch.no_grad():
            teacher_out = self._project(self.teacher, views[:2])[1]
            temp = teacher_temperature(step - 1, s)
            targets = [F.softmax((t - self.center) / temp, dim=-1) for t in teacher_out]
            self._update_center(torch.cat(teacher_out))
        total, pairs = crops.new_zeros((), dtype=torch.float32), 0
        for i, target in enumerate(targets):
            for v, logits in enumerate(student):
                if v != i:
                    total = total + torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
                    pairs += 1
        loss = total / pairs
        if s["koleo_weight"] > 0 and crops.shape[0] * world()[1] > 1:  # a nearest neighbour needs two crops
            offset = world()[0] * crops.shape[0]
            spread = sum(koleo(f, gather_with_grad(f), offset) for f in student_features[:2]) / 2
            loss = loss + s["koleo_weight"] * spread
        return loss

    @torch.no_grad()
    def _update_center(self, teacher_out: torch.Tensor) -> None:
        batch_center = mean_over_processes(teacher_out.mean(dim=0, keepdim=True))
        m = self.settings["center_momentum"]
        self.center.mul_(m).add_(batch_center, alpha=1 - m)

    def adjust_gradients(self, step: int) -> None:
        """The DINO paper keeps the last layer fixed for the first steps (an optional stabilizer)."""
        if step <= self.settings["freeze_last_layer_steps"]:
            self.student["head"].last_layer.grad = None

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        m = teacher_momentum(step, self.total_steps, self.settings["momentum_teacher"])
        for t, p in zip(self.teacher.parameters(), self.student.parameters()):
            t.mul_(m).add_(p.detach(), alpha=1 - m)
