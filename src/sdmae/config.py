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
    target_norm: str = "per_channel"  # "per_channel" (official code), "joint" (MAE) or "none"
    head_shortcut: bool = True  # mean over tokens before the heads' linear last layer (exact)
    # MoCo v3 and DINO (docs/methods.md)
    momentum: Optional[float] = None  # momentum encoder / EMA teacher, cosine to 1; None: 0.99 MoCo v3, 0.996 DINO
    moco_temp: float = 0.2  # InfoNCE temperature
    moco_dim: int = 256  # projector / predictor output
    moco_mlp_dim: int = 4096  # projector / predictor hidden width
    frozen_patch_embed: bool = False  # MoCo v3's random patch projection, never trained
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
    # where crops, flips and rotations of fixed-size tiles (packed, HDF5, slides) run: "device" = batched on the
    # training device (workers only slice uint8 tiles), "workers" = per sample with PIL; "auto": device on CUDA
    crop_on: str = "auto"
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
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    tensorboard: bool = False
    reconstructions: bool = True  # write OUT/reconstructions.png at the end
    # kNN monitoring (sdmae.eval.monitor): every knn_every steps, kNN accuracy of the encoder on a small labelled
    # set, logged to log.jsonl; 0 = off
    knn_every: int = 0
    knn_train: Optional[str] = None  # labelled tiles for the kNN memory (class tree, CSV, ...)
    knn_test: Optional[str] = None  # labelled tiles to classify
    knn_max: int = 1000  # at most this many tiles of each set (a fixed random subset)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class FinetuneConfig:
    """`sdmae eval finetune`: the official fine-tuning recipe (timm pieces), CPU-sized by max_steps."""
    epochs: int = 100
    max_steps: Optional[int] = None  # run length in optimiser steps when set (schedule follows)
    batch_size: int = 64  # per process
    base_lr: float = 1e-3  # per 256 images
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    drop_path: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    randaug: str = "rand-m9-mstd0.5-inc1"  # timm auto_augment spec; "" = off
    color_jitter: float = 0.4
    reprob: float = 0.25  # random erasing
    vflip: bool = False  # official code: horizontal flips only
    init_scale: float = 0.001  # classifier weights start at trunc_normal(0.02) * init_scale
    clip_grad: Optional[float] = None
    eval_every: int = 1  # epochs between test evaluations (the last epoch always)
    ckpt_every_steps: int = 0  # 0: at epoch ends only
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16


@dataclass
class DenseSegConfig:
    """`sdmae eval segment`: UperNet head, loss and nuclei instances (`eval.dense.seg.*`)."""
    head_channels: int = 64  # UperNet width (official MoNuSeg recipe: 384)
    aux_weight: float = 0.4  # auxiliary FCN head on the stride-16 level; 0 = no auxiliary head
    dice_weight: float = 1.0  # loss = cross-entropy + dice_weight * (1 - soft Dice of nuclei)
    instances: str = "watershed"  # watershed | components: nuclei instances from the probability map
    threshold: float = 0.5  # nucleus probability threshold
    watershed_h: float = 1.0  # h-maxima depth (px) of the distance transform that seeds the watershed
    watershed_sigma: float = 1.0  # Gaussian smoothing (px) of the distance transform before its maxima
    min_size: int = 10  # px; smaller predicted instances (and holes) are removed


@dataclass
class DenseDetConfig:
    """`sdmae eval detect`: Faster R-CNN on the pyramid (`eval.dense.det.*`)."""
    fpn_channels: int = 64  # torchvision FPN width on top of the ViT pyramid (torchvision: 256)
    box_head_dim: int = 256  # width of the two-layer box head (torchvision: 1024)
    proposals: int = 300  # RPN proposals kept per window after NMS (torchvision: 2000 / 1000)
    roi_samples: int = 128  # proposals sampled per crop for the box losses (torchvision: 512)
    anchor_sizes: list = field(default_factory=lambda: [8, 16, 32, 64, 128])  # px, one per FPN level
    score_thresh: float = 0.05  # detections kept for mAP
    nms_thresh: float = 0.5
    max_detections: int = 300  # per window
    min_box: int = 4  # px; nuclei cut by a crop border to a thinner box are not training targets
    overlay_score: float = 0.5  # boxes drawn in the overlays


@dataclass
class DenseConfig:
    """`sdmae eval segment|detect` (`eval.dense.*`): CPU-sized defaults; the paper's schedule is
    crop_size=512 batch_size=16 iters=20000 warmup_iters=200 seg.head_channels=384 scale_min=0.5 scale_max=2."""
    out_indices: list = field(default_factory=lambda: [3, 5, 7, 11])  # 0-based blocks (paper: 4, 6, 8, 12)
    crop_size: int = 128  # training crops and sliding windows, px (a multiple of 32)
    batch_size: int = 4
    iters: int = 300
    warmup_iters: int = 30
    lr: float = 2e-4  # peak, not scaled by batch (official: 1e-4 at batch 16)
    min_lr: float = 0.0
    schedule: str = "poly"  # poly | cosine
    poly_power: float = 1.0
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    drop_path: float = 0.1
    clip_grad: Optional[float] = None
    scale_min: float = 1.0  # random rescaling of the crop region (official: 0.5 to 2)
    scale_max: float = 1.0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    stain_jitter: float = 0.05  # sigma of the HED jitter (sdmae.data.stain, Tellez et al. 2018); 0 = off
    overlap: float = 0.33  # sliding-window overlap at test time (official: stride 341 of 512)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    ckpt_every: int = 100  # iterations between checkpoints (resume)
    log_every: int = 10
    overlays: int = 4  # test images with overlay PNGs
    seg: DenseSegConfig = field(default_factory=DenseSegConfig)
    det: DenseDetConfig = field(default_factory=DenseDetConfig)


@dataclass
class EvalConfig:
    """Options of `sdmae eval` and `sdmae compare`, set as `--set eval.KEY=VALUE`."""
    seed: int = 0  # first seed; --seeds N runs seed, seed+1, ...
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 128  # feature extraction
    num_workers: int = 2
    feature_norm: str = "official"  # official: pre-norm tokens, mean, parameter-free LayerNorm | encoder | none
    interpolation: str = "bicubic"  # resizing tiles to model.img_size
    cache: bool = True  # features on disk, keyed by (weights, data, transform)
    cache_dir: Optional[str] = None  # None: $SDMAE_CACHE or ~/.cache/sdmae/features
    exclude_classes: list = field(default_factory=list)  # class names dropped from train, val and test
    val_fraction: float = 0.1  # carved (stratified) from train when no --val is given
    linear: str = "fast"  # fast: logistic regression, C chosen on val | paper: BatchNorm + linear, SGD
    linear_cs: list = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    linear_max_iter: int = 1000
    linear_epochs: int = 90
    linear_batch_size: int = 512
    linear_base_lr: float = 0.1  # per 256 samples
    linear_warmup_epochs: int = 10
    linear_weight_decay: float = 0.0
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_center: bool = True  # subtract the train mean before L2 normalisation (UNI)
    shots: int = 10  # few-shot: labelled tiles per class in each episode
    episodes: int = 100
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)


def load_eval_config(overrides: Optional[list[str]] = None, base: Optional[dict] = None) -> EvalConfig:
    """Evaluation options: defaults, then `base` (the `eval` mapping of a compare spec), then `eval.*` overrides."""
    ecfg = EvalConfig()
    if base:
        _apply(ecfg, base, "eval.")
    for text in overrides or []:
        key, value = parse_override(text)
        if not key.startswith("eval."):
            raise ConfigError(f"'{key}' is not an evaluation key (they start with 'eval.')")
        _apply(ecfg, _nest(key[len("eval."):], value), "eval.")
    choices = {"device": ("auto", "cpu", "cuda"), "feature_norm": ("official", "encoder", "none"),
               "interpolation": ("bicubic", "bilinear", "nearest"), "linear": ("fast", "paper")}
    for key, allowed in choices.items():
        if getattr(ecfg, key) not in allowed:
            raise ConfigError(f"config key 'eval.{key}' must be one of {', '.join(allowed)}; "
                              f"got {getattr(ecfg, key)!r}")
    if ecfg.finetune.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"config key 'eval.finetune.precision' must be auto, fp32, bf16 or fp16; "
                          f"got {ecfg.finetune.precision!r}")
    for key in ("batch_size", "knn_k", "shots", "episodes", "linear_epochs", "linear_batch_size"):
        if getattr(ecfg, key) < 1:
            raise ConfigError(f"config key 'eval.{key}' must be at least 1, got {getattr(ecfg, key)}")
    if ecfg.finetune.batch_size < 1 or ecfg.finetune.epochs < 1 or ecfg.finetune.eval_every < 1:
        raise ConfigError("config keys 'eval.finetune.batch_size', 'eval.finetune.epochs' and "
                          "'eval.finetune.eval_every' must be at least 1")
    if not 0.0 < ecfg.val_fraction < 1.0:
        raise ConfigError(f"config key 'eval.val_fraction' must be in (0, 1), got {ecfg.val_fraction}")
    if ecfg.knn_temperature <= 0:
        raise ConfigError(f"config key 'eval.knn_temperature' must be > 0, got {ecfg.knn_temperature}")
    _validate_dense(ecfg.dense)
    return ecfg


def _validate_dense(d: DenseConfig) -> None:
    choices = {"schedule": (d.schedule, ("poly", "cosine")), "precision": (d.precision, ("auto", "fp32", "bf16")),
               "seg.instances": (d.seg.instances, ("watershed", "components"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key 'eval.dense.{key}' must be one of {', '.join(allowed)}; got {value!r}")
    if d.crop_size < 32 or d.crop_size % 32:
        raise ConfigError(f"config key 'eval.dense.crop_size' must be a multiple of 32, got {d.crop_size}")
    if d.batch_size < 2:  # BatchNorm in the decode head needs two crops
        raise ConfigError(f"config key 'eval.dense.batch_size' must be at least 2, got {d.batch_size}")
    for key in ("iters", "ckpt_every", "log_every"):
        if getattr(d, key) < 1:
            raise ConfigError(f"config key 'eval.dense.{key}' must be at least 1, got {getattr(d, key)}")
    if d.warmup_iters < 0:
        raise ConfigError(f"config key 'eval.dense.warmup_iters' must be >= 0, got {d.warmup_iters}")
    if not 0.0 <= d.overlap < 1.0:
        raise ConfigError(f"config key 'eval.dense.overlap' must be in [0, 1), got {d.overlap}")
    if not 0.0 < d.scale_min <= d.scale_max:
        raise ConfigError(f"config keys 'eval.dense.scale_min' <= 'eval.dense.scale_max' must be positive, "
                          f"got {d.scale_min}, {d.scale_max}")
    if len(d.out_indices) != 4:
        raise ConfigError(f"config key 'eval.dense.out_indices' needs 4 block indices, got {d.out_indices}")
    if len(d.det.anchor_sizes) != 5 or min(d.det.anchor_sizes) <= 0:
        raise ConfigError(f"config key 'eval.dense.det.anchor_sizes' needs 5 positive sizes (strides 4 to 64), "
                          f"got {d.det.anchor_sizes}")
    if not 0.0 < d.seg.threshold < 1.0:
        raise ConfigError(f"config key 'eval.dense.seg.threshold' must be in (0, 1), got {d.seg.threshold}")


# Keys that may change when a run is resumed: they do not change what is trained.
RESUME_FREE_KEYS = {
    "data.num_workers", "train.ckpt_every_steps", "train.ckpt_every_epochs", "train.keep_every_epochs", "train.log_every",
    "train.device", "train.compile", "train.tensorboard", "train.reconstructions",
    "train.knn_every", "train.knn_train", "train.knn_test", "train.knn_max",
    "data.prescan", "data.verify",
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
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
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


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The mapping a YAML file holds (empty file: {}); `what` names the file in the usage errors."""
    if not path.is_file():
        raise ConfigError(f"{what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must hold a mapping of sections")
    return data


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                base: Optional[dict] = None) -> Config:
    """Defaults, then `base` (e.g. a checkpoint's config), then the YAML file, then `--set` overrides."""
    cfg = Config()
    if base:
        _apply(cfg, base)
    if path:
        _apply(cfg, read_yaml_mapping(recipe_path(path), f"config file {path}"))
    for text in overrides or []:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    choices = {
        "model.pos_embed": ("1d", "2d"),
        "method.name": ("sdmae", "mae", "mocov3", "dino"),
        "method.center_on": ("probs", "logits"),
        "method.target_norm": ("per_channel", "joint", "none"),
        "data.aug.crop": ("official", "mae", "none"),
        "data.aug.crop_on": ("auto", "device", "workers"),
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
    _validate_views(cfg.method)


def _validate_views(m: MethodConfig) -> None:
    v = m.views
    for key, n in (("global_scale", 2), ("local_scale", 2), ("jitter", 4), ("blur_p", 2), ("blur_sigma", 2),
                   ("solarize_p", 2)):
        value = getattr(v, key)
        if value is not None and (len(value) != n or not all(isinstance(x, (int, float)) for x in value)):
            raise ConfigError(f"config key 'method.views.{key}' expects {n} numbers, got {value!r}")
    if v.local_crops < 0:
        raise ConfigError(f"config key 'method.views.local_crops' must be >= 0, got {v.local_crops}")
    if m.momentum is not None and not 0.0 <= m.momentum <= 1.0:
        raise ConfigError(f"config key 'method.momentum' must be in [0, 1], got {m.momentum}")
    if m.moco_temp <= 0:
        raise ConfigError(f"config key 'method.moco_temp' must be > 0, got {m.moco_temp}")


def diff_training_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ between two configs, ignoring RESUME_FREE_KEYS."""
    a, b = flatten(old), flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_FREE_KEYS and a.get(k) != b.get(k))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
