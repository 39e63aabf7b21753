"""External encoders with known answers. No published weights can be fetched here, so each format's reference
architecture is built in the test as its public code defines it, randomly initialized, and saved under the published
key names and file layout: paintbench must load it strictly and embed crops to the same vectors as the reference
forward with the format's preprocessing (1e-5). Then the crop geometry on crafted fields, and the errors."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import timm
import torch
from timm.models.vision_transformer import ParallelScalingBlock

from paintbench.encoder_formats import CELLPAINTSSL_MEAN, CELLPAINTSSL_STD, FORMATS, resolve
from paintbench.registry import CHANNELS, ENCODER_FORMATS
from paintbench.vit.encoders import load_embedder

TOL = dict(rtol=1e-5, atol=1e-5)


def raw_crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Camera-unit crops in CHANNELS order: a bright blob per crop over a dim background, in uint16's range."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    crops = rng.uniform(200, 900, (n, len(CHANNELS), size, size))
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (size / 8) ** 2))
        crops[i] += rng.uniform(2000, 40000, (len(CHANNELS), 1, 1)) * blob
    return torch.tensor(crops, dtype=torch.float32)


def reordered(crops: torch.Tensor, channels) -> torch.Tensor:
    return crops[:, [CHANNELS.index(c) for c in channels]]


def instance_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True, unbiased=False) + eps)


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn (LayerScale gammas and norms included), so a key read from the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05 + (1.0 if p.ndim == 1 and p.numel() > 8 else 0.0))
    return model.eval()


def vit_small(**kwargs) -> torch.nn.Module:
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=5, **kwargs)


# ------------------------------------------------------------------------------------------------ CellPaintSSL
@pytest.fixture(scope="module")
def cellpaintssl_reference():
    """DINO's, MAE's and SimCLR's published inference backbones (timm ViT-S/16, 5 channels; MAE without qkv bias)."""
    return {"dino": randomize(vit_small(), 1), "simclr": randomize(vit_small(), 2),
            "mae": randomize(vit_small(qkv_bias=False), 3)}


def save_cellpaintssl(variant: str, model: torch.nn.Module, path) -> None:
    state = model.state_dict()
    if variant == "dino":  # train_dino.py: student (DDP-wrapped) and teacher (backbone + DINO head), args
        head = {"head.mlp.0.weight": torch.randn(2048, 384), "head.last_layer.weight_g": torch.ones(1000, 1)}
        teacher = {**{f"backbone.{k}": v for k, v in state.items()}, **head}
        student = {f"module.{k}": v for k, v in teacher.items()}
        torch.save({"teacher": teacher, "student": student, "epoch": 200, "args": argparse.Namespace(arch="vit_small")},
                   path)
    elif variant == "mae":  # {"model": the whole MAE}: its encoder had qkv biases and a final norm, and a decoder
        extra = {"mask_token": torch.randn(1, 1, 256), "decoder_embed.weight": torch.randn(256, 384),
                 "norm.weight": torch.randn(384), "norm.bias": torch.randn(384)}
        biases = {f"blocks.{i}.attn.qkv.bias": torch.randn(1152) for i in range(12)}
        torch.save({"model": {**state, **extra, **biases}, "epoch": 199}, path)
    else:  # a Lightning checkpoint: backbone.* and the projection head mlp.*
        heads = {"mlp.0.weight": torch.randn(512, 384), "mlp.2.weight": torch.randn(128, 512)}
        torch.save({"state_dict": {**{f"backbone.{k}": v for k, v in state.items()}, **heads}, "epoch": 10}, path)


@pytest.mark.parametrize("variant", ["dino", "mae", "simclr"])
def test_cellpaintssl_loads_strictly_and_embeds_as_the_reference(tmp_path, cellpaintssl_reference, variant):
    model = cellpaintssl_reference[variant]
    path = tmp_path / f"{variant}.pth"
    save_cellpaintssl(variant, model, path)
    spec = resolve("cpssl", {"format": "cellpaintssl", "variant": variant, "checkpoint": str(path)})
    embedder = load_embedder(spec)
    crops = raw_crops(2, 224)
    x = reordered(crops, ["Mito", "AGP", "RNA", "ER", "DNA"]) / 65535.0  # CPJUMP1's file order, DNA last
    x = (x - torch.tensor(CELLPAINTSSL_MEAN).view(1, 5, 1, 1)) / torch.tensor(CELLPAINTSSL_STD).view(1, 5, 1, 1)
    with torch.inference_mode():
        tokens = model.forward_features(x)  # timm: blocks, then the final norm
        if variant == "mae":  # the published MAE embeds before the final norm: undo nothing, recompute without it
            blocks = model.blocks(model._pos_embed(model.patch_embed(x)))
            expected = blocks[:, 1:].mean(dim=1)
        else:
            expected = tokens[:, 0]
        ours = embedder(crops)
    assert ours.shape == (2, 384)
    torch.testing.assert_close(ours, expected, **TOL)


# ------------------------------------------------------------------------------------------------ Cell-DINO
def chunked(state: dict[str, torch.Tensor], chunks: int = 4, depth: int = 12) -> dict[str, torch.Tensor]:
    """dinov2's BlockChunk names: block i of chunk c is 'blocks.<c>.<i>.' (i runs on across the chunks)."""
    size = depth // chunks
    return {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m.group(1)) // size}.{m.group(1)}.", k): v
            for k, v in state.items()}


@pytest.mark.parametrize("pooling, width", [("cls", 384), ("cls_mean", 768)])
def test_cell_dino_reads_chunked_blocks_and_embeds_as_the_reference(tmp_path, pooling, width):
    model = randomize(timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=5,
                                        img_size=128, patch_size=8, init_values=1.0), 4)
    state = {**chunked(model.state_dict()), "mask_token": torch.randn(1, 384)}
    assert "blocks.3.11.ls2.gamma" in state and "blocks.0.0.attn.qkv.bias" in state
    path = tmp_path / "cell_dino_cp_vits8.pth"
    torch.save(state, path)  # a flat state dict, loaded strictly by dinov2
    embedder = load_embedder(resolve("celldino", {"format": "cell_dino", "checkpoint": str(path), "pooling": pooling}))
    crops = raw_crops(2, 128, seed=1)
    x = instance_norm(reordered(crops, ["DNA", "ER", "RNA", "AGP", "Mito"]) / 255.0, 1e-7)
    with torch.inference_mode():
        tokens = model.forward_features(x)
        cls, patches = tokens[:, 0], tokens[:, 1:].mean(dim=1)
        expected = cls if pooling == "cls" else torch.cat([cls, patches], dim=1)
        ours = embedder(crops)
    assert ours.shape == (2, width)
    torch.testing.assert_close(ours, expected, **TOL)


# ------------------------------------------------------------------------------------------------ OpenPhenom
def published_openphenom() -> torch.nn.Module:
    """The encoder as maes_microscopy builds it: timm ViT-S/16 at 256 px with ParallelScalingBlock, qk-norm,
    LayerScale, no qkv bias, global_pool avg (final norm an identity)."""
    return timm.create_model("vit_small_patch16_224", pretrained=False, img_size=256, in_chans=6, num_classes=0,
                             fc_norm=None, class_token=True, init_values=1e-4, block_fn=ParallelScalingBlock,
                             qkv_bias=False, qk_norm=True, global_pool="avg")


def published_positions(channels: int = 11, grid: int = 16, dim: int = 384) -> torch.Tensor:
    """vit.py's fixed code: [sin(row), cos(row), sin(col), cos(col)] at 1 / 10000^(i / 96), tiled per channel,
    a zero vector first for the class token (written here from the formula, not from paintbench)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim // 4))
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    code = np.concatenate([np.sin(np.outer(rows, omega)), np.cos(np.outer(rows, omega)),
                           np.sin(np.outer(cols, omega)), np.cos(np.outer(cols, omega))], axis=1)
    return torch.tensor(np.concatenate([np.zeros((1, dim)), np.tile(code, (channels, 1))])[None], dtype=torch.float32)


@pytest.mark.parametrize("container", ["pickle", "safetensors"])
def test_openphenom_rebuilt_from_its_code_embeds_as_the_reference(tmp_path, container):
    vit = randomize(published_openphenom(), 5)
    conv = torch.nn.Conv2d(1, 384, kernel_size=16, stride=16)
    randomize(conv, 6)
    positions = published_positions()
    encoder = {"cls_token": vit.cls_token, "pos_embed": positions, "patch_embed.proj.weight": conv.weight,
               "patch_embed.proj.bias": conv.bias, **{k: v for k, v in vit.state_dict().items()
                                                    if k.startswith(("blocks.", "fc_norm."))}}
    state = {**{f"encoder.vit_backbone.{k}": v.detach().clone() for k, v in encoder.items()},
             "decoder.blocks.0.weight": torch.randn(512, 512), "encoder_decoder_proj.weight": torch.randn(512, 384),
             "decoder_pred.weight": torch.randn(256, 512)}
    path = tmp_path / "model.safetensors"
    if container == "pickle":  # what maes_microscopy's save_pretrained wrote under that name
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    embedder = load_embedder(resolve("phenom", {"format": "openphenom", "checkpoint": str(path)}))
    crops = raw_crops(2, 256, seed=2)
    x = instance_norm(crops / 255.0, 1e-5)  # Normalizer then InstanceNorm2d
    with torch.inference_mode():
        b, c = x.shape[:2]
        tokens = conv(x.reshape(b * c, 1, 256, 256)).flatten(2).transpose(1, 2).reshape(b, c * 256, 384)
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1) + positions[:, : 1 + c * 256]
        for block in vit.blocks:
            tokens = block(tokens)
        expected = tokens[:, 1:].mean(dim=1)  # predict(): mean of every channel's patch tokens, no norm
        ours = embedder(crops)
    torch.testing.assert_close(ours, expected, **TOL)


# ------------------------------------------------------------------------------------------------ other formats
def test_timm_torchscript_and_python_formats(tmp_path):
    model = randomize(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=5,
                                        img_size=32, patch_size=8, depth=2), 7)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "tiny.pt")  # saved from DDP
    spec = resolve("tiny", {"format": "timm", "checkpoint": str(tmp_path / "tiny.pt"), "model": "vit_tiny_patch16_224",
                            "model_kwargs": {"depth": 2}, "patch_size": 8, "crop_size": 32, "input_size": 32})
    crops = raw_crops(3, 32, seed=3)
    x = instance_norm(crops / 65535.0, 1e-7)
    with torch.inference_mode():
        torch.testing.assert_close(load_embedder(spec)(crops), model.forward_features(x)[:, 1:].mean(dim=1), **TOL)

    class Pooled(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner.forward_features(x)[:, 0]

    scripted = torch.jit.trace(Pooled(model), torch.zeros(1, 5, 32, 32))
    scripted.save(str(tmp_path / "scripted.pt"))
    spec = resolve("scripted", {"format": "torchscript", "checkpoint": str(tmp_path / "scripted.pt"), "crop_size": 32,
                                "input_size": 32})
    with torch.inference_mode():
        torch.testing.assert_close(load_embedder(spec)(crops), model.forward_features(x)[:, 0], **TOL)
    spec = resolve("python", {"format": "python", "checkpoint": str(tmp_path / "tiny.pt"), "crop_size": 32,
                              "input_size": 32, "module": "tests.test_encoders:tiny_from_file"})
    with torch.inference_mode():
        torch.testing.assert_close(load_embedder(spec)(crops), model.forward_features(x)[:, 0], **TOL)


def tiny_from_file(path: str) -> torch.nn.Module:
    """A user's `module:function`: builds its model, reads its own file, returns (B, 5, S, S) -> (B, D)."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=5, img_size=32,
                              patch_size=8, depth=2)
    model.load_state_dict({k.removeprefix("module."): v for k, v in torch.load(path).items()})

    class Cls(torch.nn.Module):
        def forward(self, x):
            return model.forward_features(x)[:, 0]

    return Cls()


def test_every_format_has_published_defaults_and_random_weights_build():
    assert tuple(FORMATS) == ENCODER_FORMATS
    mae = resolve("m", {"format": "cellpaintssl", "variant": "mae", "checkpoint": "random"})
    assert (mae.pooling, mae.final_norm, mae.crop, mae.crop_size) == ("mean", False, "tiles", 224)
    assert resolve("d", {"format": "cellpaintssl", "checkpoint": "random"}).foreground == {"fraction": 0.01,
                                                                                         "otsu_factor": 0.7}
    small = resolve("c", {"format": "cell_dino", "checkpoint": "random", "input_size": 32, "crop_size": 48})
    embedder = load_embedder(small)
    assert embedder.width == 384
    with torch.inference_mode():
        assert embedder(raw_crops(2, 48)).shape == (2, 384)


# ------------------------------------------------------------------------------------------------ errors
def test_key_mismatches_are_listed_never_ignored(tmp_path, cellpaintssl_reference):
    state = cellpaintssl_reference["simclr"].state_dict()
    del state["blocks.3.mlp.fc1.weight"]
    state["blocks.3.extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "broken.ckpt")
    spec = resolve("b", {"format": "cellpaintssl", "variant": "simclr", "checkpoint": str(tmp_path / "broken.ckpt")})
    with pytest.raises(ValueError, match=r"broken.ckpt: keys do not match.*missing \['blocks.3.mlp.fc1.weight'\], "
                                         r"unexpected \['blocks.3.extra.weight'\]"):
        load_embedder(spec)


def test_a_model_for_other_channels_is_named_as_such(tmp_path):
    three = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, in_chans=3)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in three.state_dict().items()}}, tmp_path / "rgb.pth")
    spec = resolve("rgb", {"format": "cellpaintssl", "checkpoint": str(tmp_path / "rgb.pth")})
    with pytest.raises(ValueError, match=r"rgb.pth: the model takes 3 input channels, config key "
                                         r"'encoders.rgb.channels' gives 5"):
        load_embedder(spec)


def test_files_that_are_not_checkpoints(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(ValueError, match=r"notes.pth: not a checkpoint torch can read"):
        load_embedder(resolve("t", {"format": "cell_dino", "checkpoint": str(text)}))
    with pytest.raises(ValueError, match=r"absent.pt: no such checkpoint file"):
        load_embedder(resolve("t", {"format": "cell_dino", "checkpoint": str(tmp_path / "absent.pt")}))
    with pytest.raises(ValueError, match=r"notes.pth: not a TorchScript module"):
        load_embedder(resolve("t", {"format": "torchscript", "checkpoint": str(text)}))
    with pytest.raises(ValueError, match=r"'encoders.t.module': cannot import nowhere:build"):
        load_embedder(resolve("t", {"format": "python", "checkpoint": str(text), "module": "nowhere:build"}))


@pytest.mark.parametrize("entry, message", [
    ({"format": "cell_dino", "checkpoint": "random", "input_size": 100}, "'encoders.e.input_size': 100 px is not a "
                                                                          "multiple of the model's 8 px patches"),
    ({"format": "openphenom", "checkpoint": "random", "input_size": 224}, "OpenPhenom takes 256 px crops only"),
    ({"format": "cellpaintssl", "checkpoint": "random", "variant": "byol"}, "'encoders.e.variant': 'byol'"),
    ({"format": "cellpaintssl", "checkpoint": "random", "channels": ["DNA", "ER", "RNA", "AGP"]},
     "'encoders.e.channels': name each of DNA, ER, RNA, AGP, Mito once"),
    ({"format": "torchscript", "checkpoint": "random"}, "has no architecture to draw random weights for"),
    ({"format": "timm", "checkpoint": "random"}, "'encoders.e.model': the timm architecture's name"),
    ({"format": "onnx", "checkpoint": "x.onnx"}, "'encoders.e.format': 'onnx' is not one of"),
])
def test_settings_a_model_cannot_take_are_refused_naming_the_key(entry, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve("e", entry)


def test_a_crop_the_model_cannot_take_fails_before_any_image(tmp_path):
    """A TorchScript ViT traced at 32 px (its position embeddings fixed) given 48 px input: the probe crop at load
    time fails naming the encoder and the sizes, before any field is read."""
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, in_chans=5, img_size=32,
                              patch_size=8, depth=1).eval()
    torch.jit.trace(model, torch.zeros(1, 5, 32, 32)).save(str(tmp_path / "fixed.pt"))
    spec = resolve("fixed", {"format": "torchscript", "checkpoint": str(tmp_path / "fixed.pt"), "crop_size": 64,
                             "input_size": 48})
    with pytest.raises(ValueError, match=r"encoder fixed \(torchscript\): a 64 px crop resized to 48 px does not go "
                                         r"through the model"):
        load_embedder(spec)
    timm_spec = resolve("t", {"format": "timm", "checkpoint": "random", "model": "vit_tiny_patch16_224",
                              "model_kwargs": {"depth": 1}, "patch_size": 8, "crop_size": 40, "input_size": 40})
    assert load_embedder(timm_spec).width == 192  # a timm architecture is built at the input size it is given


def test_the_usage_guides_examples_are_valid_entries():
    """docs/usage.md "Benchmark a published encoder": every entry validates against the schema and resolves."""
    import jsonschema
    import yaml

    from paintbench.schema import load_schema
    from tests.helpers import REPO

    text = (REPO / "docs" / "usage.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if b.startswith("encoders:"))
    examples = yaml.safe_load(block)
    schema = load_schema()["properties"]
    for section in ("encoders", "precomputed"):
        jsonschema.validate(examples[section], schema[section])
    specs = {name: resolve(name, entry) for name, entry in examples["encoders"].items()}
    assert {spec.format for spec in specs.values()} == set(ENCODER_FORMATS)
    assert specs["cpssl_mae"].pooling == "mean" and specs["cell_dino"].crop == "nuclei"
