"""Two-view and multi-crop augmentation for MoCo v3 and DINO, with all randomness from the sample's generator.

Each view is the BYOL set as MoCo v3 and DINO use it: random resized crop (bicubic), horizontal flip,
colour jitter (brightness, contrast, saturation, hue in a random order) with probability 0.8, grayscale
0.2, Gaussian blur, solarisation; plus the pathology options shared with MAE / SD-MAE through
`data.aug` (vertical flip, 90-degree rotations, HED stain jitter). Views leave the worker as uint8
(views, 3, H, W); the loop normalises them on the device like any other image field. On the device-crop
path (fixed-size tiles; the default on CUDA) the worker only draws the views' parameters and the views are
built on the device from the tile (`methods.device_views`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

from sdmae.config import Config
from sdmae.data.stain import hed_apply_pil, hed_factors
from sdmae.data.transforms import DeviceTile, resized_crop_box, to_uint8_chw

ROTATIONS = (Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)


@dataclass(frozen=True)
class ViewSpec:
    """What differs between views: output size, crop scale and the blur / solarisation probabilities."""

    size: int
    scale: tuple
    blur_p: float
    solarize_p: float


# per-view parameters of the device path, "<field>_aug" (B, views, len(VIEW_PARAMS)) float32
VIEW_PARAMS = ("left", "top", "width", "height", "hflip", "vflip", "turns", "brightness", "contrast",
               "saturation", "hue", "order0", "order1", "order2", "order3", "grayscale", "blur_sigma", "solarize",
               "h_alpha", "e_alpha", "d_alpha", "h_beta", "e_beta", "d_beta")


class ViewAugment:
    """One augmented view: `draw` takes all its random numbers from the sample's generator (always the same
    count, so switching a step off does not shift the others); `__call__` applies them to a PIL tile ->
    uint8 (3, size, size); the device path applies the same numbers batched (`methods.device_views`)."""

    def __init__(self, spec: ViewSpec, cfg: Config):
        self.spec, self.v, self.aug = spec, cfg.method.views, cfg.data.aug

    def draw(self, W: int, H: int, gen: torch.Generator) -> list:
        """The view's parameters, laid out as VIEW_PARAMS."""
        s, v, aug = self.spec, self.v, self.aug
        box = resized_crop_box(W, H, s.scale, (3 / 4, 4 / 3), gen)
        u = torch.rand(11, generator=gen).tolist()
        order = torch.randperm(4, generator=gen).tolist()
        turns = int(torch.randint(0, 4, (1,), generator=gen))
        alpha, beta = [1.0] * 3, [0.0] * 3
        if aug.hed_jitter > 0:  # its own six numbers, after the others
            a, b = hed_factors(torch.rand(6, generator=gen, dtype=torch.float64), aug.hed_jitter)
            alpha, beta = a.tolist(), b.tolist()
        jitter = [1.0, 1.0, 1.0, 0.0]
        if u[2] < v.jitter_p:
            bs, cs, ss, hs = v.jitter
            jitter = [1 - bs + 2 * bs * u[3], 1 - cs + 2 * cs * u[4], 1 - ss + 2 * ss * u[5], -hs + 2 * hs * u[6]]
        lo, hi = v.blur_sigma
        sigma = (lo + (hi - lo) * u[9]) * s.size / 224 if u[8] < s.blur_p else 0.0  # recipes' sigma: 224 px
        return [*box, float(aug.hflip and u[0] < 0.5), float(aug.vflip and u[1] < 0.5),
                float(turns if aug.rot90 else 0), *jitter, *order, float(u[7] < v.grayscale_p), sigma,
                float(u[10] < s.solarize_p), *alpha, *beta]

    def __call__(self, img: Image.Image, gen: torch.Generator) -> torch.Tensor:
        return to_uint8_chw(self.apply(img, self.draw(*img.size, gen)))

    def apply(self, img: Image.Image, p: list) -> Image.Image:
        size = self.spec.size
        left, top, w, h = p[0:4]
        img = img.resize((size, size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if p[4]:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        if p[5]:
            img = img.transpose(Image.FLIP_TOP_BOTTOM)
        if p[6]:
            img = img.transpose(ROTATIONS[int(p[6]) - 1])
        if self.aug.hed_jitter > 0:
            img = hed_apply_pil(img, torch.tensor(p[18:21], dtype=torch.float64),
                                torch.tensor(p[21:24], dtype=torch.float64))
        img = color_jitter(img, p[7:11], [int(k) for k in p[11:15]])
        if p[15]:
            img = img.convert("L").convert("RGB")
        if p[16]:
            img = img.filter(ImageFilter.GaussianBlur(radius=p[16]))
        if p[17]:
            img = ImageOps.solarize(img, threshold=128)
        return img


def color_jitter(img: Image.Image, factors, order) -> Image.Image:
    """torchvision's ColorJitter with given factors (brightness, contrast, saturation, hue) in `order`."""
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        if (i < 3 and factors[i] != 1) or (i == 3 and factors[i] != 0):
            img = ops[i](img, max(0.0, factors[i]) if i < 3 else factors[i])
    return img


class MultiViewSampleFn:
    """Per-sample work in the data workers: {"views": (G, 3, S, S)} and, with local crops, {"local": (L, 3, s, s)}.
    A fixed-size tile on the device-crop path (`DeviceTile`) leaves as it is, {"tile": (H, W, 3)}, with the
    views' parameters {"views_aug": (G, P), "local_aug": (L, P)}: the method builds the views on the device."""

    def __init__(self, cfg: Config, global_specs: list[ViewSpec], local_specs: list[ViewSpec]):
        self.global_views = [ViewAugment(s, cfg) for s in global_specs]
        self.local_views = [ViewAugment(s, cfg) for s in local_specs]

    def __call__(self, img, gen: torch.Generator) -> dict:
        if isinstance(img, DeviceTile):
            H, W = img.shape[:2]
            out = {"tile": torch.from_numpy(np.asarray(img)),
                   "views_aug": torch.tensor([view.draw(W, H, gen) for view in self.global_views])}
            if self.local_views:
                out["local_aug"] = torch.tensor([view.draw(W, H, gen) for view in self.local_views])
            return out
        if not isinstance(img, Image.Image):  # fixed-size tiles on the workers' path arrive as uint8 arrays
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
