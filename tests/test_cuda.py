"""What only a CUDA device can check (skipped without one; scripts/gpu_check.py runs them on a GPU machine): the
training step, our embedding and an external encoder give on the GPU what they give on the CPU."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, in_chans=5, kwargs={"depth": 2})


@pytest.fixture(autouse=True)
def no_tf32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@pytest.mark.parametrize("method", ["mae", "dino", "simclr"])
def test_training_steps_on_cuda_follow_the_cpu(method):
    """Fused AdamW, pinned memory and the CUDA generators of the views: three fp32 steps from one seed."""
    from paintbench.vit.methods import method_settings
    from paintbench.vit.train import build_state, train_step

    losses = {}
    for device in ("cpu", "cuda"):
        config = dict(method=method, settings=method_settings(method, {}), views={}, pooling="mean", steps=3,
                      batch_size=8, lr=1e-4, weight_decay=0.05, warmup_steps=1, seed=0, crop_shape=[5, 32, 32],
                      precision="fp32")
        state = build_state(TINY, torch.device(device), config, compile_model=False)
        batch = torch.rand(8, 5, 32, 32, generator=torch.Generator().manual_seed(1))
        losses[device] = [float(train_step(state, batch, step)) for step in (1, 2, 3)]
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=2e-3)


def test_embedding_on_cuda_matches_the_cpu_and_bf16_is_close():
    from paintbench.vit.core import autocast, build_encoder
    from paintbench.vit.embed import PooledEncoder

    torch.manual_seed(0)
    encoder = build_encoder(**TINY).eval()
    crops = torch.rand(16, 5, 48, 48)
    with torch.inference_mode():
        cpu = PooledEncoder(encoder, TINY, "mean")(crops)
        model = PooledEncoder(encoder, TINY, "mean").cuda()
        gpu = model(crops.cuda()).cpu()
        with autocast(torch.device("cuda")):
            low = model(crops.cuda()).float().cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    assert torch.nn.functional.cosine_similarity(low, cpu).min() > 0.99


def test_an_external_encoder_on_cuda_matches_the_cpu():
    from paintbench.encoder_formats import resolve
    from paintbench.vit.encoders import load_embedder

    spec = resolve("c", {"format": "cell_dino", "checkpoint": "random", "crop_size": 48, "input_size": 32})
    crops = torch.rand(4, 5, 48, 48) * 20000
    with torch.inference_mode():
        cpu = load_embedder(spec, "cpu")(crops)
        gpu = load_embedder(spec, "cuda")(crops.cuda()).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
