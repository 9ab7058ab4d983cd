"""MoCo v3 / DINO views built on the device from fixed-size tiles: the PIL path's parameters, batched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import default_collate

from sdmae.config import load_config
from sdmae.data.batch import move_batch
from sdmae.data.transforms import DeviceTile, sample_generator
from sdmae.methods import build_method
from sdmae.methods.device_views import batch_views, hsv_to_rgb, hue_shift, rgb_to_hsv

CPU = torch.device("cpu")


def smooth_tile(seed: int, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    a, b, c = np.random.default_rng(seed).uniform(0.5, 3, 3)
    img = np.stack([np.sin(a * x + b * y), np.cos(b * x * y + c), np.sin(c * x - a * y)], -1)
    return ((img + 1) * 127.5).round().astype(np.uint8)


def both_paths(sets: list[str]):
    """The same samples through the PIL path (workers) and the device path: views in [0, 255]."""
    cfg = load_config(overrides=["model.name=vit_tiny_patch16", "model.img_size=48", "train.device=cpu", *sets])
    method = build_method(cfg)
    fn = method.sample_fn()
    tiles = [smooth_tile(i) for i in range(6)]
    pil = default_collate([fn(t, sample_generator(0, 2, i)) for i, t in enumerate(tiles)])
    dev = default_collate([fn(t.copy().view(DeviceTile), sample_generator(0, 2, i)) for i, t in enumerate(tiles)])
    assert set(dev) >= {"tile", "views_aug"} and dev["tile"].shape == (6, 64, 64, 3)
    built = batch_views(move_batch(dev, CPU, cfg), cfg, *method.specs())
    mean, std = torch.tensor(cfg.data.aug.mean).view(3, 1, 1), torch.tensor(cfg.data.aug.std).view(3, 1, 1)
    out = {k: (built[k] * std + mean) * 255 for k in ("views", "local") if k in built}
    return {k: pil[k].float() for k in out}, out


@pytest.mark.parametrize("method", ["dino", "mocov3"])
def test_device_views_follow_the_pil_views_geometry(method):
    """Colour steps off: crops, flips and turns agree with PIL's to interpolation (bicubic there, bilinear here)."""
    pil, dev = both_paths([f"method.name={method}", "method.views.local_crops=2", "method.views.jitter_p=0",
                           "method.views.grayscale_p=0", "method.views.blur_p=[0,0]", "method.views.local_blur_p=0",
                           "method.views.solarize_p=[0,0]"])
    for k in pil:
        assert pil[k].shape == dev[k].shape
        assert (pil[k] - dev[k]).abs().mean() < 1.0, k  # grey levels of 255 (measured 0.25 to 0.29)


def test_device_views_follow_the_pil_views_with_every_step_on():
    pil, dev = both_paths(["method.name=dino", "method.views.local_crops=2", "method.views.jitter_p=1",
                           "method.views.grayscale_p=0.5", "method.views.solarize_p=[0.5,0.5]", "data.aug.hed_jitter=0.05"])
    for k in pil:
        diff = (pil[k] - dev[k]).abs().flatten(2).mean(-1)  # per sample and view
        assert diff.median() < 2.5 and diff.max() < 8.0, (k, diff)  # measured 1.3 and 3.4 at most


def test_hue_shift_matches_torchvision_per_sample():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    shifts = torch.tensor([-0.3, 0.0, 0.2])
    want = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(3)])
    torch.testing.assert_close(hue_shift(x, shifts[:, None, None]), want, atol=1e-4, rtol=0)
