"""Pre-training configuration: the typed `Config` of `sdmae pretrain`, its built-in recipes and its checks.

One `Config` describes a whole run. Every key is typed; an unknown key or a value of the wrong type
raises `ConfigError` naming the key, before anything expensive starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from sdmae.config.loading import ConfigError, apply_mapping, flatten, nest, parse_override, read_yaml_mapping, to_dict

RECIPES = Path(__file__).resolve().parent.parent / "configs"
DEMO_RECIPE = RECIPES / "demo_cpu.yaml"


def recipe_path(name: str) -> Path:
    """A path, or the name of a built-in recipe (`sdmae pretrain --config pcam_sdmae_vits16`)."""
    p = Path(name)
    if not p.exists() and (RECIPES / f"{name}.yaml").exists():
        return RECIPES / f"{name}.yaml"
    return p


@dataclass
class ModelConfig:
    name: str = "vit_small_patch16"  # vit_{tiny,small,base}_patch{16,8}
    img_size: int = 224
    pos_embed: str = "1d"  # fixed sine-cosine: "1d" (official SD-MAE code) or "2d" (MAE)
    drop_path: float = 0.0
    init: str = "official"  # "official" (SD-MAE code: ViT, decoder, heads) or "mae" (MAE / DINO references)
    decoder_dim: int = 192
    decoder_depth: int = 4
    decoder_heads: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_out_dim: int = 4096


@dataclass
class ViewsConfig:
    """Two-view / multi-crop augmentation of MoCo v3 and DINO (the BYOL set). Flips, 90-degree rotations and
    HED jitter come from data.aug, shared with MAE and SD-MAE."""
    global_scale: Optional[list] = None  # crop scale of the two global views; None: [0.08, 1] MoCo v3, [0.4, 1] DINO
    local_crops: int = 8  # DINO's small views (0: two global views only)
    local_size: Optional[int] = None  # None: 96/224 of model.img_size, rounded to whole patches
    local_scale: list = field(default_factory=lambda: [0.05, 0.4])
    jitter: list = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: list = field(default_factory=lambda: [1.0, 0.1])  # first and second global view
    local_blur_p: float = 0.5
    blur_sigma: list = field(default_factory=lambda: [0.1, 2.0])  # in pixels of a 224 px crop, scaled to the crop
    solarize_p: list = field(default_factory=lambda: [0.0, 0.2])  # first and second global view


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
    # "same" (official): the student is the encoder on the decoder's view; "stain": on the same crop and visible
    # patches with data.aug's stain and colour jitter, while the reconstruction reads the crop without it; "full":
    # the teacher is a momentum copy (method.momentum, None: 0.99) reading every patch of the crop (MSN-like)
    sd_view: str = "same"
    target_norm: str = "per_channel"  # "per_channel" (official code), "joint" (MAE) or "none"; pixel-valued targets
    # masked patches' targets: "pixels" (paper), "gray" / "haematoxylin" (one channel), "hog" (MaskFeat),
    # "random_features" (dBOT)
    target: str = "pixels"
    target_block: int = 0  # random_features: the frozen random copy's tokens after this many blocks (0: all)
    head_shortcut: bool = True  # mean over tokens before the heads' linear last layer (exact)
    # MoCo v3 and DINO (docs/methods.md)
    momentum: Optional[float] = None  # momentum encoder / EMA teacher, cosine to 1; None: 0.99 MoCo v3 and SD-MAE's
    # sd_view full, 0.996 DINO
    moco_temp: float = 0.2  # InfoNCE temperature
    moco_dim: int = 256  # projector / predictor output
    moco_mlp_dim: int = 4096  # projector / predictor hidden width
    frozen_patch_embed: bool = False  # MoCo v3's random patch projection, never trained (MoCo v3, MAE, SD-MAE)
    frozen_blocks: int = 0  # MAE / SD-MAE: the encoder's first N blocks keep their random draw too (not the paper's)
    warmup_teacher_temp: float = 0.04  # DINO: teacher temperature at step 0, linear to teacher_temp
    warmup_teacher_temp_epochs: float = 0.0
    freeze_last_layer_epochs: float = 1.0  # DINO: the head's last layer is not updated during these epochs
    views: ViewsConfig = field(default_factory=ViewsConfig)


@dataclass
class AugConfig:
    crop: str = "official"  # "official": RandomResizedCrop defaults; "mae": scale (0.2, 1), bicubic; "none": resize
    crop_scale_min: float = 0.08
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    hed_jitter: float = 0.0  # sigma of the HED stain perturbation (Tellez et al.), 0 = off
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0 = off
    # masked-image methods: reconstruct the jittered input (true, MAE's and the paper's targets) or the same crop
    # without the stain and colour jitter (false), so that reading the jitter does not help the reconstruction
    jitter_targets: bool = True
    # where crops, flips and rotations of fixed-size tiles (packed, HDF5, slides) run: "device" = batched on the
    # training device (workers only slice uint8 tiles), "workers" = per sample with PIL; "auto": device on CUDA
    crop_on: str = "auto"
    mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])

    @property
    def jitters_colour(self) -> bool:
        """Whether any stain or colour jitter is on."""
        return self.hed_jitter > 0 or self.color_jitter > 0


@dataclass
class DataConfig:
    batch_size: int = 64  # per process
    num_workers: int = 4
    strict: bool = False  # stop before training on any unreadable file
    tile_size: int = 224  # tiles cut from whole-slide images
    mpp: Optional[float] = None  # microns per pixel of slide tiles (None: level below)
    level: int = 0
    tissue_min: float = 0.5  # fraction of a slide tile that must be tissue
    tissue_cache: bool = True  # keep each slide's tissue grid in the cache folder ($SDMAE_CACHE/tissue)
    slide_cache_mb: int = 1024  # per process: slides whose tissue fits are decoded once, in blocks
    prescan: bool = True  # decode every image file once before training, to skip (or, strict, stop on) bad ones
    verify: bool = True  # recompute packed files' checksums when they are opened
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
    ckpt_every_epochs: int = 1  # last.pt at the end of every N-th epoch (0: never at epoch ends)
    keep_every_epochs: int = 20  # also keep checkpoints/epoch_XXXX.pt every N epochs
    log_every: int = 1
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    tf32: bool = True  # fp32 matmuls and convolutions on CUDA in TF32 (10-bit mantissa inputs, fp32 sums)
    device: str = "auto"  # auto | cpu | cuda
    dist_timeout: float = 600.0  # seconds a collective may wait for another rank before the run ends (torchrun)
    compile: bool = False
    tensorboard: bool = False
    reconstructions: bool = True  # write OUT/reconstructions.png at the end
    # kNN monitoring (sdmae.eval.monitor): every knn_every steps, kNN accuracy of the encoder on a small labelled
    # set, logged to log.jsonl; 0 = off
    knn_every: int = 0
    knn_train: Optional[str] = None  # labelled tiles for the kNN memory (class tree, CSV, ...)
    knn_val: Optional[str] = None  # labelled tiles to classify: a validation split of the training data, never test
    knn_max: int = 1000  # at most this many tiles of each set (a fixed random subset)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                base: Optional[dict] = None) -> Config:
    """Defaults, then `base` (e.g. a checkpoint's config), then the YAML file, then `--set` overrides."""
    cfg = Config()
    if base:
        apply_mapping(cfg, migrate(base))
    if path:
        apply_mapping(cfg, _not_renamed(read_yaml_mapping(recipe_path(path), f"config file {path}")))
    for text in overrides or []:
        key, value = parse_override(text)
        apply_mapping(cfg, _not_renamed(nest(key, value)))
    validate(cfg)
    return cfg


# Keys renamed since runs were first saved: configs inside checkpoints and exports are read under the new name;
# a recipe or --set that uses the old one gets an error naming the new one (an unknown key, see loading).
RENAMED = {("train", "knn_test"): "knn_val"}  # issue 14: the kNN monitor's tiles are a validation split


def migrate(saved: dict) -> dict:
    """A saved config (checkpoint, export) with renamed keys under their new names."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in saved.items()}
    for (section, old), new in RENAMED.items():
        if isinstance(out.get(section), dict) and old in out[section]:
            out[section][new] = out[section].pop(old)
    return out


def _not_renamed(mapping: dict) -> dict:
    for (section, old), new in RENAMED.items():
        if isinstance(mapping.get(section), dict) and old in mapping[section]:
            raise ConfigError(f"config key '{section}.{old}' was renamed '{section}.{new}'")
    return mapping


def validate(cfg: Config) -> None:
    choices = {
        "model.pos_embed": ("1d", "2d"),
        "model.init": ("official", "mae"),
        "method.name": ("sdmae", "mae", "mocov3", "dino"),
        "method.center_on": ("probs", "logits"),
        "method.sd_view": ("same", "stain", "full"),
        "method.target_norm": ("per_channel", "joint", "none"),
        "method.target": ("pixels", "gray", "haematoxylin", "hog", "random_features"),
        "data.aug.crop": ("official", "mae", "none"),
        "data.aug.crop_on": ("auto", "device", "workers"),
        "train.precision": ("auto", "fp32", "bf16", "fp16"),
        "train.device": ("auto", "cpu", "cuda"),
    }
    flat = flatten(to_dict(cfg))
    for key, allowed in choices.items():
        if flat[key] not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {flat[key]!r}")
    _validate_ranges(flat)
    if not 0.0 <= cfg.method.mask_ratio < 1.0:  # whether it leaves a masked patch depends on the model: MAE checks
        raise ConfigError(f"config key 'method.mask_ratio' must be in [0, 1), got {cfg.method.mask_ratio}")
    if cfg.model.decoder_dim % cfg.model.decoder_heads:
        raise ConfigError(f"config key 'model.decoder_dim' ({cfg.model.decoder_dim}) must be divisible by "
                          f"'model.decoder_heads' ({cfg.model.decoder_heads})")
    _validate_lists(cfg)
    _validate_views(cfg.method)
    _validate_unused_keys(cfg.method)
    _validate_sd_view(cfg)


def _validate_sd_view(cfg: Config) -> None:
    """`method.sd_view` stain / full need SD-MAE's term; stain also needs a jitter to teach across."""
    m = cfg.method
    if m.sd_view == "same":
        return
    if m.name != "sdmae" or m.p == 0:
        raise ConfigError(f"config key 'method.sd_view' {m.sd_view} is used only by method.name sdmae with "
                          f"method.p > 0; here method.name is {m.name} and method.p {m.p}")
    if m.sd_view == "stain" and not cfg.data.aug.jitters_colour:
        raise ConfigError("config key 'method.sd_view' stain needs a stain or colour jitter to teach across: set "
                          "data.aug.hed_jitter or data.aug.color_jitter above 0")


def _validate_unused_keys(m: MethodConfig) -> None:
    """The freezing and target keys act only where a method reads them; elsewhere they would be silently ignored."""
    if m.frozen_patch_embed and m.name == "dino":
        raise ConfigError("config key 'method.frozen_patch_embed' is not used by method.name dino; "
                          "it works with sdmae, mae and mocov3")
    if m.target_block and m.target != "random_features":
        raise ConfigError("config key 'method.target_block' is used only with method.target random_features; "
                          f"method.target is {m.target}")
    if m.frozen_blocks and m.name not in ("sdmae", "mae"):
        raise ConfigError(f"config key 'method.frozen_blocks' is not used by method.name {m.name}; "
                          "it works with sdmae and mae")


# Numeric keys and the values they accept; optional keys set to None (off) are not checked. Decided per field of
# the dataclasses above: anything that would otherwise fail (or silently do nothing useful) after the run starts.
AT_LEAST_1 = ("data.batch_size", "train.epochs", "optim.accum_steps", "model.img_size", "train.log_every",
              "train.max_steps", "train.knn_max", "data.tile_size", "model.decoder_dim", "model.decoder_depth",
              "model.decoder_heads", "model.head_hidden_dim", "model.head_bottleneck_dim", "model.head_out_dim",
              "method.moco_dim", "method.moco_mlp_dim")
POSITIVE = ("train.dist_timeout", "optim.base_lr", "method.student_temp", "method.teacher_temp",
            "method.warmup_teacher_temp", "method.moco_temp", "optim.clip_grad", "data.mpp")
NON_NEGATIVE = ("optim.min_lr", "optim.weight_decay", "optim.warmup_epochs", "data.num_workers", "data.level",
                "data.slide_cache_mb", "data.aug.hed_jitter", "data.aug.color_jitter", "train.ckpt_every_steps", "train.ckpt_every_epochs",
                "train.keep_every_epochs", "train.knn_every", "method.warmup_teacher_temp_epochs",
                "method.freeze_last_layer_epochs", "method.views.local_crops", "method.frozen_blocks",
                "method.target_block")
FRACTIONS = ("method.p", "method.center_momentum", "method.momentum", "data.tissue_min", "method.views.jitter_p",
             "method.views.grayscale_p", "method.views.local_blur_p", "method.views.blur_p",
             "method.views.solarize_p")  # probabilities and weights in [0, 1] (lists: every item)
RANGES = {**{k: ("at least 1", lambda v: v >= 1) for k in AT_LEAST_1},
          **{k: ("> 0", lambda v: v > 0) for k in POSITIVE},
          **{k: (">= 0", lambda v: v >= 0) for k in NON_NEGATIVE},
          **{k: ("in [0, 1]", lambda v: 0 <= v <= 1) for k in FRACTIONS},
          "model.drop_path": ("in [0, 1)", lambda v: 0 <= v < 1),
          "data.aug.crop_scale_min": ("in (0, 1]", lambda v: 0 < v <= 1)}


def _validate_ranges(flat: dict) -> None:
    for key, (what, ok) in RANGES.items():
        value = flat[key]
        items = value if isinstance(value, list) else [value]
        if value is not None and not all(isinstance(v, (int, float)) and ok(v) for v in items):
            raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")


def _validate_lists(cfg: Config) -> None:
    """List-valued keys: their length and what each item may be."""
    o, a = cfg.optim, cfg.data.aug
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"config key 'optim.betas' expects 2 numbers in [0, 1), got {o.betas!r}")
    for key, value, ok in (("data.aug.mean", a.mean, lambda v: True), ("data.aug.std", a.std, lambda v: v > 0)):
        if len(value) != 3 or not all(isinstance(v, (int, float)) and ok(v) for v in value):
            raise ConfigError(f"config key '{key}' expects 3 numbers (one per colour channel)"
                              f"{', all > 0' if key.endswith('std') else ''}, got {value!r}")


def _validate_views(m: MethodConfig) -> None:
    v = m.views
    for key, n in (("global_scale", 2), ("local_scale", 2), ("jitter", 4), ("blur_p", 2), ("blur_sigma", 2),
                   ("solarize_p", 2)):
        value = getattr(v, key)
        if value is not None and (len(value) != n or not all(isinstance(x, (int, float)) for x in value)):
            raise ConfigError(f"config key 'method.views.{key}' expects {n} numbers, got {value!r}")


# Keys that may change when a run is resumed: they do not change what is trained.
RESUME_FREE_KEYS = {
    "data.num_workers", "train.ckpt_every_steps", "train.ckpt_every_epochs", "train.keep_every_epochs", "train.log_every",
    "train.device", "train.dist_timeout", "train.compile", "train.tensorboard", "train.reconstructions",
    "train.knn_every", "train.knn_train", "train.knn_val", "train.knn_max",
    "data.prescan", "data.verify",
}


def diff_training_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two configs, ignoring RESUME_FREE_KEYS. A key that a config saved by an
    older sdmae lacks reads as its default: new keys default to the behaviour that came before them."""
    defaults = flatten(to_dict(Config()))
    a, b = {**defaults, **flatten(migrate(old))}, {**defaults, **flatten(migrate(new))}
    return sorted(k for k in set(a) | set(b) if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
