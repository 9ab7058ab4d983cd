"""The ViT pyramid, UperNet, the detector, sliding windows, layer decay and the schedule."""
import math

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from sdmae.config import load_eval_config
from sdmae.dense.backbone import ViTPyramid, layer_decay_groups
from sdmae.dense.trainer import lr_factor
from sdmae.dense.upernet import SegModel
from sdmae.dense.windows import sliding_window, window_starts
from sdmae.errors import UsageError
from sdmae.models.vit import build_encoder


@pytest.fixture(scope="module")
def pyramid():
    torch.manual_seed(0)
    return ViTPyramid(build_encoder("vit_tiny_patch16", 64), [1, 3, 5, 7]).eval()


@pytest.mark.parametrize("h,w", [(64, 64), (128, 96), (48, 80), (32, 32)])
def test_pyramid_shapes_at_any_multiple_of_the_patch(pyramid, h, w):
    with torch.no_grad():
        feats = pyramid(torch.randn(1, 3, h, w))
    assert list(feats) == ["0", "1", "2", "3"]
    for (name, f), stride in zip(feats.items(), (4, 8, 16, 32)):
        assert f.shape == (1, 192, h // stride, w // stride), name


def test_pyramid_for_patch_8():
    p = ViTPyramid(build_encoder("vit_tiny_patch8", 32), [0, 1, 2, 3])
    with torch.no_grad():
        feats = p(torch.randn(2, 3, 64, 32))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(16, 8), (8, 4), (4, 2), (2, 1)]


def test_pyramid_rejects_sizes_and_blocks(pyramid):
    with pytest.raises(ValueError, match="multiple of the patch size"):
        pyramid(torch.randn(1, 3, 40, 64))
    with pytest.raises(UsageError, match="out_indices"):
        ViTPyramid(build_encoder("vit_tiny_patch16", 32), [3, 5, 7, 12])


def test_position_table_is_resampled_like_timm_and_native_size_unchanged(pyramid):
    """At the pre-training grid the fixed table is used as is; elsewhere it is timm's bicubic resampling of it
    (no prefix tokens: the encoder has no class token)."""
    enc = pyramid.encoder
    tokens = torch.zeros(1, 4, 4, 192)
    assert torch.equal(enc._pos_embed(tokens)[0], enc.pos_embed[0])
    bigger = enc._pos_embed(torch.zeros(1, 6, 8, 192))
    expected = resample_abs_pos_embed(enc.pos_embed, new_size=(6, 8), old_size=(4, 4), num_prefix_tokens=0)
    assert bigger.shape == (1, 48, 192) and torch.allclose(bigger, expected)
    assert not enc.pos_embed.requires_grad  # the sine-cosine table stays fixed while fine-tuning


def test_segmodel_outputs_and_aux_head():
    torch.manual_seed(0)
    model = SegModel(ViTPyramid(build_encoder("vit_tiny_patch16", 32)), channels=16)
    x = torch.randn(2, 3, 64, 96)
    main, aux = model.train()(x)
    assert main.shape == aux.shape == (2, 2, 64, 96)
    assert model.eval()(x).shape == (2, 2, 64, 96)
    assert SegModel(ViTPyramid(build_encoder("vit_tiny_patch16", 32)), 16, aux=False).aux_head is None


def test_sliding_window_equals_whole_image_when_one_window_fits():
    torch.manual_seed(0)
    model = SegModel(ViTPyramid(build_encoder("vit_tiny_patch16", 32)), channels=16).eval()
    x = torch.randn(3, 64, 64)
    with torch.no_grad():
        whole = model(x[None])[0]
    assert torch.allclose(sliding_window(model, x, window=64, overlap=0.5), whole, atol=1e-5)


def test_sliding_window_averages_overlaps_exactly():
    """A per-pixel function gives the same output from any overlapping windows as on the whole image;
    smaller images are padded and cropped back."""
    conv = torch.nn.Conv2d(3, 2, 1)
    x = torch.randn(3, 100, 70)
    with torch.no_grad():
        whole = conv(x[None])[0]
        assert torch.allclose(sliding_window(conv, x, 32, 0.33, batch_size=5), whole, atol=1e-6)
        small = torch.randn(3, 20, 30)
        assert torch.allclose(sliding_window(conv, small, 32, 0.5), conv(small[None])[0], atol=1e-6)


def test_window_starts_cover_the_image_with_overlap():
    starts = window_starts(1000, 256, 1 / 3)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(0 < b - a <= round(256 * 2 / 3) for a, b in zip(starts, starts[1:]))
    assert window_starts(256, 256, 0.5) == [0] and window_starts(100, 256, 0.5) == [0]
    assert window_starts(512, 256, 0.0) == [0, 256]


def test_layer_decay_groups():
    model = SegModel(ViTPyramid(build_encoder("vit_tiny_patch16", 32)), channels=16)
    groups = layer_decay_groups(model, "backbone.encoder", 0.05, 0.65)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    enc = model.backbone.encoder
    assert scale[id(enc.blocks[11].mlp.fc1.weight)] == pytest.approx(0.65)
    assert scale[id(enc.blocks[0].attn.qkv.weight)] == pytest.approx(0.65 ** 12)
    assert scale[id(enc.patch_embed.proj.weight)] == pytest.approx(0.65 ** 13)
    assert scale[id(model.head.classifier[1].weight)] == 1.0
    assert decay[id(enc.blocks[0].norm1.weight)] == 0.0 and decay[id(model.head.classifier[1].bias)] == 0.0
    assert decay[id(model.head.classifier[1].weight)] == 0.05
    assert id(enc.pos_embed) not in scale  # frozen
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == n_trainable


def test_schedule_warmup_then_poly_or_cosine():
    cfg = load_eval_config(["eval.dense.iters=110", "eval.dense.warmup_iters=10"]).dense
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == 1.0
    assert lr_factor(60, cfg) == pytest.approx(0.5)  # poly, power 1: linear to 0 over the last 100
    assert lr_factor(110, cfg) == 0.0
    cos = load_eval_config(["eval.dense.iters=110", "eval.dense.warmup_iters=10", "eval.dense.schedule=cosine",
                            "eval.dense.min_lr=1e-5", "eval.dense.lr=1e-4"]).dense
    assert lr_factor(60, cos) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(110, cos) == pytest.approx(0.1)


def test_detector_trains_and_predicts_on_crops():
    from sdmae.dense.detect import build_detector

    torch.manual_seed(0)
    cfg = load_eval_config(["eval.dense.crop_size=64", "eval.dense.det.proposals=50",
                            "eval.dense.det.roi_samples=16"]).dense
    model = build_detector(build_encoder("vit_tiny_patch16", 32), cfg, [0.5] * 3, [0.25] * 3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 20.0, 18.0]]), "labels": torch.ones(1, dtype=torch.int64)},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(images, targets)
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    assert model.backbone.body.encoder.blocks[0].attn.qkv.weight.grad is not None
    with torch.no_grad():
        out = model.eval()(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
