"""Batched, device-side end of the input pipeline: uint8 tiles + per-sample parameters -> model-ready floats.

The parameters come from `PretrainTransform` (layout `transforms.AUG_PARAMS`); every step is one batched
operation whatever the per-sample values: crop + resize with `torchvision.ops.roi_align` (bilinear,
averaging several samples per output pixel when a crop shrinks, like an anti-aliased resize), flips and
90-degree rotations selected per sample with `torch.where`, HED stain jitter, colour jitter, then ImageNet
normalisation. Which steps run is decided from the config and the tensors' shapes, never from their values,
and constants are built on the device once: a step on a GPU never waits for it (tests/test_no_sync.py).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torchvision.ops import roi_align

from sdmae.config import AugConfig, Config
from sdmae.data.stain import hed_jitter

GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


@functools.lru_cache(maxsize=64)
def device_constant(values: tuple, device: torch.device, shape: tuple) -> torch.Tensor:
    """A small float32 constant on `device`, copied there once per process."""
    return torch.tensor(values, dtype=torch.float32).view(shape).to(device)


def crop_resize_flip(x: torch.Tensor, p: torch.Tensor, size: int, aug: AugConfig) -> torch.Tensor:
    """x (B, 3, H, W) float, p (B, >= 8) -> (B, 3, size, size): box crop resized to `size`, then flips and
    counter-clockwise turns, each where the config allows it."""
    B, _, H, W = x.shape
    if aug.crop != "none" or (H, W) != (size, size):
        box = p[:, 1:5]
        idx = torch.arange(B, dtype=p.dtype, device=p.device)[:, None]
        rois = torch.cat([idx, box[:, :2], box[:, :2] + box[:, 2:4]], dim=1).to(x.dtype)
        x = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    if aug.hflip:
        x = torch.where(p[:, 5, None, None, None] > 0.5, x.flip(-1), x)
    if aug.vflip:
        x = torch.where(p[:, 6, None, None, None] > 0.5, x.flip(-2), x)
    if aug.rot90:
        turns = p[:, 7, None, None, None].round()
        for k in (1, 2, 3):
            x = torch.where(turns == k, torch.rot90(x, k, dims=(-2, -1)), x)
    return x


def gray(x: torch.Tensor) -> torch.Tensor:
    w = device_constant(GRAY, x.device, (1, 3, 1, 1)).to(x.dtype)
    return (x * w).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's brightness, contrast and saturation adjustments, in that order, per-sample factors (B, 3)."""
    b, c, s = (factors[:, k, None, None, None] for k in range(3))
    x = (x * b).clamp_(0.0, 1.0)
    m = gray(x).mean(dim=(-2, -1), keepdim=True)
    x = (c * x + (1 - c) * m).clamp_(0.0, 1.0)
    return (s * x + (1 - s) * gray(x)).clamp_(0.0, 1.0)


def needs_augment(aug: AugConfig, crops: bool) -> bool:
    """Whether the device has work left beyond normalising: the geometry of device-cropped tiles, or colour."""
    return crops or aug.jitters_colour


def augment(images: torch.Tensor, params: torch.Tensor, aug: AugConfig, size: int, crops: bool,
            twin: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """uint8 (B, 3, H, W) + parameters (B, 17) -> float (B, 3, size, size) in [0, 1], augmented, and with `twin`
    the same crop without colour jitter (else None). `crops`: the tiles are whole (the device-crop path), so
    crop, resize, flips and turns run here too."""
    p = params.to(images.device, torch.float32)
    x = images.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    if crops:
        x = crop_resize_flip(x, p, size, aug)
    plain = x.clone() if twin else None
    if aug.hed_jitter > 0:
        x = hed_jitter(x, p[:, 8:11], p[:, 11:14])
    if aug.color_jitter > 0:
        x = color_jitter(x, p[:, 14:17])
    return x, plain


def finish_images(images: torch.Tensor, aug: AugConfig, params: Optional[torch.Tensor] = None,
                  size: Optional[int] = None, crops: bool = False) -> torch.Tensor:
    """uint8 (..., 3, H, W) on the training device -> float32, ImageNet-normalised. With `params` (the
    "<field>_aug" entry of the batch), the per-sample augmentation left for the device runs first: colour
    always, and with `crops` the geometry of whole tiles to `size` px."""
    return finish_with_twin(images, aug, params, size, crops)[0]


def finish_with_twin(images: torch.Tensor, aug: AugConfig, params: Optional[torch.Tensor] = None,
                     size: Optional[int] = None, crops: bool = False,
                     twin: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """`finish_images`, and with `twin` also the same images without colour jitter (cropped once for both)."""
    mean = device_constant(tuple(aug.mean), images.device, (3, 1, 1))
    std = device_constant(tuple(aug.std), images.device, (3, 1, 1))
    if params is not None and needs_augment(aug, crops):
        x, plain = augment(images, params, aug, size or images.shape[-1], crops, twin)
        return x.sub_(mean).div_(std), None if plain is None else plain.sub_(mean).div_(std)
    x = images.to(torch.float32, memory_format=torch.contiguous_format)
    x = x.mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std in two passes
    return x, x if twin else None


def needs_clean_twin(cfg: Config) -> bool:
    """Whether "image" needs a colour-unjittered twin, "image_clean": as the reconstruction targets
    (`data.aug.jitter_targets=false`), or as the view the SD-MAE teacher reads (`method.sd_view=stain`)."""
    aug = cfg.data.aug
    return aug.jitters_colour and (not aug.jitter_targets or cfg.method.sd_view == "stain")


def move_batch(batch: dict, device: torch.device, cfg: Config, crops: bool = False) -> dict:
    """Moves tensors to the device and normalises every uint8 image field (..., 3, H, W): "image", or a
    multi-view method's "views" / "local". `crops`: the batch holds whole tiles (the device-crop path).
    With `needs_clean_twin`, "image_clean" is "image" with the same geometry and no colour jitter."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    aug, size = cfg.data.aug, cfg.model.img_size
    for k, v in list(out.items()):
        if torch.is_tensor(v) and v.dtype == torch.uint8 and v.ndim >= 4 and v.shape[-3] == 3:
            twin = k == "image" and needs_clean_twin(cfg)
            out[k], plain = finish_with_twin(v, aug, out.get(f"{k}_aug"), size, crops, twin)
            if twin:
                out["image_clean"] = plain
    return out
