"""Two-view and multi-crop augmentation for MoCo v3 and DINO, with all randomness from the sample's generator.

Each view is the BYOL set as MoCo v3 and DINO use it: random resized crop (bicubic), horizontal flip,
colour jitter (brightness, contrast, saturation, hue in a random order) with probability 0.8, grayscale
0.2, Gaussian blur, solarisation; plus the pathology options shared with MAE / SD-MAE through
`data.aug` (vertical flip, 90-degree rotations, HED stain jitter). Views leave the worker as uint8
(views, 3, H, W); the loop normalises them on the device like any other image field.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

from sdmae.config import Config
from sdmae.data.stain import hed_jitter_pil
from sdmae.data.transforms import resized_crop_box, to_uint8_chw

ROTATIONS = (Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)


@dataclass(frozen=True)
class ViewSpec:
    """What differs between views: output size, crop scale and the blur / solarisation probabilities."""

    size: int
    scale: tuple
    blur_p: float
    solarize_p: float


class ViewAugment:
    """One augmented view of a PIL tile -> uint8 (3, size, size)."""

    def __init__(self, spec: ViewSpec, cfg: Config):
        self.spec, self.v, self.aug = spec, cfg.method.views, cfg.data.aug

    def __call__(self, img: Image.Image, gen: torch.Generator) -> torch.Tensor:
        s, v, aug = self.spec, self.v, self.aug
        W, H = img.size
        left, top, w, h = resized_crop_box(W, H, s.scale, (3 / 4, 4 / 3), gen)
        img = img.resize((s.size, s.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        # a fixed number of draws per view, so switching a step off does not shift the others' randomness
        # (HED jitter, when on, draws its own six numbers after these)
        u = torch.rand(11, generator=gen).tolist()
        order = torch.randperm(4, generator=gen).tolist()
        turns = int(torch.randint(0, 4, (1,), generator=gen))
        if aug.hflip and u[0] < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if aug.vflip and u[1] < 0.5:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if aug.rot90 and turns:
            img = img.transpose(ROTATIONS[turns - 1])
        if aug.hed_jitter > 0:
            img = hed_jitter_pil(img, aug.hed_jitter, gen)
        if u[2] < v.jitter_p:
            img = color_jitter(img, v.jitter, order, u[3:7])
        if u[7] < v.grayscale_p:
            img = img.convert("L").convert("RGB")
        if u[8] < s.blur_p:
            lo, hi = v.blur_sigma
            sigma = (lo + (hi - lo) * u[9]) * s.size / 224  # the recipes' sigma is for 224 px crops
            img = img.filter(ImageFilter.GaussianBlur(radius=sigma))
        if u[10] < s.solarize_p:
            img = ImageOps.solarize(img, threshold=128)
        return to_uint8_chw(img)


def color_jitter(img: Image.Image, strength, order, u) -> Image.Image:
    """torchvision's ColorJitter with its factors taken from `u` (4 uniforms) and its order from `order`."""
    b, c, s, h = strength
    factors = [1 - b + 2 * b * u[0], 1 - c + 2 * c * u[1], 1 - s + 2 * s * u[2], -h + 2 * h * u[3]]
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        if (i < 3 and factors[i] != 1) or (i == 3 and factors[i] != 0):
            img = ops[i](img, max(0.0, factors[i]) if i < 3 else factors[i])
    return img


class MultiViewSampleFn:
    """Per-sample work in the data workers: {"views": (G, 3, S, S)} and, with local crops, {"local": (L, 3, s, s)}."""

    def __init__(self, cfg: Config, global_specs: list[ViewSpec], local_specs: list[ViewSpec]):
        self.global_views = [ViewAugment(s, cfg) for s in global_specs]
        self.local_views = [ViewAugment(s, cfg) for s in local_specs]

    def __call__(self, img, gen: torch.Generator) -> dict:
        if not isinstance(img, Image.Image):  # fixed-size tiles arrive as uint8 arrays (H, W, 3)
            img = Image.fromarray(np.asarray(img))
        img = img.convert("RGB")
        out = {"views": torch.stack([view(img, gen) for view in self.global_views])}
        if self.local_views:
            out["local"] = torch.stack([view(img, gen) for view in self.local_views])
        return out


def local_crop_size(cfg: Config, patch: int) -> int:
    """method.views.local_size, or DINO's 96/224 of the global size rounded to whole patches."""
    size = cfg.method.views.local_size
    if size is None:
        size = max(1, round(cfg.model.img_size * 96 / 224 / patch)) * patch
    return size


def global_specs(cfg: Config, default_scale: tuple) -> list[ViewSpec]:
    """The two global views: asymmetric blur (1.0 / 0.1) and solarisation (0 / 0.2) as in BYOL, MoCo v3, DINO."""
    v = cfg.method.views
    scale = tuple(v.global_scale) if v.global_scale is not None else default_scale
    return [ViewSpec(cfg.model.img_size, scale, v.blur_p[i], v.solarize_p[i]) for i in range(2)]


def local_specs(cfg: Config, patch: int) -> list[ViewSpec]:
    v = cfg.method.views
    spec = ViewSpec(local_crop_size(cfg, patch), tuple(v.local_scale), v.local_blur_p, 0.0)
    return [spec] * v.local_crops
