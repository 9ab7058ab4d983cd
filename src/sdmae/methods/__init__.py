"""Pre-training methods, each a `Method` (methods/base.py): the only interface the training loop uses."""
from __future__ import annotations

from sdmae.config import Config
from sdmae.errors import UsageError
from sdmae.methods.base import Method

__all__ = ["METHODS", "Method", "build_method"]

METHODS = ("sdmae", "mae", "mocov3", "dino")


def build_method(cfg: Config) -> Method:
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
