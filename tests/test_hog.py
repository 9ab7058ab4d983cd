"""HOG reconstruction targets (method.target=hog): the histogram itself, its layout and its use by MAE / SD-MAE."""
import math

import numpy as np
import pytest
import torch

from sdmae.config import load_config
from sdmae.config.loading import ConfigError
from sdmae.methods import build_method
from sdmae.methods.hog import hog_dim, hog_patches
from sdmae.data.transforms import sample_generator


def naive_hog(img: np.ndarray, patch: int, cell: int) -> np.ndarray:
    """Pixel by pixel, for one (C, H, W) image: the definition the module vectorises."""
    C, H, W = img.shape
    p = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = []
    for py in range(H // patch):
        for px in range(W // patch):
            vec = np.zeros((C, 9, patch // cell, patch // cell))
            for c in range(C):
                for y in range(py * patch, (py + 1) * patch):
                    for x in range(px * patch, (px + 1) * patch):
                        gx = p[c, y + 1, x + 2] - p[c, y + 1, x]
                        gy = p[c, y + 2, x + 1] - p[c, y, x + 1]
                        pos = (math.atan2(gy, gx) % math.pi) * 9 / math.pi
                        lo = int(math.floor(pos))
                        share = pos - lo
                        cy, cx = (y - py * patch) // cell, (x - px * patch) // cell
                        vec[c, lo % 9, cy, cx] += math.hypot(gx, gy) * (1 - share) / cell ** 2
                        vec[c, (lo + 1) % 9, cy, cx] += math.hypot(gx, gy) * share / cell ** 2
            v = vec.reshape(-1)
            out.append(v / max(np.linalg.norm(v), 1e-12) * math.sqrt(v.size))
    return np.stack(out)


@pytest.mark.parametrize("patch", [16, 8, 4])
def test_hog_matches_pixel_by_pixel_definition(patch):
    torch.manual_seed(0)
    img = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    got = hog_patches(img, patch)[0].numpy()
    want = naive_hog(img[0].numpy(), patch, min(8, patch))
    assert got.shape == (16 * 16 // patch ** 2 * 4, hog_dim(patch))
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_hog_orientation_bins_and_patch_order():
    img = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    img[:, :, :, :16:4] = 1.0  # vertical stripes in the left patches only: horizontal gradients, bin 0
    h = hog_patches(img, 16)[0].reshape(4, 3, 9, 4)  # patches in row-major order: 0 1 / 2 3
    assert torch.all(h[[1, 3]] == 0)  # flat patches have no gradient
    assert torch.all(h[[0, 2], :, 1:] == 0) and torch.all(h[[0, 2], :, 0] > 0)
    assert torch.allclose(h[2].square().sum(), torch.tensor(float(hog_dim(16)), dtype=torch.float64))
    turned = hog_patches(img.transpose(2, 3), 16)[0].reshape(4, 3, 9, 4)  # stripes in the top patches, turned
    assert torch.all(turned[[2, 3]] == 0)
    assert torch.allclose(turned[:2, :, 4], turned[:2, :, 5]) and torch.all(turned[:2, :, [0, 1, 2, 3, 6, 7, 8]] == 0)


def test_mae_with_hog_targets_trains_on_masked_patches(tiny_overrides):
    cfg = load_config(overrides=tiny_overrides + ["method.target=hog", "method.name=sdmae"])
    torch.manual_seed(0)
    m = build_method(cfg)
    assert not m.can_reconstruct  # no pixels to picture
    images = torch.randn(4, 3, 32, 32)
    sampler = m.sample_fn().masks
    mask = torch.stack([sampler(sample_generator(0, 0, i))["mask"] for i in range(4)])
    out = m({"image": images, "mask": mask})
    _, _, pred, _, ids_mask = m.encode_decode(images, mask)
    target = hog_patches(images * m.pixel_std + m.pixel_mean, 16)
    target = torch.gather(target, 1, ids_mask[..., None].expand(-1, -1, hog_dim(16)))
    assert pred.shape == target.shape == (4, 3, hog_dim(16))
    assert torch.allclose(out["loss_rec"], ((pred - target) ** 2).mean(), atol=1e-6)
    out["loss"].backward()
    assert m.encoder.patch_embed.proj.weight.grad.abs().sum() > 0


def test_unknown_target_is_a_config_error(tiny_overrides):
    with pytest.raises(ConfigError, match="method.target"):
        load_config(overrides=tiny_overrides + ["method.target=hogs"])
