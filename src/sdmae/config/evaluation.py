"""Evaluation configuration: options of `sdmae eval` and `sdmae compare` (`--set eval.KEY=VALUE`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from sdmae.config.loading import ConfigError, apply_mapping, nest, parse_override


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
        apply_mapping(ecfg, base, "eval.")
    for text in overrides or []:
        key, value = parse_override(text)
        if not key.startswith("eval."):
            raise ConfigError(f"'{key}' is not an evaluation key (they start with 'eval.')")
        apply_mapping(ecfg, nest(key[len("eval."):], value), "eval.")
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

