"""Random views for DINO/SimCLR: exact geometry, per-sample seeding, channels never mixed, phenotypes kept."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from paintbench.vit.views import VIEW_DEFAULTS, ViewSettings, multi_crop, random_views, view_seeds, view_settings

S, C = 48, 5
# Geometry only, nothing random left unless a test turns it on.
PLAIN = ViewSettings(size=S, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False, rotate90=False, intensity_scale=0.0,
                     intensity_shift=0.0, noise=0.0)


def random_crops(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, C, S, S, generator=torch.Generator().manual_seed(seed)) * 3


def cell_crop() -> torch.Tensor:
    """A disk 'cell' with a brighter nucleus on a dark background, each channel its own level, some texture."""
    yy, xx = torch.meshgrid(torch.arange(S) - (S - 1) / 2, torch.arange(S) - (S - 1) / 2, indexing="ij")
    r = (yy**2 + xx**2).sqrt()
    cell, nucleus = (r < 18).float(), (r < 8).float()
    crop = torch.stack([2 * nucleus, 0.8 * cell, 0.6 * cell + 0.4 * nucleus, 0.7 * cell, 0.9 * cell]) + 0.05
    return crop * (1 + 0.2 * torch.rand(C, S, S, generator=torch.Generator().manual_seed(3)))


def dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of (..., H, W)."""
    return [torch.rot90(f, k, dims=(-2, -1)) for f in (x, torch.flip(x, dims=(-1,))) for k in range(4)]


def test_identity_geometry():
    crops = random_crops(4)
    views = random_views(crops, PLAIN, torch.arange(4))
    torch.testing.assert_close(views, crops, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_shapes_and_dtype(dtype):
    crops = random_crops(3).to(dtype)
    for kind, size in (("global", 32), ("local", 16)):
        views = random_views(crops, view_settings({"blur_prob": 0.5}, size, kind), torch.arange(3))
        assert views.shape == (3, C, size, size) and views.dtype == dtype and torch.isfinite(views).all()
    with pytest.raises(ValueError, match="one seed per crop"):
        random_views(crops, PLAIN, torch.arange(2))


def test_each_view_depends_only_on_its_crop_and_seed():
    crops, seeds = random_crops(6), torch.tensor([5, -1, 2**63 - 1, 7, -(2**63), 12345])
    settings = view_settings({"blur_prob": 0.5}, 32, "global")
    views = random_views(crops, settings, seeds)
    for i in range(6):
        alone = random_views(crops[i:i + 1], settings, seeds[i:i + 1])
        torch.testing.assert_close(alone[0], views[i], atol=1e-6, rtol=1e-6)
    order = torch.tensor([3, 0, 5, 1, 4, 2])  # another batch composition, e.g. another process's slice
    torch.testing.assert_close(random_views(crops[order], settings, seeds[order]), views[order], atol=1e-6, rtol=1e-6)
    assert torch.equal(random_views(crops, settings, seeds), views)
    other = random_views(crops, settings, seeds + 1)
    assert all(not torch.allclose(other[i], views[i], atol=1e-3) for i in range(6))


@pytest.mark.parametrize("flip, rotate90, expected", [(True, True, 8), (True, False, 4), (False, True, 4)])
def test_flips_and_rotations_are_exact_pixel_permutations(flip, rotate90, expected):
    crop = random_crops(1)[0]
    variants = dihedral(crop)
    if not rotate90:  # flips only: identity, horizontal, vertical, both (= rotation by 180)
        variants = [crop, torch.flip(crop, (-1,)), torch.flip(crop, (-2,)), torch.rot90(crop, 2, (-2, -1))]
    elif not flip:
        variants = variants[:4]
    settings = dataclasses.replace(PLAIN, flip=flip, rotate90=rotate90)
    views = random_views(crop.expand(64, -1, -1, -1), settings, torch.arange(64))
    seen = set()
    for view in views:
        match = [i for i, v in enumerate(variants) if torch.allclose(view, v, atol=1e-5, rtol=0)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == expected


def test_photometry_is_per_channel_gain_shift_and_noise():
    crop = random_crops(1)[0, :1].expand(C, -1, -1) + 0.5  # every channel the same image
    crops, seeds = crop.expand(200, -1, -1, -1), torch.arange(200)
    gain = random_views(crops, dataclasses.replace(PLAIN, intensity_scale=0.1), seeds) / crop
    # One gain per channel and view.
    torch.testing.assert_close(gain, gain[..., :1, :1].expand_as(gain), atol=1e-4, rtol=0)
    gain = gain[..., 0, 0]
    assert 0.9 <= gain.min() < 0.91 and 1.09 < gain.max() <= 1.1
    corr = torch.corrcoef(gain.T)
    assert (corr - torch.eye(C)).abs().max() < 0.3  # channels drawn independently
    shift = random_views(crops, dataclasses.replace(PLAIN, intensity_shift=0.05), seeds) - crop
    shift = shift[..., 0, 0] / crop.mean((1, 2))  # relative to the channel's mean
    assert -0.05 <= shift.min() < -0.049 and 0.049 < shift.max() <= 0.05
    noise = random_views(crops[:4], dataclasses.replace(PLAIN, noise=0.02), seeds[:4]) - crop
    torch.testing.assert_close(noise.std((2, 3)) / crop.std((1, 2)), torch.full((4, C), 0.02), atol=2e-3, rtol=0)


@pytest.mark.parametrize("extra", [{"intensity_shift": 0.0, "noise": 0.0}, {}, {"blur_prob": 1.0}])
def test_channels_are_never_mixed(extra):
    crops = torch.zeros(16, C, S, S)
    crops[:, 2] = random_crops(16)[:, 2] + 0.5
    views = random_views(crops, view_settings(extra, 32, "global"), torch.arange(16))
    lit = torch.ones(C, dtype=torch.bool)
    lit[2] = False
    assert torch.equal(views[:, lit], torch.zeros_like(views[:, lit]))  # relative shift/noise of a zero channel: 0
    assert (views[:, 2].mean((1, 2)) > 0.5).all()


def test_planted_intensity_phenotype_survives():
    control = cell_crop()
    treated = control.clone()
    treated[3] *= 1.5
    settings = view_settings({}, S, "global")
    means_c = random_views(control.expand(200, -1, -1, -1), settings, torch.arange(200)).mean((2, 3))
    means_t = random_views(treated.expand(200, -1, -1, -1), settings, torch.arange(1000, 1200)).mean((2, 3))
    med_c, med_t = means_c.median(0).values, means_t.median(0).values
    q05, q95 = means_c.quantile(0.05, dim=0), means_c.quantile(0.95, dim=0)
    assert med_t[3] > q95[3]
    assert 1.35 < med_t[3] / med_c[3] < 1.65
    for c in (0, 1, 2, 4):
        assert q05[c] < med_t[c] < q95[c]


def test_crop_box_stays_inside():
    # A ramp in x (channel 0) and y (channel 1): inside the crop, bilinear sampling of a ramp is exactly a plane in
    # output coordinates; a box reaching past the border would fold it (reflection padding) into a V.
    ramp = torch.arange(S, dtype=torch.float64)
    crop = torch.stack([ramp.expand(S, S), ramp[:, None].expand(S, S)])[None]
    size = 16  # every box is at least 24 px wide, so no output sample falls in the half-pixel rim
    ii, jj = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    design = torch.stack([torch.ones_like(ii), ii, jj], -1).reshape(-1, 3)
    for scale, ratio in (((0.25, 1.0), (3 / 4, 4 / 3)), ((1.0, 1.0), (1 / 4, 4.0))):  # the second needs clamping
        settings = dataclasses.replace(PLAIN, size=size, scale=scale, ratio=ratio, flip=True, rotate90=True)
        views = random_views(crop.expand(100, -1, -1, -1), settings, torch.arange(100))
        for view in views.reshape(100, 2, -1):
            fit = torch.linalg.lstsq(design, view.T).solution
            torch.testing.assert_close(design @ fit, view.T, atol=1e-6, rtol=0)
        assert views.min() >= 0 and views.max() <= S - 1
    # A crop with a constant border and brighter inside: geometry-only views stay within the input's range.
    crops = random_crops(8) + 1
    crops[..., :4, :] = crops[..., -4:, :] = crops[..., :4] = crops[..., -4:] = 1.0
    # Upsampling full-width boxes (aspect clamped) puts output samples in the half-pixel rim, where zero padding
    # would darken the border.
    for size, scale, ratio in ((32, (0.15, 1.0), (3 / 4, 4 / 3)), (64, (1.0, 1.0), (1 / 3, 3.0))):
        settings = dataclasses.replace(PLAIN, size=size, scale=scale, ratio=ratio, flip=True, rotate90=True)
        views = random_views(crops, settings, torch.arange(8))
        assert views.min() >= 1.0 - 1e-6 and views.max() <= crops.max() + 1e-6


def test_multi_crop():
    crops, seeds = random_crops(3), torch.tensor([0, 1, 2])
    glob, local = view_settings({}, 32, "global"), view_settings({}, 16, "local")
    views = multi_crop(crops, glob, local, 2, 3, seeds)
    assert [v.shape[-1] for v in views] == [32, 32, 16, 16, 16]
    assert not torch.allclose(views[0], views[1]) and not torch.allclose(views[2], views[3])
    torch.testing.assert_close(views[4], random_views(crops, local, view_seeds(seeds, 4)))
    alone = multi_crop(crops[1:2], glob, local, 2, 3, seeds[1:2])
    for a, v in zip(alone, views):
        torch.testing.assert_close(a[0], v[1], atol=1e-6, rtol=1e-6)
    assert view_seeds(torch.tensor([2**63 - 1]), 7).dtype == torch.int64


def test_view_settings_defaults_and_errors():
    glob, local = view_settings({}, 224, "global"), view_settings({"noise": 0}, 112, "local")
    assert (glob.size, glob.scale, glob.flip, glob.noise, glob.blur_sigma) == (224, (0.5, 1.0), True, 0.02, (0.1, 1.0))
    assert (local.size, local.scale, local.noise) == (112, (0.15, 0.5), 0.0)
    assert set(VIEW_DEFAULTS) == {"global_scale", "local_scale", "flip", "rotate90", "intensity_scale",
                                  "intensity_shift", "noise", "blur_prob", "blur_sigma"}  # the schema's vit.views
    bad = [({"colour_jitter": 0.4}, "colour_jitter"), ({"global_scale": [0, 1]}, "global_scale"),
           ({"global_scale": [0.5, 1.5]}, "global_scale"), ({"local_scale": [0.6, 0.3]}, "local_scale"),
           ({"local_scale": "big"}, "local_scale"), ({"noise": -0.1}, "noise"), ({"blur_prob": 2}, "blur_prob"),
           ({"intensity_scale": 1.0}, "intensity_scale"), ({"blur_sigma": [1.0, 0.5]}, "blur_sigma"),
           ({"flip": "yes"}, "flip"), ({"local_size_ratio": 0.5}, "local_size_ratio"),
           ({"intensity_shift": "x"}, "intensity_shift")]
    for config, key in bad:
        with pytest.raises(ValueError, match=rf"config key 'vit\.views\.{key}'"):
            view_settings(config, 224, "local")  # a bad global_scale is caught while building local views too
    with pytest.raises(ValueError, match="view kind"):
        view_settings({}, 224, "medium")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_agree():
    crops, seeds = random_crops(8), torch.arange(8)
    settings = view_settings({"blur_prob": 0.5}, 32, "global")
    torch.testing.assert_close(random_views(crops.cuda(), settings, seeds.cuda()).cpu(),
                               random_views(crops, settings, seeds), atol=1e-4, rtol=1e-4)
