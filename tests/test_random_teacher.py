"""Random-teacher targets (method.target=random_features): what the decoder is asked for, and that it stays fixed."""
import pytest
import torch
import torch.nn.functional as F

from sdmae.config import ConfigError, load_config
from sdmae.data.transforms import sample_generator
from sdmae.errors import UsageError
from sdmae.methods import build_method


def batch(m, n=4):
    torch.manual_seed(1)
    images = torch.randn(n, 3, 32, 32)
    sampler = m.sample_fn().masks
    return {"image": images, "mask": torch.stack([sampler(sample_generator(0, 0, i))["mask"] for i in range(n)])}


def initial_tokens(encoder, images, blocks):
    """The definition: the encoder's tokens after `blocks` blocks, layer-normalised without parameters."""
    x = encoder.patch_embed(images) + encoder.pos_embed
    for blk in encoder.blocks[:blocks]:
        x = blk(x)
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


@pytest.mark.parametrize("block", [0, 2])
def test_targets_are_the_initial_encoders_tokens_and_stay_fixed(tiny_overrides, block):
    cfg = load_config(overrides=tiny_overrides + ["method.name=sdmae", "method.target=random_features",
                                                  f"method.target_block={block}"])
    torch.manual_seed(0)
    m = build_method(cfg).train()
    assert not m.can_reconstruct and not m.teacher.training  # no pixels to picture; no drop-path in targets
    assert not any(p.requires_grad for p in m.teacher.parameters())
    b = batch(m)
    with torch.no_grad():
        want = initial_tokens(m.encoder, b["image"], block or len(m.encoder.blocks))
    _, _, pred, _, ids_mask = m.encode_decode(b["image"], b["mask"])
    target = torch.gather(want, 1, ids_mask[..., None].expand(-1, -1, want.shape[-1]))
    assert pred.shape == target.shape == (4, 3, m.encoder.embed_dim)
    out = m(b)
    assert torch.allclose(out["loss_rec"], ((pred - target) ** 2).mean(), atol=1e-5)

    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1.0)
    out["loss"].backward()
    opt.step()
    with torch.no_grad():
        moved = initial_tokens(m.encoder, b["image"], block or len(m.encoder.blocks))
        assert not torch.allclose(moved, want, atol=1e-3)  # the student moved ...
        assert torch.allclose(m.targets(b["image"], ids_mask), target, atol=1e-6)  # ... its targets did not


def test_the_teacher_is_saved_with_the_run(tiny_overrides):
    cfg = load_config(overrides=tiny_overrides + ["method.name=mae", "method.target=random_features"])
    torch.manual_seed(0)
    a = build_method(cfg)
    torch.manual_seed(1)
    b = build_method(cfg)
    ids_mask = torch.arange(3).expand(2, 3)
    images = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a.targets(images, ids_mask), b.targets(images, ids_mask))
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.targets(images, ids_mask), b.targets(images, ids_mask))


def test_target_block_is_checked(tiny_overrides):
    with pytest.raises(ConfigError, match="method.target_block"):
        load_config(overrides=tiny_overrides + ["method.target_block=2"])  # pixels: the key would do nothing
    cfg = load_config(overrides=tiny_overrides + ["method.target=random_features", "method.target_block=13"])
    with pytest.raises(UsageError, match="method.target_block' 13 is more than the 12 blocks"):
        build_method(cfg)
