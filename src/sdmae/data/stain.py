"""HED stain augmentation (Tellez et al., "Whole-slide mitosis detection in H&E breast histology using PHH3 as
a reference to train distilled stain-invariant convolutional networks", IEEE TMI 2018).

Colour deconvolution (Ruifrok and Johnston 2001) turns RGB into haematoxylin, eosin and DAB concentrations;
each is perturbed as c' = alpha * c + beta with alpha ~ U(1 - sigma, 1 + sigma) and beta ~ U(-sigma, sigma)
per image, and the result is turned back into RGB. Concentrations are in scikit-image's `rgb2hed` units
(optical density divided by -ln(1e-6)), the units in which the paper's sigma (0.05 light, 0.2 strong) was set.
Concentrations are not clipped, so alpha = 1, beta = 0 returns the input (to float rounding).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image

# rows: the RGB optical-density direction of haematoxylin, eosin and DAB (Ruifrok and Johnston)
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
EPS = 1e-6
LOG_ADJUST = -math.log(EPS)


@functools.lru_cache(maxsize=16)
def _on(matrix: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A stain matrix on the device, copied there once per process (not once per batch)."""
    return {"hed": HED_FROM_RGB, "rgb": RGB_FROM_HED}[matrix].to(device, dtype)


def rgb_to_hed(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HED concentrations, same shape."""
    od = -torch.log(x.clamp_min(EPS)) / LOG_ADJUST
    m = _on("hed", x.device, x.dtype)
    return torch.einsum("...chw,cd->...dhw", od, m)


def hed_to_rgb(c: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hed`, clipped to [0, 1]."""
    m = _on("rgb", c.device, c.dtype)
    od = torch.einsum("...chw,cd->...dhw", c, m)
    return torch.exp(-od * LOG_ADJUST).clamp_(0.0, 1.0)


def hed_jitter(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Batched stain jitter: x (B, 3, H, W) RGB in [0, 1], alpha and beta (B, 3) -> RGB in [0, 1]."""
    c = rgb_to_hed(x)
    return hed_to_rgb(c * alpha[:, :, None, None] + beta[:, :, None, None])


def hed_factors(u: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha, beta from uniforms u (..., 6) in [0, 1)."""
    return 1.0 + sigma * (2 * u[..., :3] - 1), sigma * (2 * u[..., 3:6] - 1)


def hed_jitter_pil(img: Image.Image, sigma: float, gen: torch.Generator) -> Image.Image:
    """The same jitter on one PIL tile, its six factors drawn from the sample's generator."""
    alpha, beta = hed_factors(torch.rand(6, generator=gen, dtype=torch.float64), sigma)
    return hed_apply_pil(img, alpha, beta)


def hed_apply_pil(img: Image.Image, alpha: torch.Tensor, beta: torch.Tensor) -> Image.Image:
    """`hed_jitter` with given factors (3,) on one PIL tile."""
    x = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0).permute(2, 0, 1)
    y = hed_jitter(x[None], alpha[None], beta[None])[0]
    return Image.fromarray((y.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
