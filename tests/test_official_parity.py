"""Training exactly as the official SD-MAE code does (issue 12): reconstruction targets on [0, 1] pixels,
q and v attention biases only, the official initialisation. Each reference below is transcribed from
docs/method.md, not taken from the official code."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from sdmae.config import ConfigError, load_config
from sdmae.errors import UsageError
from sdmae.methods import Method, build_method
from sdmae.methods.masking import normalize_targets, patchify, split_ids
from sdmae.train.optim import build_optimizer, param_groups

TINY = ["model.name=vit_tiny_patch16", "model.img_size=64", "model.decoder_depth=1", "model.head_hidden_dim=64",
        "model.head_bottleneck_dim=32", "model.head_out_dim=128", "train.device=cpu"]
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tiny(*extra: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_method(load_config(overrides=TINY + list(extra)))


def reference_targets(images: torch.Tensor, mask: torch.Tensor, p: int) -> torch.Tensor:
    """docs/method.md: undo the ImageNet normalisation, cut (p, p, c) patches, normalise each patch and colour
    channel by its mean and unbiased std + 1e-6, keep the hidden patches in ascending order."""
    x = images.double() * STD.double() + MEAN.double()
    B, C, H, W = x.shape
    out = []
    for b in range(B):
        rows = []
        for n in torch.nonzero(mask[b]).flatten().tolist():
            i, j = divmod(n, W // p)
            patch = x[b, :, i * p:(i + 1) * p, j * p:(j + 1) * p].permute(1, 2, 0).reshape(p * p, C)
            norm = (patch - patch.mean(0)) / (patch.std(0, unbiased=True) + 1e-6)
            rows.append(norm.reshape(-1))
        out.append(torch.stack(rows))
    return torch.stack(out)


def low_contrast_batch(b: int = 2, size: int = 64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    pixels = 0.8 + 0.002 * torch.randn(b, 3, size, size, generator=gen)  # background-like: almost flat
    return (pixels - MEAN) / STD


@pytest.mark.parametrize("kind", ["ordinary", "low_contrast"])
def test_targets_are_normalised_on_unnormalised_pixels(kind):
    method = tiny("method.name=mae")
    images = torch.randn(2, 3, 64, 64) if kind == "ordinary" else low_contrast_batch()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, [1, 4, 9, 15]] = True
    _, ids_mask = split_ids(mask)
    ours = method.targets(images, ids_mask)
    torch.testing.assert_close(ours.double(), reference_targets(images, mask, 16), atol=2e-4, rtol=1e-4)


def test_low_contrast_targets_differ_from_normalising_the_normalised_input():
    """Why item 1 matters: on flat patches the 1e-6 acts on another scale when the input is normalised."""
    method = tiny("method.name=mae")
    images = low_contrast_batch()
    mask = torch.ones(2, 16, dtype=torch.bool)
    _, ids_mask = split_ids(mask)
    old = normalize_targets(patchify(images, 16), "per_channel")
    rel = (method.targets(images, ids_mask) - old).norm() / old.norm()
    assert rel > 1e-4


def reference_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """BEiT-style attention (docs/method.md): qkv = x W^T + [b_q, 0, b_v], softmax(q k^T / sqrt(d)) v, proj."""
    d = attn.qkv.weight.shape[0] // 3
    b = attn.qkv.bias
    qkv = F.linear(x, attn.qkv.weight, torch.cat([b[:d], torch.zeros(d), b[2 * d:]]))
    B, N, _ = x.shape
    q, k, v = qkv.reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attn.proj((w @ v).transpose(1, 2).reshape(B, N, -1))


def k_thirds(method) -> list[torch.Tensor]:
    out = []
    for name, p in method.named_parameters():
        if name.endswith("attn.qkv.bias"):
            d = p.shape[0] // 3
            out.append(p.detach()[d:2 * d])
    return out


def test_k_bias_stays_zero_under_adamw_and_in_copies():
    method = tiny()
    copied = copy.deepcopy(method)  # teachers, compiled copies: the convention must survive a deep copy
    for m in (method, copied):
        opt = build_optimizer(m, 1e-2, 0.05, (0.9, 0.999), torch.device("cpu"))
        for step in range(3):
            gen = torch.Generator().manual_seed(step)
            mask = torch.stack([torch.randperm(16, generator=gen) < 12 for _ in range(4)])
            m({"image": torch.randn(4, 3, 64, 64, generator=gen), "mask": mask})["loss"].backward()
            opt.step()
            opt.zero_grad()
        thirds = k_thirds(m)
        assert len(thirds) == 12 + 1  # encoder and decoder blocks
        assert all(torch.equal(t, torch.zeros_like(t)) for t in thirds)
        q_moved = [p.detach()[: p.shape[0] // 3].abs().max() for n, p in m.named_parameters() if n.endswith("qkv.bias")]
        assert max(q_moved) > 0  # the q and v biases do train


def test_attention_is_the_beit_style_formula_even_with_a_nonzero_k_bias():
    attn = tiny().encoder.blocks[0].attn
    with torch.no_grad():
        attn.qkv.bias.normal_()  # a checkpoint whose k third drifted (earlier versions) gives the same output
    x = torch.randn(2, 5, attn.qkv.in_features)
    torch.testing.assert_close(attn(x), reference_attention(attn, x), atol=1e-5, rtol=1e-5)


def truncated_std(std: float, cut: float) -> float:
    """Std of a normal(0, std) truncated at plus or minus cut * std."""
    phi = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return std * math.sqrt(1 - 2 * cut * phi / mass)


def pooled(method, pattern) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in method.named_parameters() if pattern(n)])


def check_std(values: torch.Tensor, expected: float, tol: float = 0.05) -> None:
    values = values.detach()
    assert abs(float(values.std()) / expected - 1) < tol, (float(values.std()), expected)


def test_official_initialisation_matches_the_official_initialisers():
    m = build_method(load_config(overrides=["model.name=vit_small_patch16", "model.img_size=96", "train.device=cpu"]))
    fan_patch = 3 * 16 * 16
    pe = m.encoder.patch_embed.proj
    check_std(pe.weight, 1 / math.sqrt(3 * fan_patch))  # Conv2d default: kaiming_uniform(a=sqrt(5))
    check_std(pe.bias, 1 / math.sqrt(3 * fan_patch), tol=0.1)  # uniform(+-1/sqrt(fan_in)), 384 values
    check_std(m.decoder.embed.weight, 1 / math.sqrt(3 * 384))  # Linear default: never re-initialised
    check_std(m.decoder.mask_token, truncated_std(0.02, 1.0), tol=0.15)  # 192 values
    assert float(m.decoder.mask_token.detach().abs().max()) <= 0.02
    heads = pooled(m, lambda n: "_head.mlp" in n and n.endswith("weight"))
    check_std(heads, truncated_std(0.02, 1.0))
    assert float(heads.abs().max()) <= 0.02
    qkv = m.encoder.blocks[0].attn.qkv.weight
    check_std(qkv, math.sqrt(2 / (384 + 3 * 384)))  # xavier-uniform
    check_std(m.decoder.pred.weight, math.sqrt(2 / (192 + 768)))
    assert torch.count_nonzero(pooled(m, lambda n: "blocks" in n and n.endswith(".bias"))) == 0


def test_mae_initialisation_is_available():
    m = tiny("model.init=mae")
    pe = m.encoder.patch_embed.proj
    check_std(pe.weight, math.sqrt(2 / (192 + 3 * 16 * 16)))  # xavier over the flattened patch
    assert torch.count_nonzero(pe.bias) == 0
    check_std(m.decoder.embed.weight, math.sqrt(2 / (192 + 192)))
    assert float(pooled(m, lambda n: "_head.mlp" in n and n.endswith("weight")).abs().max()) > 0.02  # untruncated


def test_unknown_init_is_a_config_error():
    from sdmae.config import ConfigError

    with pytest.raises(ConfigError, match="model.init"):
        load_config(overrides=["model.init=xavier"])


@pytest.mark.parametrize("extra, unused", [((), False), (("method.p=0",), True),
                                           (("method.teacher_stop_grad=true",), True),
                                           (("method.name=mae",), False), (("method.name=dino",), False)])
def test_methods_declare_what_ddp_needs(extra, unused):
    m = tiny(*extra)
    assert isinstance(m, Method)
    assert m.has_unused_parameters() is unused
    assert m.can_reconstruct is (m.name in ("sdmae", "mae"))


def test_declared_unused_parameters_are_the_ones_without_gradients():
    """has_unused_parameters() says true exactly when a step leaves trainable parameters without a gradient."""
    for extra in ((), ("method.p=0",), ("method.teacher_stop_grad=true",)):
        m = tiny(*extra)
        mask = torch.stack([torch.randperm(16) < 12 for _ in range(2)])
        m({"image": torch.randn(2, 3, 64, 64), "mask": mask})["loss"].backward()
        missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
        assert bool(missing) is m.has_unused_parameters(), (extra, missing[:3])


@pytest.mark.parametrize("norm", ["per_channel", "none"])
def test_loss_rec_rel_is_the_loss_over_predicting_the_batch_mean_target(norm):
    """loss_rec_rel = MSE / MSE of predicting, for every masked patch, the mean target of the batch; a decoder
    that predicts exactly that mean scores 1."""
    method = tiny("method.name=mae", f"method.target_norm={norm}")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, 64, 64, generator=gen)
    mask = torch.stack([torch.randperm(16, generator=gen) < 12 for _ in range(3)])
    out = method({"image": images, "mask": mask})
    _, ids_mask = split_ids(mask)
    target = method.targets(images, ids_mask)
    baseline = float(((target - target.reshape(-1, target.shape[-1]).mean(0)) ** 2).mean())
    assert float(out["loss_rec_rel"]) == pytest.approx(float(out["loss_rec"]) / baseline, rel=1e-5)
    real = method.encode_decode

    def mean_predictor(x, m, num_mask=None):
        z, h, _, ids_keep, ids_m = real(x, m, num_mask)
        t = method.targets(x, ids_m)
        return z, h, t.mean(dim=(0, 1)).expand_as(t), ids_keep, ids_m

    method.encode_decode = mean_predictor
    assert float(method({"image": images, "mask": mask})["loss_rec_rel"]) == pytest.approx(1.0, rel=1e-5)


def test_clean_targets_are_reconstructed_from_the_jittered_input():
    """With "image_clean" in the batch (`data.aug.jitter_targets=false`) the encoder reads "image" and the loss
    compares the decoder's output with the clean twin's targets."""
    torch.manual_seed(0)
    method = tiny("method.name=mae", "method.target_norm=joint")
    gen = torch.Generator().manual_seed(1)
    images, clean = torch.randn(2, 3, 3, 64, 64, generator=gen)
    mask = torch.stack([torch.randperm(16, generator=gen) < 12 for _ in range(3)])
    with torch.no_grad():
        _, _, pred, _, ids_mask = method.encode_decode(images, mask)
        out = method({"image": images, "image_clean": clean, "mask": mask})
        expected = torch.nn.functional.mse_loss(pred, method.targets(clean, ids_mask))
        jittered = method({"image": images, "mask": mask})["loss_rec"]
    assert float(out["loss_rec"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(jittered) != pytest.approx(float(expected), rel=1e-3)


@pytest.mark.parametrize("name", ["mae", "sdmae", "mocov3"])
def test_frozen_patch_embed_keeps_its_random_draw(name):
    """`method.frozen_patch_embed=true` (MoCo v3's random patch projection): the patch embedding gets no gradient
    and no optimiser slot; everything else of the encoder trains."""
    m = tiny(f"method.name={name}", "method.frozen_patch_embed=true")
    frozen = {id(p) for p in m.encoder.patch_embed.parameters()}
    assert frozen and not any(p.requires_grad for p in m.encoder.patch_embed.parameters())
    assert not frozen & {id(p) for g in param_groups(m, 0.05) for p in g["params"]}
    if name == "mocov3":
        return
    mask = torch.stack([torch.randperm(16) < 12 for _ in range(2)])
    m({"image": torch.randn(2, 3, 64, 64), "mask": mask})["loss"].backward()
    assert all(p.grad is None for p in m.encoder.patch_embed.parameters())
    assert all(p.grad is not None for p in m.encoder.blocks.parameters())


@pytest.mark.parametrize("name", ["mae", "sdmae"])
def test_frozen_blocks_keep_their_random_draw(name):
    """`method.frozen_blocks=1` with the frozen patch embedding: the input end up to the first block keeps its draw
    through an optimiser step; the later blocks and the decoder move."""
    m = tiny(f"method.name={name}", "method.frozen_patch_embed=true", "method.frozen_blocks=1")
    before = copy.deepcopy(m.state_dict())
    opt = torch.optim.AdamW(param_groups(m, 0.05), lr=1e-2)  # the project's groups: frozen weights have no slot
    mask = torch.stack([torch.randperm(16) < 12 for _ in range(2)])
    m({"image": torch.randn(2, 3, 64, 64), "mask": mask})["loss"].backward()
    opt.step()
    after = m.state_dict()
    moved = {k for k in after if not torch.equal(after[k], before[k])}
    assert not {k for k in moved if k.startswith(("encoder.patch_embed.", "encoder.blocks.0."))}
    assert any(k.startswith("encoder.blocks.1.") for k in moved) and any(k.startswith("decoder.") for k in moved)


def test_frozen_blocks_beyond_the_depth_is_a_usage_error():
    with pytest.raises(UsageError, match="method.frozen_blocks"):
        tiny("method.name=mae", "method.frozen_blocks=99")


@pytest.mark.parametrize("keys", [("method.name=dino", "method.frozen_patch_embed=true"),
                                  ("method.name=mocov3", "method.frozen_blocks=2"),
                                  ("method.name=mae", "method.frozen_blocks=-1")])
def test_freezing_keys_a_method_ignores_are_refused(keys):
    with pytest.raises(ConfigError, match="method.frozen_"):
        load_config(overrides=list(keys))
