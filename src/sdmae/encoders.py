"""One way to get an encoder for evaluation, pictures, export and dense tasks.

`--ckpt FILE` (an sdmae checkpoint), `--ckpt DIR` (an `sdmae export` folder), `--init random` (the
architecture of `model.*` with fresh weights) or `--init timm:NAME` (timm weights already in the local
cache; nothing is downloaded).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from sdmae.config import Config, load_config
from sdmae.errors import SdmaeError, UsageError
from sdmae.models.vit import MaskedViT, build_encoder
from sdmae.checkpoint import load_checkpoint, load_weights


@dataclass
class LoadedEncoder:
    model: torch.nn.Module  # a timm VisionTransformer (MaskedViT for sdmae weights)
    cfg: Config  # the pre-training config (defaults for random / timm encoders)
    name: str  # short label for tables: checkpoint file, export folder, "random", "timm:NAME"
    source: str  # what identifies the weights (path or init spec), for caches


def encoder_state(model_state: dict) -> dict:
    """The encoder's entries of a pre-training state dict, under timm key names."""
    return {k[len("encoder."):]: v for k, v in model_state.items() if k.startswith("encoder.")}


def from_checkpoint(path: str | Path) -> LoadedEncoder:
    ckpt = load_checkpoint(path)
    cfg = load_config(base=ckpt.get("config", {}))
    enc = build_encoder(cfg.model.name, cfg.model.img_size, cfg.model.pos_embed)
    state = encoder_state(ckpt["model"])
    if not state:
        raise SdmaeError(f"{path} has no encoder weights (no 'encoder.' keys in its model)")
    load_weights(enc, state, path, f"the encoder {cfg.model.name} at {cfg.model.img_size} px of its config")
    return LoadedEncoder(enc, cfg, Path(path).name, str(Path(path).resolve()))


def from_export(folder: str | Path) -> LoadedEncoder:
    import json

    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path = folder / "config.json"
    if not meta_path.is_file() or not (folder / "model.safetensors").is_file():
        raise UsageError(f"{folder} is not an sdmae export folder (needs config.json and model.safetensors)")
    meta = json.loads(meta_path.read_text())
    cfg = load_config(base=meta.get("sdmae_config", {}))
    enc = build_encoder(cfg.model.name, cfg.model.img_size, cfg.model.pos_embed)
    load_weights(enc, load_file(str(folder / "model.safetensors")), folder / "model.safetensors",
                 f"the encoder {cfg.model.name} at {cfg.model.img_size} px of its config.json")
    return LoadedEncoder(enc, cfg, folder.name, str(folder.resolve()))


def random_encoder(cfg: Config, seed: int = 0) -> LoadedEncoder:
    torch.manual_seed(seed)
    enc = build_encoder(cfg.model.name, cfg.model.img_size, cfg.model.pos_embed)
    return LoadedEncoder(enc, cfg, "random", f"random:{cfg.model.name}:{cfg.model.img_size}:{seed}")


def timm_encoder(name: str, cfg: Config) -> LoadedEncoder:
    """timm weights, only if already cached locally (HF_HUB_OFFLINE): a clear error otherwise."""
    import timm

    try:  # never reach for the network: huggingface_hub read HF_HUB_OFFLINE when timm imported it
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, img_size=cfg.model.img_size)
    except Exception as e:
        raise UsageError(f"--init timm:{name}: timm weights are not available locally ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}). Download them once with network "
                         f"access (timm.create_model('{name}', pretrained=True)) or use --ckpt.") from e
    return LoadedEncoder(model, cfg, f"timm:{name}", f"timm:{name}:{cfg.model.img_size}")


def load_encoder(ckpt: Optional[str] = None, init: Optional[str] = None,
                 overrides: Optional[list[str]] = None) -> LoadedEncoder:
    """The encoder named by `--ckpt` or `--init`; `overrides` (--set) describe random/timm architectures."""
    if bool(ckpt) == bool(init):
        raise UsageError("give exactly one of --ckpt FILE_OR_EXPORT_DIR or --init random|timm:NAME")
    if ckpt:
        p = Path(ckpt)
        if not p.exists():
            raise UsageError(f"--ckpt: no such file or folder: {ckpt}")
        return from_export(p) if p.is_dir() else from_checkpoint(p)
    cfg = load_config(overrides=overrides or [])
    if init == "random":
        return random_encoder(cfg, cfg.train.seed)
    if init.startswith("timm:"):
        return timm_encoder(init[len("timm:"):], cfg)
    raise UsageError(f"--init must be 'random' or 'timm:NAME', got '{init}'")


__all__ = ["LoadedEncoder", "MaskedViT", "encoder_state", "load_encoder"]
