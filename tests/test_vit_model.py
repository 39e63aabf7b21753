"""The MAE model: masking, patch layout, loss on hidden patches only, encoder kept as a plain timm ViT."""

from __future__ import annotations

import pytest
import torch

from paintbench.vit import build_encoder
from paintbench.vit.model import (build_mae, masked_patch_loss, normalize_patches, patchify, random_masking,
                                  sincos_pos_embed_2d, unpatchify)

TINY = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5,
            kwargs=dict(depth=2, embed_dim=64, num_heads=2))
GRID, PATCHES = (4, 4), 16


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return build_mae(TINY, decoder_dim=32, decoder_depth=1, decoder_heads=2).eval()


def test_patchify_round_trip_and_layout():
    imgs = torch.randn(3, 5, 32, 24)
    patches = patchify(imgs, 8)
    assert patches.shape == (3, 12, 8 * 8 * 5)
    assert torch.equal(unpatchify(patches, 8, 5, (4, 3)), imgs)
    # Patch 1 is row 0, column 1; pixels ordered (py, px, channel).
    assert torch.equal(patches[0, 1].reshape(8, 8, 5), imgs[0, :, 0:8, 8:16].permute(1, 2, 0))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.zeros(1, 5, 30, 32), 8)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_random_masking_counts_and_restore(ratio):
    batch, length = 4, 50
    tokens = torch.arange(length, dtype=torch.float32).repeat(batch, 1).unsqueeze(-1).repeat(1, 1, 3)
    kept, mask, ids_restore = random_masking(tokens, ratio, torch.Generator().manual_seed(1))
    keep = round(length * (1 - ratio))
    assert kept.shape == (batch, keep, 3)
    assert mask.shape == (batch, length)
    assert torch.equal(mask.sum(1), torch.full((batch,), float(length - keep)))
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    for b in range(batch):
        # The kept tokens are exactly the unmasked positions.
        assert sorted(kept[b, :, 0].long().tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
        # [kept, placeholders] gathered with ids_restore is the original order at visible positions.
        full = torch.cat([kept[b, :, 0], torch.full((length - keep,), -1.0)])
        restored = full[ids_restore[b]]
        visible = mask[b] == 0
        assert torch.equal(restored[visible], tokens[b, visible, 0])
        assert torch.all(restored[~visible] == -1)
    # Per-sample shuffles differ, and a generator with the same seed gives the same masking.
    assert not torch.equal(mask[0], mask[1])
    _, again, _ = random_masking(tokens, ratio, torch.Generator().manual_seed(1))
    assert torch.equal(mask, again)


def test_random_masking_rejects_full_masking():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(torch.zeros(1, 4, 2), 1.0)


def test_normalized_targets():
    patches = torch.randn(2, 7, 320) * 5 + 3
    normed = normalize_patches(patches)
    torch.testing.assert_close(normed.mean(-1), torch.zeros(2, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(-1, unbiased=False), torch.ones(2, 7), atol=1e-4, rtol=0)
    # A flat patch stays finite (eps) and becomes zeros.
    assert torch.equal(normalize_patches(torch.full((1, 1, 8), 4.0)), torch.zeros(1, 1, 8))


def test_loss_ignores_visible_patches():
    gen = torch.Generator().manual_seed(2)
    pred, target = torch.randn(3, 16, 20, generator=gen), torch.randn(3, 16, 20, generator=gen)
    mask = (torch.rand(3, 16, generator=gen) < 0.75).float()
    base = masked_patch_loss(pred, target, mask, norm_pix=True)
    changed = pred.clone()
    changed[mask == 0] += 100.0
    assert torch.equal(masked_patch_loss(changed, target, mask, norm_pix=True), base)
    changed[mask == 1] += 0.1
    assert masked_patch_loss(changed, target, mask, norm_pix=True) != base
    # Exact value: mean over hidden patches of the per-patch MSE against normalized targets.
    expected = ((pred - normalize_patches(target)) ** 2).mean(-1)[mask == 1].mean()
    torch.testing.assert_close(base, expected)
    raw = ((pred - target) ** 2).mean(-1)[mask == 1].mean()
    torch.testing.assert_close(masked_patch_loss(pred, target, mask), raw)  # raw pixels by default, as vit.mae


def test_forward_shapes_and_determinism(mae):
    imgs = torch.randn(2, 5, 32, 32)
    with torch.no_grad():
        loss, pred, mask = mae(imgs, 0.75, torch.Generator().manual_seed(3))
        loss2, pred2, mask2 = mae(imgs, 0.75, torch.Generator().manual_seed(3))
    assert pred.shape == (2, PATCHES, 8 * 8 * 5) and mask.shape == (2, PATCHES)
    assert torch.equal(mask.sum(1), torch.full((2,), 12.0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(loss, loss2) and torch.equal(pred, pred2) and torch.equal(mask, mask2)
    assert torch.allclose(loss, masked_patch_loss(pred, mae.patchify(imgs), mask, norm_pix=mae.norm_pix_loss))
    # The encoder sees only kept tokens (plus the class token).
    latent, _, _ = mae.forward_encoder(imgs, 0.75, torch.Generator().manual_seed(3))
    assert latent.shape == (2, 1 + 4, 64)


def test_gradients_reach_encoder_and_decoder(mae):
    mae.zero_grad()
    loss, _, _ = mae(torch.randn(2, 5, 32, 32), 0.75, torch.Generator().manual_seed(4))
    loss.backward()
    assert mae.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert mae.decoder.mask_token.grad.abs().sum() > 0
    assert mae.decoder.pos_embed.grad is None  # fixed sin-cos by default
    mae.zero_grad()


def test_encoder_is_a_plain_timm_model(mae):
    plain = build_encoder(**TINY)
    plain.load_state_dict(mae.encoder.state_dict())  # strict: same keys and shapes
    assert not any(k.startswith("decoder") for k in mae.encoder.state_dict())
    assert mae.encoder(torch.randn(1, 5, 32, 32)).shape == (1, 64)


def test_sincos_pos_embed():
    emb = sincos_pos_embed_2d(GRID, 32)
    assert emb.shape == (16, 32)
    assert len({tuple(row.tolist()) for row in emb}) == 16  # every position distinct
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(GRID, 30)
