"""Pre-training methods. Each is an nn.Module whose forward(batch) returns {"loss": ..., parts...} and whose
sample_fn() does the per-sample work (crops, masks, views) in the data workers."""
from __future__ import annotations

import torch.nn as nn

from sdmae.config import Config
from sdmae.errors import UsageError

METHODS = ("sdmae", "mae", "mocov3", "dino")


def build_method(cfg: Config) -> nn.Module:
    name = cfg.method.name
    if name == "sdmae":
        from sdmae.methods.sdmae import SDMAE
        return SDMAE(cfg)
    if name == "mae":
        from sdmae.methods.mae import MAE
        return MAE(cfg)
    if name == "mocov3":
        from sdmae.methods.mocov3 import MoCoV3
        return MoCoV3(cfg)
    if name == "dino":
        from sdmae.methods.dino import DINO
        return DINO(cfg)
    raise UsageError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
