"""One-channel targets (method.target=gray|haematoxylin): what the decoder is asked for, and what they ignore."""
import numpy as np
import pytest
import torch

from sdmae.config import load_config
from sdmae.data.stain import hed_to_rgb
from sdmae.methods import build_method


def method(tiny_overrides, target, norm="joint"):
    cfg = load_config(overrides=tiny_overrides + ["method.name=sdmae", f"method.target={target}",
                                                  f"method.target_norm={norm}"])
    torch.manual_seed(0)
    return build_method(cfg)


def normalised(m, rgb: torch.Tensor) -> torch.Tensor:
    return (rgb - m.pixel_mean) / m.pixel_std


def tissue_hed(n=2, seed=0) -> torch.Tensor:
    """Haematoxylin and eosin concentrations in [0, 0.1], no DAB: the RGB tile they make needs no clipping."""
    g = torch.Generator().manual_seed(seed)
    hed = 0.1 * torch.rand(n, 3, 32, 32, generator=g)
    hed[:, 2] = 0.0
    return hed


def tissue_like(n=2, seed=0) -> torch.Tensor:
    return hed_to_rgb(tissue_hed(n, seed))


def test_gray_targets_are_the_grey_level_of_each_masked_patch(tiny_overrides):
    m = method(tiny_overrides, "gray", norm="none")
    assert not m.can_reconstruct  # the picture needs three channels
    rgb = tissue_like()
    ids_mask = torch.tensor([[0, 1, 3], [2, 3, 0]])
    got = m.targets(normalised(m, rgb), ids_mask)
    grey = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).numpy()  # (2, 32, 32)
    for b in range(2):
        for j, i in enumerate(ids_mask[b].tolist()):
            y, x = divmod(i, 2)
            want = grey[b, 16 * y:16 * y + 16, 16 * x:16 * x + 16].reshape(-1)
            np.testing.assert_allclose(got[b, j].numpy(), want, atol=1e-5)


def test_haematoxylin_targets_ignore_the_eosin_stain(tiny_overrides):
    m = method(tiny_overrides, "haematoxylin")
    hed = tissue_hed()
    rgb = hed_to_rgb(hed)
    more_eosin = hed.clone()
    more_eosin[:, 1] = 1.5 * hed[:, 1] + 0.05
    shifted = hed_to_rgb(more_eosin)
    assert (shifted - rgb).abs().max() > 0.2  # a visible change of colour ...
    ids_mask = torch.arange(3).expand(2, 3)
    a, b = m.targets(normalised(m, rgb), ids_mask), m.targets(normalised(m, shifted), ids_mask)
    assert torch.allclose(a, b, atol=1e-3)  # ... that leaves the targets as they were
    hed[:, 0, :8] = 0.0  # where the nuclei are does change them
    assert not torch.allclose(a, m.targets(normalised(m, hed_to_rgb(hed)), ids_mask), atol=0.1)


@pytest.mark.parametrize("target", ["gray", "haematoxylin"])
def test_one_channel_targets_train_through_the_decoder(tiny_overrides, target):
    m = method(tiny_overrides, target).train()
    rgb = tissue_like(4, seed=1)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, :3] = True
    out = m({"image": normalised(m, rgb), "mask": mask})
    _, _, pred, _, ids_mask = m.encode_decode(normalised(m, rgb), mask)
    target_patches = m.targets(normalised(m, rgb), ids_mask)
    assert pred.shape == target_patches.shape == (4, 3, 16 * 16)
    assert torch.allclose(target_patches.mean(-1), torch.zeros(4, 3), atol=1e-5)  # joint: per-patch zero mean
    assert torch.allclose(out["loss_rec"], ((pred - target_patches) ** 2).mean(), atol=1e-5)
    out["loss"].backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
