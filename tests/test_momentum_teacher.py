"""`method.sd_view=full`: the SD-MAE teacher is a momentum copy of encoder and decoder, with the (gradient-free)
teacher head, that reads every patch of the crop; the student is the encoder on the visible patches, as in the
paper's term."""
import pytest
import torch

from sdmae.config import ConfigError, load_config
from sdmae.encoders import encoder_state
from sdmae.methods import build_method


def sdmae(tiny_overrides, *extra):
    torch.manual_seed(0)
    return build_method(load_config(overrides=tiny_overrides + ["method.name=sdmae", "method.p=0.5", *extra]))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([torch.randperm(4, generator=g) < 3 for _ in range(3)])  # 32 px, patch 16: 4 patches, 1 seen
    return {"image": torch.randn(3, 3, 32, 32, generator=g), "mask": mask}


def with_masked_patch_changed(b):
    """The same batch with the pixels of one masked patch of each image replaced."""
    image = b["image"].clone()
    for i, m in enumerate(b["mask"]):
        j = int(torch.nonzero(m)[0])  # a masked patch: row j // 2, column j % 2 of the 2 x 2 grid
        r, c = divmod(j, 2)
        image[i, :, 16 * r:16 * (r + 1), 16 * c:16 * (c + 1)] += 3.0
    return {**b, "image": image}


def loss_sd(m, b):
    m.center.zero_()  # each forward moves the centre: compare from the same one
    with torch.no_grad():
        return float(m(b)["loss_sd"])


def test_the_momentum_teacher_reads_the_masked_patches_that_the_paper_teacher_does_not(tiny_overrides):
    full, same = sdmae(tiny_overrides, "method.sd_view=full"), sdmae(tiny_overrides)
    b = batch()
    changed = with_masked_patch_changed(b)
    assert loss_sd(same, changed) == pytest.approx(loss_sd(same, b), rel=1e-6)
    assert loss_sd(full, changed) != pytest.approx(loss_sd(full, b), rel=1e-3)


def test_only_the_student_branch_learns_and_the_copy_follows_it(tiny_overrides):
    m = sdmae(tiny_overrides, "method.sd_view=full", "method.p=1.0", "method.momentum=0.9")
    m(batch())["loss"].backward()
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher_head.parameters())
    assert all(p.grad is None for p in m.momentum_branch.parameters())
    assert m.has_unused_parameters()  # the teacher head: DDP must be told
    assert m.train().training and not m.momentum_branch.training  # a teacher: no drop path
    teacher_w = m.momentum_branch["encoder"].blocks[0].attn.qkv.weight
    before, online = teacher_w.clone(), m.encoder.blocks[0].attn.qkv.weight
    with torch.no_grad():
        online.add_(1.0)
    m.after_optimizer_step(step=0, total=1000)  # cosine schedule: m(1) = 1 - 0.1 * (cos(pi / 1000) + 1) / 2
    m1 = (1.0 - 0.1 * (torch.cos(torch.tensor(torch.pi / 1000)) + 1) / 2).item()
    assert torch.allclose(teacher_w, m1 * before + (1 - m1) * online, atol=1e-6)


def test_the_copy_is_not_part_of_the_exported_encoder(tiny_overrides):
    m = sdmae(tiny_overrides, "method.sd_view=full")
    assert any(k.startswith("momentum_branch.encoder.") for k in m.state_dict())
    assert set(encoder_state(m.state_dict())) == set(m.encoder.state_dict())


def test_sd_view_full_needs_the_distillation_term(tiny_overrides):
    for extra, key in ((["method.name=mae"], "method.sd_view"), (["method.p=0"], "method.sd_view")):
        with pytest.raises(ConfigError, match=key):
            load_config(overrides=tiny_overrides + ["method.sd_view=full", *extra])
