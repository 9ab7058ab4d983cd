"""Models, masking, targets and the two losses of DESIGN section 3."""
import math

import pytest
import torch
import torch.nn.functional as F

from sdmae.config import load_config
from sdmae.methods import build_method
from sdmae.methods.masking import MaskSampler, normalize_targets, patch_stats, patchify, split_ids, unpatchify
from sdmae.methods.sdmae import distillation_loss
from sdmae.models.pos_embed import sincos_1d, sincos_2d
from sdmae.models.vit import ARCHS, build_encoder
from sdmae.data.transforms import sample_generator


def make(overrides, *extra):
    cfg = load_config(overrides=list(overrides) + list(extra))
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def batch_for(method, cfg, n=4, seed=0):
    torch.manual_seed(seed)
    images = torch.randn(n, 3, cfg.model.img_size, cfg.model.img_size)
    sampler = method.sample_fn().masks
    mask = torch.stack([sampler(sample_generator(seed, 0, i))["mask"] for i in range(n)])
    return {"image": images, "mask": mask}


def test_mask_exact_count_differs_per_image_and_reproducible():
    s = MaskSampler(196, int(0.75 * 196))
    masks = [s(sample_generator(7, 0, i))["mask"] for i in range(8)]
    assert all(int(m.sum()) == 147 for m in masks)
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masks}) == 8
    again = [s(sample_generator(7, 0, i))["mask"] for i in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(masks, again))
    assert not torch.equal(masks[0], s(sample_generator(7, 1, 0))["mask"])  # new epoch, new mask


def test_split_ids_sorted_and_complete():
    mask = torch.tensor([[True, False, False, True], [False, True, True, False]])
    keep, hide = split_ids(mask)
    assert keep.tolist() == [[1, 2], [0, 3]] and hide.tolist() == [[0, 3], [1, 2]]
    given = split_ids(mask, num_mask=2)  # the training path passes the count it knows (no device read-back)
    assert torch.equal(given[0], keep) and torch.equal(given[1], hide)


@pytest.mark.parametrize("p,size", [(16, 64), (8, 40)])
def test_patchify_roundtrip_and_layout(p, size):
    x = torch.randn(2, 3, size, size)
    patches = patchify(x, p)
    assert patches.shape == (2, (size // p) ** 2, p * p * 3)
    assert torch.equal(unpatchify(patches, p), x)
    # patch 1 is the second patch of the first row; values ordered (y, x, channel)
    assert torch.equal(patches[0, 1].reshape(p, p, 3), x[0, :, :p, p:2 * p].permute(1, 2, 0))


def test_target_normalisation_per_channel_formula():
    x = torch.rand(2, 5, 4 * 4 * 3)
    y = normalize_targets(x, "per_channel")
    for b in range(2):
        for n in range(5):
            px = x[b, n].reshape(16, 3)
            want = (px - px.mean(0)) / (px.std(0, unbiased=True) + 1e-6)
            assert torch.allclose(y[b, n].reshape(16, 3), want, atol=1e-5)


def test_target_normalisation_joint_formula_and_inverse():
    x = torch.rand(2, 5, 48)
    y = normalize_targets(x, "joint")
    want = (x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=True, keepdim=True) + 1e-6).sqrt()
    assert torch.allclose(y, want, atol=1e-6)
    for mode in ("joint", "per_channel", "none"):
        mean, scale = patch_stats(x, mode)
        assert torch.allclose(normalize_targets(x, mode) * scale + mean, x, atol=1e-5)


def test_pos_embed_1d_matches_transformer_formula():
    t = sincos_1d(10, 8)
    for pos in (0, 3, 9):
        for j in range(8):
            angle = pos / 10000 ** (2 * (j // 2) / 8)
            assert math.isclose(t[pos, j].item(), math.sin(angle) if j % 2 == 0 else math.cos(angle), abs_tol=1e-6)


def test_pos_embed_2d_rows_and_columns():
    t = sincos_2d(3, 4, 16)
    assert t.shape == (12, 16)
    # same column -> same first half (width coordinate), same row -> same second half
    assert torch.equal(t[0, :8], t[4, :8]) and torch.equal(t[0, 8:], t[1, 8:])


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_all_architectures_build_as_timm_vits(name):
    size = ARCHS[name][0] * 4
    enc = build_encoder(name, size)
    assert enc.num_patches == 16 and not enc.pos_embed.requires_grad
    assert enc.cls_token is None and enc.global_pool == "avg"
    out = enc.forward_features(torch.randn(1, 3, size, size))
    assert out.shape == (1, 16, ARCHS[name][1])


def test_img_size_must_be_multiple_of_patch():
    from sdmae.errors import UsageError

    with pytest.raises(UsageError, match="multiple of the patch size"):
        build_encoder("vit_tiny_patch16", 40)


def test_encoder_sees_only_visible_tokens(tiny_overrides):
    cfg, m = make(tiny_overrides, "model.name=vit_tiny_patch8", "model.img_size=32", "method.mask_ratio=0.75")
    batch = batch_for(m, cfg)
    seen = []
    m.encoder.blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    z1, *_ = m.encode_decode(batch["image"], batch["mask"])
    assert seen[0] == (4, 16 - 12, 192)
    # changing pixels of masked patches leaves the encoder output unchanged
    images = batch["image"].clone()
    hidden = unpatchify(batch["mask"][..., None].float().expand(-1, -1, 8 * 8 * 3), 8).bool()
    images[hidden] = torch.randn(int(hidden.sum()))
    z2, *_ = m.encode_decode(images, batch["mask"])
    assert torch.allclose(z1, z2, atol=1e-6)


def test_visible_patch_embedding_equals_convolution(tiny_overrides):
    enc = build_encoder("vit_tiny_patch8", 32)
    x = torch.randn(2, 3, 32, 32)
    ids = torch.arange(16).expand(2, -1)
    conv = enc.patch_embed(x)
    lin = enc.embed_patches(torch.gather(
        x.reshape(2, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 192), 1,
        ids[..., None].expand(-1, -1, 192)))
    assert torch.allclose(conv, lin, atol=1e-5)


def test_decoder_concatenated_order_equals_unshuffled_order(tiny_overrides):
    cfg, m = make(tiny_overrides, "model.name=vit_tiny_patch8", "model.img_size=32")
    dec = m.decoder.eval()
    z = torch.randn(2, 4, 192)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, :12] = True
    keep, hide = split_ids(mask)
    pred, h = dec(z, keep, hide)
    # reference: tokens placed at their own positions (MAE's unshuffle), then the same blocks
    full = dec.mask_token.expand(2, 16, -1).clone()
    full.scatter_(1, keep[..., None].expand(-1, -1, 192), dec.embed(z))
    x = full + dec.pos_embed
    for blk in dec.blocks:
        x = blk(x)
    x = dec.norm(x)
    assert torch.allclose(pred, dec.pred(torch.gather(x, 1, hide[..., None].expand(-1, -1, 192))), atol=1e-5)
    assert torch.allclose(h, torch.gather(x, 1, keep[..., None].expand(-1, -1, 192)), atol=1e-5)


def test_reconstruction_loss_on_masked_patches_only(tiny_overrides):
    cfg, m = make(tiny_overrides, "model.name=vit_tiny_patch8", "model.img_size=32", "method.name=mae")
    batch = batch_for(m, cfg)
    out = m(batch)
    _, _, pred, _, _ = m.encode_decode(batch["image"], batch["mask"])
    assert pred.shape == (4, 12, 192)  # predictions exist at masked positions only
    target = normalize_targets(patchify(batch["image"], 8), "per_channel")[batch["mask"]].reshape(4, 12, -1)
    assert torch.allclose(out["loss"], ((pred - target) ** 2).mean(), atol=1e-6)


def test_distillation_loss_matches_transcription():
    torch.manual_seed(0)
    s, t, c = torch.randn(3, 10), torch.randn(3, 10), torch.randn(1, 10) * 0.1
    loss, probs, _ = distillation_loss(s, t, c, 0.1, 0.04)
    total = 0.0
    for b in range(3):
        zt = [math.exp((t[b, k] - c[0, k]).item() / 0.04) for k in range(10)]
        P = [v / sum(zt) for v in zt]
        zs = [math.exp(s[b, k].item() / 0.1) for k in range(10)]
        logq = [math.log(v / sum(zs)) for v in zs]
        total += -sum(P[k] * logq[k] for k in range(10))
    assert math.isclose(loss.item(), total / 3, rel_tol=1e-4)
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_center_update_formula_on_probs_and_logits(tiny_overrides):
    for on in ("probs", "logits"):
        cfg, m = make(tiny_overrides, f"method.center_on={on}", "method.center_momentum=0.9")
        m.center.fill_(0.5)
        batch = batch_for(m, cfg)
        with torch.no_grad():
            z, h, *_ = m.encode_decode(batch["image"], batch["mask"])
            t = m.teacher_head.forward_mean(h)
            probs = F.softmax((t - 0.5) / 0.04, dim=-1)
            m(batch)
        want = 0.9 * 0.5 + 0.1 * (probs if on == "probs" else t).mean(0, keepdim=True)
        assert torch.allclose(m.center, want, atol=1e-5), on


def test_stop_gradient_option_blocks_teacher_gradients(tiny_overrides):
    for stop in (False, True):
        cfg, m = make(tiny_overrides, "method.p=1.0", f"method.teacher_stop_grad={str(stop).lower()}")
        m(batch_for(m, cfg))["loss"].backward()
        for param in (m.teacher_head.mlp[0].weight, m.decoder.blocks[0].attn.qkv.weight):
            got = param.grad is not None and bool(param.grad.abs().sum() > 0)
            assert got != stop  # with stop-gradient (and p = 1) nothing reaches the teacher branch
        assert m.student_head.mlp[0].weight.grad.abs().sum() > 0


def test_sdmae_with_p_zero_is_mae(tiny_overrides):
    cfg, sd = make(tiny_overrides, "method.p=0")
    _, mae = make(tiny_overrides, "method.name=mae")
    batch = batch_for(sd, cfg)
    # same seed, same construction order: encoder and decoder weights agree
    assert torch.equal(sd.encoder.blocks[0].attn.qkv.weight, mae.encoder.blocks[0].attn.qkv.weight)
    assert torch.allclose(sd(batch)["loss"], mae(batch)["loss"])


def test_sdmae_total_loss_combines_parts(tiny_overrides):
    cfg, m = make(tiny_overrides, "method.p=0.3")
    out = m(batch_for(m, cfg))
    assert torch.allclose(out["loss"].detach(), 0.3 * out["loss_sd"] + 0.7 * out["loss_rec"], atol=1e-6)
    for k in ("teacher_entropy", "student_entropy", "kl"):
        assert torch.isfinite(out[k])
    assert 0 <= out["teacher_entropy"] <= math.log(128) + 1e-4


def test_small_model_overfits_one_batch(tiny_overrides):
    cfg, m = make(tiny_overrides, "model.name=vit_tiny_patch8", "model.img_size=32", "method.name=mae")
    batch = batch_for(m, cfg, n=4)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        loss = m(batch)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
