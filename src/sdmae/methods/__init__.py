"""Pre-training methods. Each is an nn.Module whose forward(batch) returns {"loss": ..., parts...} and whose
sample_fn() does the per-sample work (crops, masks, views) in the data workers."""
from __future__ import annotations

import torch.nn as nn

from sdmae.config import Config
from sdmae.errors import UsageError

METHODS = ("sdmae", "mae")


def build_method(cfg: Config) -> nn.Module:
    name = cfg.method.name
    if name == "sdmae":
        from sdmae.methods.sdmae import SDMAE
        return SDMAE(cfg)
    if name == "mae":
        from sdmae.methods.mae import MAE
        return MAE(cfg)
    raise UsageError(f"unknown method '{name}' (known: {', '.join(METHODS)})")
