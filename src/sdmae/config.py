"""Typed run configuration: dataclasses, YAML files and dotted ``--set key=value`` overrides.

One `Config` describes a whole run. Every key is typed; an unknown key or a value of the wrong type
raises `ConfigError` naming the key, before anything expensive starts.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from sdmae.errors import UsageError


RECIPES = Path(__file__).resolve().parent / "configs"
DEMO_RECIPE = RECIPES / "demo_cpu.yaml"


def recipe_path(name: str) -> Path:
    """A path, or the name of a built-in recipe (`sdmae pretrain --config pcam_sdmae_vits16`)."""
    p = Path(name)
    if not p.exists() and (RECIPES / f"{name}.yaml").exists():
        return RECIPES / f"{name}.yaml"
    return p


class ConfigError(UsageError):
    """A bad config key or value (exit code 2)."""


@dataclass
class ModelConfig:
    name: str = "vit_small_patch16"  # vit_{tiny,small,base}_patch{16,8}
    img_size: int = 224
    pos_embed: str = "1d"  # fixed sine-cosine: "1d" (official SD-MAE code) or "2d" (MAE)
    drop_path: float = 0.0
    decoder_dim: int = 192
    decoder_depth: int = 4
    decoder_heads: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_out_dim: int = 4096


@dataclass
class MethodConfig:
    name: str = "sdmae"  # sdmae | mae | mocov3 | dino
    mask_ratio: float = 0.75
    p: float = 0.2  # weight of the self-distillation loss
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    center_on: str = "probs"  # "probs" (official code) or "logits" (DINO)
    teacher_stop_grad: bool = False  # official code: gradients flow through the teacher branch too
    target_norm: str = "per_channel"  # "per_channel" (official code), "joint" (MAE) or "none"
    head_shortcut: bool = True  # mean over tokens before the heads' linear last layer (exact)


@dataclass
class AugConfig:
    crop: str = "official"  # "official": RandomResizedCrop defaults; "mae": scale (0.2, 1), bicubic; "none": resize
    crop_scale_min: float = 0.08
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    hed_jitter: float = 0.0  # sigma of the HED stain perturbation (Tellez et al.), 0 = off
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DataConfig:
    batch_size: int = 64  # per process
    num_workers: int = 4
    strict: bool = False  # stop before training on any unreadable file
    tile_size: int = 224  # tiles cut from whole-slide images
    mpp: Optional[float] = None  # microns per pixel of slide tiles (None: level below)
    level: int = 0
    tissue_min: float = 0.5  # fraction of a slide tile that must be tissue
    aug: AugConfig = field(default_factory=AugConfig)


@dataclass
class OptimConfig:
    base_lr: float = 6e-4  # per 256 images; lr = base_lr * global_batch / 256
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 5.0
    clip_grad: Optional[float] = None
    accum_steps: int = 1


@dataclass
class TrainConfig:
    epochs: int = 100
    max_steps: Optional[int] = None  # run length (and schedule length) in optimiser steps when set
    ckpt_every_steps: int = 0  # 0: only at epoch ends and at the end
    keep_every_epochs: int = 20  # also keep checkpoints/epoch_XXXX.pt every N epochs
    log_every: int = 1
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    tensorboard: bool = False
    reconstructions: bool = True  # write OUT/reconstructions.png at the end


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Keys that may change when a run is resumed: they do not change what is trained.
RESUME_FREE_KEYS = {
    "data.num_workers", "train.ckpt_every_steps", "train.keep_every_epochs", "train.log_every",
    "train.device", "train.compile", "train.tensorboard", "train.reconstructions",
}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Returns `value` converted to `tp`, or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check_type(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' expects a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        return list(value)
    return value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(names))})")
        cur = getattr(obj, k)
        if dataclasses.is_dataclass(cur):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; set its keys as '{key}.NAME=VALUE'")
            _apply(cur, v, key + ".")
        else:
            setattr(obj, k, _check_type(key, v, hints[k]))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _nest(key: str, value: Any) -> dict:
    out: dict = {}
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                base: Optional[dict] = None) -> Config:
    """Defaults, then `base` (e.g. a checkpoint's config), then the YAML file, then `--set` overrides."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    if path:
        p = recipe_path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        _apply(cfg, data)
    for text in overrides or []:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    choices = {
        "model.pos_embed": ("1d", "2d"),
        "method.center_on": ("probs", "logits"),
        "method.target_norm": ("per_channel", "joint", "none"),
        "data.aug.crop": ("official", "mae", "none"),
        "train.precision": ("auto", "fp32", "bf16", "fp16"),
        "train.device": ("auto", "cpu", "cuda"),
    }
    flat = flatten(to_dict(cfg))
    for key, allowed in choices.items():
        if flat[key] not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {flat[key]!r}")
    if not 0.0 <= cfg.method.mask_ratio < 1.0:
        raise ConfigError(f"config key 'method.mask_ratio' must be in [0, 1), got {cfg.method.mask_ratio}")
    if not 0.0 <= cfg.method.p <= 1.0:
        raise ConfigError(f"config key 'method.p' must be in [0, 1], got {cfg.method.p}")
    for key in ("data.batch_size", "train.epochs", "optim.accum_steps", "model.img_size", "train.log_every"):
        if flat[key] < 1:
            raise ConfigError(f"config key '{key}' must be at least 1, got {flat[key]}")
    if cfg.train.max_steps is not None and cfg.train.max_steps < 1:
        raise ConfigError(f"config key 'train.max_steps' must be at least 1, got {cfg.train.max_steps}")
    if cfg.data.num_workers < 0:
        raise ConfigError("config key 'data.num_workers' must be >= 0")


def diff_training_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two configs, ignoring RESUME_FREE_KEYS."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
