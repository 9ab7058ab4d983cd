"""Batched, device-side end of the input pipeline: uint8 tiles + per-sample parameters -> model-ready floats.

The parameters come from `PretrainTransform` (layout `transforms.AUG_PARAMS`); every step is one batched
operation whatever the per-sample values: crop + resize with `torchvision.ops.roi_align` (bilinear,
averaging several samples per output pixel when a crop shrinks, like an anti-aliased resize), flips and
90-degree rotations by index, HED stain jitter, colour jitter, then ImageNet normalisation.
"""
from __future__ import annotations

from typing import Optional

import torch
from torchvision.ops import roi_align

from sdmae.config import AugConfig, Config
from sdmae.data.stain import hed_jitter

GRAY = (0.2989, 0.587, 0.114)  # torchvision's luma weights


def crop_resize_flip(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """x (B, 3, H, W) float, p (B, >= 8) -> (B, 3, S, S): box crop resized to S, then flips and rotations."""
    size = int(p[0, 0])
    B, _, H, W = x.shape
    box = p[:, 1:5]
    full = torch.tensor([0, 0, size, size], dtype=p.dtype, device=p.device)
    if (H, W) != (size, size) or not bool((box == full).all()):
        rois = torch.cat([torch.arange(B, dtype=x.dtype, device=x.device)[:, None],
                          box[:, :2], box[:, :2] + box[:, 2:4]], dim=1).to(x.dtype)
        x = roi_align(x, rois, (size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    hflip, vflip, turns = p[:, 5] > 0.5, p[:, 6] > 0.5, p[:, 7].round().long()
    if bool(hflip.any()):
        x = torch.where(hflip[:, None, None, None], x.flip(-1), x)
    if bool(vflip.any()):
        x = torch.where(vflip[:, None, None, None], x.flip(-2), x)
    for k in (1, 2, 3):
        idx = (turns == k).nonzero().flatten()
        if len(idx):
            x[idx] = torch.rot90(x[idx], k, dims=(-2, -1))
    return x


def gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def color_jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision's brightness, contrast and saturation adjustments, in that order, per-sample factors (B, 3)."""
    b, c, s = (factors[:, k, None, None, None] for k in range(3))
    x = (x * b).clamp_(0.0, 1.0)
    m = gray(x).mean(dim=(-2, -1), keepdim=True)
    x = (c * x + (1 - c) * m).clamp_(0.0, 1.0)
    return (s * x + (1 - s) * gray(x)).clamp_(0.0, 1.0)


IDENTITY_COLOUR = (1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)


def needs_augment(images: torch.Tensor, p: torch.Tensor) -> bool:
    """False when the workers did everything (image at its final size, no flip, turn or colour change left)."""
    size = int(p[0, 0])
    if tuple(images.shape[-2:]) != (size, size):
        return True
    rest = torch.tensor((0, 0, size, size, 0, 0, 0) + IDENTITY_COLOUR, dtype=p.dtype, device=p.device)
    return bool((p[:, 1:] != rest).any())


def augment(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) + parameters (B, 17) -> float (B, 3, S, S) in [0, 1], augmented."""
    p = params.to(images.device, torch.float32)
    x = crop_resize_flip(images.float().div_(255.0), p)
    alpha, beta = p[:, 8:11], p[:, 11:14]
    if bool((alpha != 1).any() or (beta != 0).any()):
        x = hed_jitter(x, alpha, beta)
    jitter = p[:, 14:17]
    if bool((jitter != 1).any()):
        x = color_jitter(x, jitter)
    return x


def finish_images(images: torch.Tensor, aug: AugConfig, params: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (..., 3, H, W) on the training device -> float32, ImageNet-normalised. With `params` (the
    "<field>_aug" entry of the batch), the per-sample augmentation left for the device runs first."""
    mean = torch.tensor(aug.mean, device=images.device).view(3, 1, 1)
    std = torch.tensor(aug.std, device=images.device).view(3, 1, 1)
    if params is not None:
        params = params.to(images.device, torch.float32)
        if needs_augment(images, params):
            return augment(images, params).sub_(mean).div_(std)
    return images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)  # (x / 255 - mean) / std in two passes


def move_batch(batch: dict, device: torch.device, cfg: Config) -> dict:
    """Moves tensors to the device and normalises every uint8 image field (..., 3, H, W): "image", or a
    multi-view method's "views" / "local"."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    for k, v in out.items():
        if torch.is_tensor(v) and v.dtype == torch.uint8 and v.ndim >= 4 and v.shape[-3] == 3:
            out[k] = finish_images(v, cfg.data.aug, out.get(f"{k}_aug"))
    return out
