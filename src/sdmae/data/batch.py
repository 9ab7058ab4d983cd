"""Batched, device-side end of the input pipeline: uint8 crops -> normalised float images."""
from __future__ import annotations

import torch

from sdmae.config import AugConfig


def finish_images(images: torch.Tensor, aug: AugConfig) -> torch.Tensor:
    """(B, 3, H, W) uint8 on the training device -> float32, ImageNet-normalised."""
    x = images.float().div_(255.0)
    mean = torch.tensor(aug.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(aug.std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)
