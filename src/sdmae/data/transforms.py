"""Pre-training augmentation with per-sample randomness.

Every random choice for a sample comes from a generator seeded by (seed, epoch, index) (DESIGN section 8),
so crops and masks do not depend on the number of workers or processes, and a resumed run sees the
same samples as an uninterrupted one. Workers do only the geometric part and return uint8 tensors;
normalisation (and colour work) happens batched on the training device (`sdmae.data.batch`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from sdmae.config import AugConfig


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index), well mixed by numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0]
    g = torch.Generator()
    g.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def resized_crop_box(width: int, height: int, scale: tuple, ratio: tuple, gen: torch.Generator):
    """torchvision's RandomResizedCrop parameter search, driven by `gen`: (left, top, w, h)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(gen, scale[0], scale[1])
        aspect = math.exp(_uniform(gen, *log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return left, top, w, h
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class PretrainTransform:
    """Random resized crop (official code's defaults, or MAE's), flips and 90-degree rotations -> uint8 CHW."""

    def __init__(self, aug: AugConfig, size: int):
        self.aug = aug
        self.size = size
        if aug.crop == "mae":
            self.scale, self.ratio, self.resample = (0.2, 1.0), (3 / 4, 4 / 3), Image.BICUBIC
        else:
            self.scale, self.ratio, self.resample = (aug.crop_scale_min, 1.0), (3 / 4, 4 / 3), Image.BILINEAR

    def __call__(self, img, gen: torch.Generator) -> dict:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        W, H = img.size
        if self.aug.crop == "none":
            box = (0, 0, W, H)
        else:
            left, top, w, h = resized_crop_box(W, H, self.scale, self.ratio, gen)
            box = (left, top, left + w, top + h)
        img = img.resize((self.size, self.size), self.resample, box=box)
        # always draw the same number of values so optional steps do not shift later randomness
        flips = torch.rand(2, generator=gen)
        turns = int(torch.randint(0, 4, (1,), generator=gen))
        if self.aug.hflip and flips[0] < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if self.aug.vflip and flips[1] < 0.5:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if self.aug.rot90 and turns:
            img = img.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[turns - 1])
        return {"image": to_uint8_chw(img)}
