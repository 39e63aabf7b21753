"""The ViT branch: crops -> self-supervised pretraining (MAE, DINO, SimCLR) -> embeddings -> well means.

Modules, from the shared core up: core (encoders, devices, pooling, distributed helpers), model (the MAE and the
checkpoint loaders), views (random views of DINO and SimCLR), mae / dino / simclr (one objective each), methods
(the registry of objectives), train (the loop), fields / crops / stream (cutting crops from fields), embed.
`build_encoder`, `pick_device` and `autocast` are the package's public face.
"""

from paintbench.vit.core import autocast, build_encoder, pick_device

__all__ = ["autocast", "build_encoder", "pick_device"]
