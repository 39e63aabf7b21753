"""OpenPhenom's encoder (recursionpharma/OpenPhenom; code: recursionpharma/maes_microscopy), rebuilt from its public
code for inference: a channel-agnostic ViT-S/16 at 256 px.

Facts of the published code this module reproduces (docs/methods.md cites the files):
- timm ViT-S/16 (384 wide, 12 blocks, 6 heads) with timm's ParallelScalingBlock: one fused input projection split
  [MLP, q, k, v], no qkv bias but an MLP bias, LayerNorm on q and k per head, LayerScale (init 1e-4); global_pool
  'avg', so the final norm is an identity (and the fc_norm it would apply after pooling is never used by predict).
- Channel-agnostic tokens: one shared Conv2d(1, 384, 16, stride 16) applied to every channel on its own; the tokens of
  all channels in channel-major order (token = channel * 256 + row * 16 + column), after a class token.
- Fixed 2-D sin-cos position embeddings (96 frequencies 1 / 10000^(i / 96), [sin(row), cos(row), sin(col), cos(col)]),
  the same for every channel, a zero vector for the class token: (1, 1 + 11 * 256, 384) for up to 11 channels.
- The embedding (predict): the mean of the patch tokens of every channel, class token excluded, no norm.
- Weights: encoder keys under `encoder.vit_backbone.`; the decoder (`decoder.`, `encoder_decoder_proj.`,
  `decoder_pred.`) is in the same file.
"""

from __future__ import annotations

import torch
from torch import nn

PATCH, IMG, DIM, DEPTH, HEADS, MAX_CHANNELS = 16, 256, 384, 12, 6, 11
GRID = IMG // PATCH
PREFIX = "encoder.vit_backbone."
DECODER_PREFIXES = ("decoder.", "encoder_decoder_proj.", "decoder_pred.")


def sincos_positions(grid: int = GRID, dim: int = DIM, channels: int = MAX_CHANNELS) -> torch.Tensor:
    """(1, 1 + channels * grid^2, dim): the class token's zero vector, then one grid's sin-cos code per channel."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    r, c = rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega
    one = torch.cat([torch.sin(r), torch.cos(r), torch.sin(c), torch.cos(c)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), one.repeat(channels, 1)]).unsqueeze(0).float()


class ChannelPatchEmbed(nn.Module):
    """One shared single-channel patch projection for every channel; tokens channel-major."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, DIM, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.proj(x.reshape(b * c, 1, h, w))  # (B*C, D, h', w')
        return tokens.flatten(2).transpose(1, 2).reshape(b, c * tokens.shape[-1] * tokens.shape[-2], DIM)


class OpenPhenomEncoder(nn.Module):
    """The published encoder's inference path; `forward_features` gives (B, 1 + C * 256, 384) tokens."""

    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import ParallelScalingBlock

        backbone = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=IMG, in_chans=1,
                                     num_classes=0, global_pool="avg", fc_norm=None, class_token=True,
                                     init_values=1e-4, block_fn=ParallelScalingBlock, qkv_bias=False, qk_norm=True)
        backbone.patch_embed = ChannelPatchEmbed()
        backbone.pos_embed = nn.Parameter(sincos_positions(), requires_grad=False)
        self.vit_backbone = backbone
        self.embed_dim = self.num_features = DIM

    @property
    def cls_token(self) -> nn.Parameter:
        return self.vit_backbone.cls_token

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if c > MAX_CHANNELS or (h, w) != (IMG, IMG):
            raise ValueError(f"OpenPhenom takes up to {MAX_CHANNELS} channels of {IMG}x{IMG} px, got {c} of {h}x{w}")
        vit = self.vit_backbone
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), vit.patch_embed(x)], dim=1)
        tokens = tokens + vit.pos_embed[:, : tokens.shape[1]]
        for block in vit.blocks:
            tokens = block(tokens)
        return vit.norm(tokens)  # an identity with global_pool 'avg', as published


def encoder_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the encoder's keys under this module's names, every other key but the decoder's kept as it is so that a
    strict load reports it; the decoder keys left out)."""
    kept, dropped = {}, []
    for key, value in state.items():
        if key.startswith(PREFIX):
            kept[f"vit_backbone.{key.removeprefix(PREFIX)}"] = value
        elif key.startswith(DECODER_PREFIXES):
            dropped.append(key)
        else:
            kept[key] = value
    return kept, dropped
