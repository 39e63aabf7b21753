"""Masked autoencoder (MAE) around a timm ViT encoder.

The encoder is the plain timm model from `build_encoder`, kept as `MaskedAutoencoder.encoder`, so
its state_dict loads into `build_encoder(**encoder_config)` unchanged and embedding needs no MAE
code. Pretraining runs the encoder on a random subset of patch tokens only; a small decoder
(timm Blocks) fills in mask tokens and regresses the pixels of the hidden patches.
`load_encoder` / `load_mae` read the files written by paintbench.vit.train back; the training objective around
the MAE is paintbench.vit.mae.MaeObjective.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from timm.models.vision_transformer import Block

from paintbench import schema
from paintbench.vit.core import IN_CHANS, build_encoder

NORM_PIX_EPS = 1e-6
# norm_pix_loss off by default: per-patch normalized targets (the MAE paper's choice for natural images) let
# the encoder ignore a patch's intensity, which in Cell Painting is signal (crops are already normalized per
# plate). Measured on the demo's planted phenotypes (tests/test_vit_retrieval.py, 3 seeds): replicate mAP of
# strong perturbations after 3,000 steps 0.76 with norm-pix targets vs 0.84-0.92 with raw pixels.
# Width, depth, heads and the target follow the configuration's defaults (vit.mae); mlp_ratio and learned_pos are
# the MAE paper's and not configurable.
DECODER_DEFAULTS: dict[str, Any] = dict(dim=schema.default("vit.mae.decoder_dim"),
                                        depth=schema.default("vit.mae.decoder_depth"),
                                        heads=schema.default("vit.mae.decoder_heads"), mlp_ratio=4.0, learned_pos=False,
                                        norm_pix_loss=schema.default("vit.mae.norm_pix_loss"))


def kept_count(num_patches: int, mask_ratio: float) -> int:
    """Visible patches per sample: round(L * (1 - mask_ratio)), at least one."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return max(1, round(num_patches * (1.0 - mask_ratio)))


def random_masking(tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
                   noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep a random subset of tokens (B, L, D) per sample.

    Returns the kept tokens (B, K, D) in shuffled order, the mask (B, L; 1 = hidden) in the original
    order, and ids_restore (B, L) that puts [kept, hidden] back into the original order. The
    shuffle comes from `noise` (B, L) when given, else from uniform noise drawn with `generator`;
    noise is drawn on the generator's device and moved, so a CPU generator also drives CUDA runs.
    """
    batch, length, dim = tokens.shape
    keep = kept_count(length, mask_ratio)
    if noise is None:
        draw_on = generator.device if generator is not None else tokens.device
        noise = torch.rand(batch, length, generator=generator, device=draw_on)
    noise = noise.to(tokens.device)
    # Stable sorts: ties (vanishingly rare) must not make the shuffle depend on the sort kernel.
    ids_shuffle = torch.argsort(noise, dim=1, stable=True)
    ids_restore = torch.argsort(ids_shuffle, dim=1, stable=True)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return kept, mask, ids_restore


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels ordered (py, px, channel)."""
    batch, chans, height, width = imgs.shape
    p = patch_size
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    h, w = height // p, width // p
    x = imgs.reshape(batch, chans, h, p, w, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(batch, h * w, p * p * chans)


def unpatchify(patches: torch.Tensor, patch_size: int, in_chans: int, grid: tuple[int, int]) -> torch.Tensor:
    """Exact inverse of `patchify`: (B, L, p*p*C) -> (B, C, H, W)."""
    batch = patches.shape[0]
    h, w = grid
    p = patch_size
    x = patches.reshape(batch, h, w, p, p, in_chans).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(batch, in_chans, h * p, w * p)


def normalize_patches(patches: torch.Tensor, eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """Per-patch standardized pixels (norm_pix_loss targets): (x - mean) / sqrt(var + eps).

    Population variance, so a patch with structure has unit variance exactly (up to eps).
    """
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=False)
    return (patches - mean) / torch.sqrt(var + eps)


def masked_patch_loss(pred: torch.Tensor, target_patches: torch.Tensor, mask: torch.Tensor,
                      norm_pix: bool = DECODER_DEFAULTS["norm_pix_loss"]) -> torch.Tensor:
    """Mean squared error over the hidden patches only (mask 1); visible patches carry no loss."""
    target = normalize_patches(target_patches) if norm_pix else target_patches
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def sincos_pos_embed_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (L, dim): half the channels code rows, half columns."""
    if dim % 4:
        raise ValueError(f"decoder dim must be a multiple of 4 for the sin-cos embedding, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid[0], dtype=torch.float64),
                                torch.arange(grid[1], dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angles = coord[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


class MaeDecoder(nn.Module):
    """Light transformer decoder: visible latents + mask tokens -> pixels of every patch."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch_pixels: int, num_prefix_tokens: int,
                 dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, learned_pos: bool = False) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # Fixed sin-cos by default (as in MAE); a frozen Parameter still travels in the state_dict.
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(grid, dim).unsqueeze(0), requires_grad=learned_pos)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm)
                                      for _ in range(depth)])
        self.norm = norm(dim)
        self.head = nn.Linear(dim, patch_pixels)
        self.apply(_init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, prefix + K, D_enc), ids_restore (B, L) -> predicted patches (B, L, patch_pixels)."""
        x = self.embed(latent)
        prefix, visible = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        batch, length = ids_restore.shape
        fill = self.mask_token.to(visible.dtype).expand(batch, length - visible.shape[1], -1)
        full = torch.cat([visible, fill], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        full = full + self.pos_embed.to(full.dtype)
        # Prefix tokens (cls/registers) stay in the sequence as global context, without position.
        x = self.blocks(torch.cat([prefix, full], dim=1))
        return self.head(self.norm(x))[:, self.num_prefix_tokens:]


def _init_weights(module: nn.Module) -> None:
    """Xavier linears and unit LayerNorms for the decoder (timm already initialized the encoder)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaskedAutoencoder(nn.Module):
    """MAE: `encoder` is a plain timm ViT (num_classes=0), `decoder` a MaeDecoder."""

    def __init__(self, encoder: nn.Module, decoder_dim: int = DECODER_DEFAULTS["dim"],
                 decoder_depth: int = DECODER_DEFAULTS["depth"], decoder_heads: int = DECODER_DEFAULTS["heads"],
                 decoder_mlp_ratio: float = DECODER_DEFAULTS["mlp_ratio"],
                 learned_decoder_pos: bool = DECODER_DEFAULTS["learned_pos"],
                 norm_pix_loss: bool = DECODER_DEFAULTS["norm_pix_loss"]) -> None:
        super().__init__()
        self.encoder = encoder
        embed = encoder.patch_embed
        self.patch_size = int(embed.patch_size[0])
        if tuple(embed.patch_size) != (self.patch_size, self.patch_size):
            raise ValueError(f"square patches required, got {tuple(embed.patch_size)}")
        self.in_chans = int(embed.proj.in_channels)
        self.grid = (int(embed.grid_size[0]), int(embed.grid_size[1]))
        self.num_patches = self.grid[0] * self.grid[1]
        self.norm_pix_loss = norm_pix_loss
        self.decoder = MaeDecoder(encoder.embed_dim, self.grid, self.patch_size**2 * self.in_chans,
                                  encoder.num_prefix_tokens, decoder_dim, decoder_depth, decoder_heads,
                                  decoder_mlp_ratio, learned_decoder_pos)

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        return patchify(imgs, self.patch_size)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        return unpatchify(patches, self.patch_size, self.in_chans, self.grid)

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None,
                        noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a random visible subset; position embeddings are added before masking (timm's _pos_embed)."""
        enc = self.encoder
        x = enc._pos_embed(enc.patch_embed(imgs))
        prefix_count = enc.num_prefix_tokens
        prefix, patches = x[:, :prefix_count], x[:, prefix_count:]
        kept, mask, ids_restore = random_masking(patches, mask_ratio, generator, noise)
        # timm's patch_drop is skipped on purpose: MAE masking already drops tokens.
        x = enc.norm_pre(torch.cat([prefix, kept], dim=1))
        x = enc.norm(enc.blocks(x))
        return x, mask, ids_restore

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (B, C, H, W) -> (loss, pred (B, L, p*p*C) in normalized-target space if norm_pix_loss, mask (B, L))."""
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, generator, noise)
        pred = self.decoder(latent, ids_restore)
        loss = masked_patch_loss(pred, self.patchify(imgs.float()), mask, self.norm_pix_loss)
        return loss, pred, mask


def build_mae(encoder_config: dict[str, Any], decoder_dim: int = DECODER_DEFAULTS["dim"],
              decoder_depth: int = DECODER_DEFAULTS["depth"], decoder_heads: int = DECODER_DEFAULTS["heads"],
              decoder_mlp_ratio: float = DECODER_DEFAULTS["mlp_ratio"],
              learned_decoder_pos: bool = DECODER_DEFAULTS["learned_pos"],
              norm_pix_loss: bool = DECODER_DEFAULTS["norm_pix_loss"]) -> MaskedAutoencoder:
    """An MAE whose encoder is `build_encoder(**encoder_config)`."""
    encoder = build_encoder(**encoder_config)
    if getattr(encoder, "dynamic_img_size", False):
        raise ValueError("dynamic_img_size encoders are not supported for MAE pretraining")
    return MaskedAutoencoder(encoder, decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio,
                             learned_decoder_pos, norm_pix_loss)


def build_mae_from_decoder_config(encoder_config: dict[str, Any], decoder: dict[str, Any] | None) -> MaskedAutoencoder:
    """build_mae with a decoder dict (keys of DECODER_DEFAULTS), as stored in train_config."""
    spec = {**DECODER_DEFAULTS, **(decoder or {})}
    unknown = set(spec) - set(DECODER_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown decoder settings {sorted(unknown)}; known: {sorted(DECODER_DEFAULTS)}")
    return build_mae(encoder_config, spec["dim"], spec["depth"], spec["heads"], spec["mlp_ratio"],
                     spec["learned_pos"], spec["norm_pix_loss"])


def _load(path: Path) -> Any:
    """torch.load restricted to tensors and plain containers; any failure names the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # missing file, pickled objects, truncated data
        raise ValueError(f"{path}: cannot load as a state_dict or paintbench checkpoint: {error}") from error


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept state_dicts saved from wrappers: torch.compile ('_orig_mod.'), DDP ('module.'), a whole MAE ('encoder.')."""
    for prefix in ("_orig_mod.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_encoder(path: str | Path, device: str | torch.device = "cpu",
                 encoder_config: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Encoder (eval mode) + its config from our checkpoint.pt or encoder.pt, or from a plain timm state_dict
    file (then `encoder_config` is required). Mismatches are errors naming the file."""
    path = Path(path)
    obj = _load(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a state_dict or paintbench checkpoint ({type(obj).__name__})")
    if "encoder" in obj and "encoder_config" in obj:
        state, config = obj["encoder"], obj["encoder_config"]
        if encoder_config is not None and dict(encoder_config) != config:
            raise ValueError(f"{path}: stored encoder_config {config} differs from the given {encoder_config}")
    else:
        if encoder_config is None:
            raise ValueError(f"{path}: a plain state_dict needs an encoder_config (model, img_size, patch_size, ...)")
        state, config = _strip_prefixes(obj), dict(encoder_config)
    if config.get("in_chans", IN_CHANS) != IN_CHANS:
        raise ValueError(f"{path}: encoder_config has in_chans={config['in_chans']}, Cell Painting needs {IN_CHANS}")
    proj = state.get("patch_embed.proj.weight")
    if proj is not None and proj.shape[1] != IN_CHANS:
        raise ValueError(f"{path}: patch embedding takes {proj.shape[1]} channels, Cell Painting needs {IN_CHANS}")
    encoder = build_encoder(**config)
    try:
        missing, unexpected = encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path}: weights do not fit {config}: {error}") from error
    if missing or unexpected:
        raise ValueError(f"{path}: keys do not match {config['model']}: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                         f"{'...' if len(unexpected) > 5 else ''}")
    return encoder.to(device).eval(), config


def load_mae(path: str | Path, device: str | torch.device = "cpu") -> MaskedAutoencoder:
    """The whole MAE (encoder + decoder) from an MAE checkpoint.pt, e.g. to look at reconstructions."""
    state = _load(Path(path))
    train_config = state["train_config"]
    if train_config.get("method", "mae") != "mae" or "model" not in state:
        raise ValueError(f"{path}: not a checkpoint of paintbench's MAE (method {train_config.get('method')!r})")
    settings = train_config["settings"]
    decoder = {k.removeprefix("decoder_"): v for k, v in settings.items() if k.startswith("decoder_")}
    model = build_mae_from_decoder_config(state["encoder_config"], decoder | {"norm_pix_loss": settings["norm_pix_loss"]})
    model.load_state_dict({k.removeprefix("mae."): v for k, v in state["model"].items()})
    return model.to(device).eval()
