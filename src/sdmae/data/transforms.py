"""Pre-training augmentation with per-sample randomness, split between data workers and the device.

Every random choice for a sample comes from a generator seeded by (seed, epoch, index) (DESIGN section 8),
so crops and masks do not depend on the number of workers or processes, and a resumed run sees the same
samples as an uninterrupted one. Workers draw all of a sample's parameters and do at most the geometric
part; everything else runs batched on the training device (`sdmae.data.batch`):

- a PIL tile or uint8 array (H, W, 3): crop + anti-aliased resize (torch's uint8 kernels), flips and
  90-degree rotations in the worker; the image leaves at the model's size and only colour work (HED,
  colour jitter) is left for the device;
- a `DeviceTile` (a fixed-size tile from a packed file, HDF5 or a slide, when `data.aug.crop_on` says so):
  the worker only slices it; crop + resize, flips and rotations run on the device too, so a GPU run needs
  almost no CPU per image.

Both paths draw the same numbers in the same order, so they pick the same crops, flips and stain factors.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sdmae.config import AugConfig

__all__ = ["AUG_PARAMS", "DeviceTile", "PretrainTransform", "crop_flip_rotate", "crop_settings",
           "resized_crop_box", "sample_generator", "to_uint8_chw"]

# per-sample parameters handed to the device with the image, as "<field>_aug" (B, len(AUG_PARAMS)) float32
AUG_PARAMS = ("size", "left", "top", "width", "height", "hflip", "vflip", "turns",
              "h_alpha", "e_alpha", "d_alpha", "h_beta", "e_beta", "d_beta", "brightness", "contrast", "saturation")


MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser: a bijective, well-mixing map of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, index): the three are chained through SplitMix64 (a
    few microseconds, which matters at tens of thousands of samples per second)."""
    state = _splitmix64(_splitmix64(_splitmix64(seed & MASK64) ^ (epoch & MASK64)) ^ (index & MASK64))
    g = torch.Generator()
    g.manual_seed(state & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def resized_crop_box(width: int, height: int, scale: tuple, ratio: tuple, gen: torch.Generator):
    """torchvision's RandomResizedCrop parameter search (10 tries, then a central crop), driven by `gen`:
    (left, top, w, h). Each try draws its four numbers at once."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return min(int(u[3] * (width - w + 1)), width - w), min(int(u[2] * (height - h + 1)), height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class DeviceTile(np.ndarray):
    """A fixed-size uint8 tile (H, W, 3) whose crop, flips and rotations are left to the training device
    (a plain array for any other sample function)."""


def crop_settings(aug: AugConfig) -> tuple:
    """(scale, ratio, interpolation) of the configured RandomResizedCrop: the official code's (torchvision
    defaults, bilinear) or MAE's (scale from 0.2, bicubic)."""
    if aug.crop == "mae":
        return (0.2, 1.0), (3 / 4, 4 / 3), "bicubic"
    return (aug.crop_scale_min, 1.0), (3 / 4, 4 / 3), "bilinear"


def crop_flip_rotate(tile: np.ndarray, box: tuple, size: int, mode: str, hflip: bool, vflip: bool,
                     turns: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> uint8 (3, size, size): box crop, anti-aliased resize, flips, counter-clockwise turns.

    The crop is copied once, row-contiguous, and resized as channels-last memory (torch's fast uint8
    kernels); flips and turns on the small result cost a few microseconds."""
    left, top, w, h = box
    x = torch.from_numpy(np.ascontiguousarray(tile[top: top + h, left: left + w])).permute(2, 0, 1)
    if (h, w) != (size, size):
        x = F.interpolate(x[None], size=(size, size), mode=mode, antialias=True, align_corners=False)[0]
    if hflip:
        x = x.flip(-1)
    if vflip:
        x = x.flip(-2)
    if turns:
        x = torch.rot90(x, turns, dims=(-2, -1))
    return x


class PretrainTransform:
    """One tile (PIL image, uint8 array, or `DeviceTile`) -> {"image": uint8 (3, h, w), "image_aug": float32
    parameters for the device}; see the module docstring for which steps run where."""

    def __init__(self, aug: AugConfig, size: int):
        self.aug, self.size = aug, size
        self.scale, self.ratio, self.mode = crop_settings(aug)

    def __call__(self, img, gen: torch.Generator) -> dict:
        if isinstance(img, Image.Image):
            img = np.array(img.convert("RGB"), dtype=np.uint8)
        H, W = img.shape[:2]
        box = (0, 0, W, H) if self.aug.crop == "none" else resized_crop_box(W, H, self.scale, self.ratio, gen)
        # a fixed number of draws, so switching a step off does not shift later randomness (masks)
        u = torch.rand(12, generator=gen, dtype=torch.float64).tolist()
        hflip = bool(self.aug.hflip and u[0] < 0.5)
        vflip = bool(self.aug.vflip and u[1] < 0.5)
        turns = min(int(u[2] * 4), 3) if self.aug.rot90 else 0
        sigma, s = self.aug.hed_jitter, self.aug.color_jitter
        colour = [1 + sigma * (2 * v - 1) for v in u[3:6]] + [sigma * (2 * v - 1) for v in u[6:9]] \
            + [max(0.0, 1 - s + 2 * s * v) for v in u[9:12]]
        if isinstance(img, DeviceTile):  # a (3, H, W) view of the tile itself: collation makes the one copy
            image = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)
            geometry = [self.size, *box, hflip, vflip, turns]
        else:
            image = crop_flip_rotate(img, box, self.size, self.mode, hflip, vflip, turns)
            geometry = [self.size, 0, 0, self.size, self.size, 0, 0, 0]
        return {"image": image, "image_aug": torch.from_numpy(np.array(geometry + colour, dtype=np.float32))}
