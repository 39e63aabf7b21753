"""The formats of external encoders (config key `encoders.<name>`): what an encoder needs to be used as its authors
used it, taken from their public code (docs/methods.md cites the files): the architecture, the input it expects
(crop geometry, channel order, intensity scaling) and how its embedding is pooled.

`FORMATS` holds each format's published defaults; an entry names a format and may override any of them (`resolve`).
These defaults are facts of the published models, not settings, which is why they live here and not in the schema.
Everything here is checked before any job starts (no torch import): the weights themselves are read by
paintbench.vit.encoders when the embedding job starts, strictly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from paintbench.registry import CHANNELS

RANDOM = "random"
JUMP_FILE_ORDER = ["Mito", "AGP", "RNA", "ER", "DNA"]  # CPJUMP1's ch1..ch5; CellPaintSSL's DNA is input 4
CHAMMI_ORDER = ["DNA", "ER", "RNA", "AGP", "Mito"]  # CHAMMI's CP order (nucleus, ER, RNA, Golgi/AGP, mito)
POOLS = ("cls", "mean", "cls_mean", "output")
NORMALIZATIONS = ("none", "dataset", "instance")


@dataclass(frozen=True)
class EncoderSpec:
    """One external encoder, every default filled in (resolve)."""

    name: str
    format: str
    checkpoint: str
    variant: str | None = None
    model: str | None = None  # timm: the architecture's name
    model_kwargs: dict = field(default_factory=dict)
    patch_size: int | None = None
    module: str | None = None  # python: "package.module:function" returning an nn.Module
    native_size: int | None = None  # the input size the published weights were trained at
    channels: tuple[str, ...] = tuple(CHANNELS)  # our channel names in the model's input order
    crop: str = "nuclei"
    crop_size: int = 96
    input_size: int = 224
    divisor: float = 65535.0
    normalize: str = "instance"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    eps: float = 1e-7
    pooling: str = "mean"
    final_norm: bool = True
    foreground: dict | None = None  # {"fraction": f, "otsu_factor": k}: tiles with >= f of DNA > k x Otsu
    batch_size: int = 64
    trust_checkpoint: bool = False
    seed: int = 0

    @property
    def geometry(self) -> tuple:
        """What the crops of this encoder depend on: encoders sharing it share one pass over the images."""
        return (self.crop, self.crop_size, tuple(sorted((self.foreground or {}).items())))


CELLPAINTSSL_MEAN = (0.12528631, 0.17596765, 0.14736995, 0.13445823, 0.08349566)
CELLPAINTSSL_STD = (0.12594905, 0.15605405, 0.16031352, 0.15751939, 0.15773378)
FORMATS: dict[str, dict[str, Any]] = {
    "timm": dict(crop="nuclei", crop_size=96, input_size=224, divisor=65535.0, normalize="instance", pooling="mean"),
    # Bayer-Group/CellPaintSSL (Kim et al. 2025): ViT-S/16, 224 px tiles with a DNA foreground filter, /65535 then
    # the inference script's per-channel statistics; DINO and SimCLR take the class token after the final norm, MAE
    # the mean of the patch tokens with no final norm and no qkv bias (its inference model drops them).
    "cellpaintssl": dict(variant="dino", model="vit_small_patch16_224", patch_size=16, native_size=224, crop="tiles",
                         crop_size=224, input_size=224, divisor=65535.0, normalize="dataset", mean=CELLPAINTSSL_MEAN,
                         std=CELLPAINTSSL_STD, pooling="cls", channels=tuple(JUMP_FILE_ORDER),
                         foreground={"fraction": 0.01, "otsu_factor": 0.7}),
    # facebookresearch/dinov2 cell_dino_cp_vits8: ViT-S/8 at 128 px with LayerScale 1.0, chunked blocks; /255, then a
    # per-crop, per-channel z-score; the class token after the final norm (cls_mean: with the mean patch, 768-d).
    "cell_dino": dict(model="vit_small_patch16_224", patch_size=8, native_size=128, crop="nuclei", crop_size=128,
                      input_size=128, divisor=255.0, normalize="instance", eps=1e-7, pooling="cls",
                      channels=tuple(CHAMMI_ORDER), model_kwargs={"init_values": 1.0}),
    # recursionpharma OpenPhenom: channel-agnostic ViT-S/16 at 256 px; /255 then InstanceNorm (per crop and channel,
    # eps 1e-5); the mean of every channel's patch tokens, no norm. Channel order is not an input to it.
    "openphenom": dict(native_size=256, crop="tiles", crop_size=256, input_size=256, divisor=255.0, normalize="instance",
                       eps=1e-5, pooling="mean", final_norm=False, channels=tuple(CHANNELS)),
    "torchscript": dict(crop="nuclei", crop_size=96, input_size=96, divisor=65535.0, normalize="instance",
                        pooling="output"),
    "python": dict(crop="nuclei", crop_size=96, input_size=96, divisor=65535.0, normalize="instance",
                   pooling="output"),
}
VARIANTS = {"cellpaintssl": ("dino", "mae", "simclr")}
# CellPaintSSL's MAE embeds the mean of its patch tokens with no final norm (its inference model deletes it).
VARIANT_DEFAULTS = {("cellpaintssl", "mae"): dict(pooling="mean", final_norm=False)}


# Formats whose architecture paintbench builds (their backbones can be fine-tuned and saved by their own key names).
FINETUNABLE = ("timm", "cellpaintssl", "cell_dino", "openphenom")


def resolve(name: str, entry: dict[str, Any]) -> EncoderSpec:
    """The encoder of configuration entry `encoders.<name>`: its format's published defaults, then the entry's."""
    fmt = entry.get("format")
    if fmt not in FORMATS:
        raise ValueError(f"config key 'encoders.{name}.format': {fmt!r} is not one of {', '.join(FORMATS)}")
    given = {k: v for k, v in entry.items() if v is not None}
    values = {**FORMATS[fmt]}
    values.update(VARIANT_DEFAULTS.get((fmt, given.get("variant", values.get("variant"))), {}))
    values.update(given)
    for key in ("channels", "mean", "std"):
        if key in values:
            values[key] = tuple(values[key])
    spec = EncoderSpec(name=name, **values)
    check_spec(spec)
    return spec


def check_spec(spec: EncoderSpec) -> None:
    """What can be known without the weights; every message names the configuration key."""
    key = f"config key 'encoders.{spec.name}"
    if spec.checkpoint != RANDOM and not spec.checkpoint:
        raise ValueError(f"{key}.checkpoint': give the weights' file, or 'random' for a random-weight baseline")
    if spec.format in VARIANTS and spec.variant not in VARIANTS[spec.format]:
        raise ValueError(f"{key}.variant': {spec.variant!r} is not one of {', '.join(VARIANTS[spec.format])}")
    if sorted(spec.channels) != sorted(CHANNELS):
        raise ValueError(f"{key}.channels': name each of {', '.join(CHANNELS)} once, in the model's input order "
                         f"(got {list(spec.channels)})")
    if spec.normalize not in NORMALIZATIONS or spec.pooling not in POOLS:
        raise ValueError(f"{key}': normalize must be one of {NORMALIZATIONS}, pooling one of {POOLS}")
    if spec.normalize == "dataset" and not (len(spec.mean) == len(spec.std) == len(CHANNELS)):
        raise ValueError(f"{key}.mean' / '.std': normalize 'dataset' needs {len(CHANNELS)} values each")
    if spec.format in ("torchscript", "python") and spec.checkpoint == RANDOM:
        raise ValueError(f"{key}.checkpoint': a {spec.format} model has no architecture to draw random weights for")
    if spec.format == "python" and (not spec.module or ":" not in spec.module):
        raise ValueError(f"{key}.module': give 'package.module:function' (a function returning a torch module)")
    if spec.format == "timm" and not spec.model:
        raise ValueError(f"{key}.model': the timm architecture's name, e.g. vit_small_patch16_224")
    if spec.patch_size and spec.input_size % spec.patch_size:
        raise ValueError(f"{key}.input_size': {spec.input_size} px is not a multiple of the model's "
                         f"{spec.patch_size} px patches")
    if spec.format == "openphenom" and spec.input_size != spec.native_size:
        raise ValueError(f"{key}.input_size': OpenPhenom takes {spec.native_size} px crops only (its position code "
                         "is fixed per channel); set crop_size, and crops are resized to it")


def spec_record(spec: EncoderSpec) -> dict[str, Any]:
    """The resolved settings as JSON-ready values (what the rule passes and the log shows)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()}
