"""Augmentation: reproducible per (seed, epoch, index), independent of workers, worker and device paths agree,
stain and colour jitter keep shape and range."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.cli import main
from sdmae.config import AugConfig, DataConfig, load_config
from sdmae.data.batch import finish_images, move_batch
from sdmae.data.loader import GlobalBatchSampler, PretrainDataset, build_loader, crop_on_device
from sdmae.data.packed import write_pack
from sdmae.data.sources import open_sources
from sdmae.data.stain import hed_jitter, hed_jitter_pil, hed_to_rgb, rgb_to_hed
from sdmae.data.transforms import DeviceTile, PretrainTransform, sample_generator
from test_data_sources import write_pcam


def tile(seed=0, size=32) -> np.ndarray:
    """A smooth tile (interpolation differences stay small on it)."""
    y, x = np.mgrid[0:size, 0:size] / size
    rng = np.random.default_rng(seed)
    a, b, c = rng.uniform(0.5, 3, 3)
    img = np.stack([np.sin(a * x + b * y), np.cos(b * x * y + c), np.sin(c * x - a * y)], -1)
    return ((img + 1) * 127.5).round().astype(np.uint8)


def batch(arrays, aug, size, device_tiles):
    items = [PretrainTransform(aug, size)(a.view(DeviceTile) if device_tiles else a, sample_generator(3, 1, i))
             for i, a in enumerate(arrays)]
    images = torch.stack([it["image"] for it in items])
    return finish_images(images, aug, torch.stack([it["image_aug"] for it in items]), size, crops=device_tiles)


def test_generator_depends_only_on_seed_epoch_index():
    draw = lambda *k: torch.rand(4, generator=sample_generator(*k))  # noqa: E731
    assert torch.equal(draw(0, 1, 2), draw(0, 1, 2))
    assert len({tuple(draw(*k).tolist()) for k in [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 1, 3), (0, 2, 1)]}) == 5


def test_transform_reproducible_and_steps_switchable():
    aug, img = AugConfig(), tile()
    a = PretrainTransform(aug, 24)(img, sample_generator(0, 0, 7))
    b = PretrainTransform(aug, 24)(Image.fromarray(img), sample_generator(0, 0, 7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_aug"], b["image_aug"])
    assert a["image"].shape == (3, 24, 24) and a["image"].dtype == torch.uint8
    off = PretrainTransform(AugConfig(crop="none", hflip=False, vflip=False, rot90=False), 32)
    out = off(img, sample_generator(0, 0, 7))
    assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), img)
    # switching steps off does not shift the generator for what comes after (the mask)
    g1, g2 = sample_generator(0, 0, 7), sample_generator(0, 0, 7)
    PretrainTransform(AugConfig(hflip=False, rot90=False), 24)(img, g1)
    PretrainTransform(aug, 24)(img, g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_flips_and_turns_match_pil():
    img = tile(1)
    cfg = AugConfig(crop="none", hflip=True, vflip=True, rot90=True)
    for i in range(12):
        p = PretrainTransform(cfg, 32)(img, sample_generator(0, 0, i))["image_aug"]
        assert p[1:5].tolist() == [0, 0, 32, 32]
        out = PretrainTransform(cfg, 32)(img, sample_generator(0, 0, i))["image"].permute(1, 2, 0).numpy()
        u = torch.rand(12, generator=sample_generator(0, 0, i), dtype=torch.float64).tolist()
        ref = Image.fromarray(img)
        if u[0] < 0.5:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        if u[1] < 0.5:
            ref = ref.transpose(Image.FLIP_TOP_BOTTOM)
        turns = min(int(u[2] * 4), 3)
        if turns:
            ref = ref.transpose((Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[turns - 1])
        assert np.array_equal(out, np.asarray(ref))


def test_device_path_matches_worker_path():
    arrays = [tile(k) for k in range(16)]
    exact = AugConfig(crop="none")  # flips and turns only: the same pixels (normalised in another order)
    assert torch.allclose(batch(arrays, exact, 32, True), batch(arrays, exact, 32, False), atol=1e-5)
    crop = AugConfig(crop="mae")  # crops: same boxes, slightly different resampling (roi_align vs PIL-like)
    dev, work = batch(arrays, crop, 24, True), batch(arrays, crop, 24, False)
    assert dev.shape == work.shape == (16, 3, 24, 24)
    assert (dev - work).abs().mean() < 0.05  # in normalised units (~1/80 of the pixel range)


def test_stain_jitter_keeps_shape_and_range():
    x = torch.from_numpy(tile(2)).permute(2, 0, 1)[None].double() / 255
    assert torch.allclose(hed_to_rgb(rgb_to_hed(x)), x, atol=2e-6)  # identity (0 clamps to 1e-6)
    alpha = torch.tensor([[1.2, 0.8, 1.0]], dtype=torch.float64)
    beta = torch.tensor([[0.05, -0.05, 0.0]], dtype=torch.float64)
    y = hed_jitter(x, alpha, beta)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and (y - x).abs().mean() > 0.01
    pil = hed_jitter_pil(Image.fromarray(tile(2)), 0.1, sample_generator(0, 0, 0))
    assert pil.size == (32, 32) and pil.mode == "RGB"
    aug = AugConfig(hed_jitter=0.2, color_jitter=0.4)
    out = batch([tile(k) for k in range(8)], aug, 32, False)
    plain = batch([tile(k) for k in range(8)], AugConfig(), 32, False)
    lo = (0 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    hi = (1 - torch.tensor(aug.mean)) / torch.tensor(aug.std)
    assert out.shape == plain.shape and not torch.allclose(out, plain)
    assert (out >= lo.view(3, 1, 1) - 1e-5).all() and (out <= hi.view(3, 1, 1) + 1e-5).all()


@pytest.mark.parametrize("device_tiles", [False, True])
def test_clean_targets_share_geometry_not_colour(device_tiles):
    """`data.aug.jitter_targets=false`: "image_clean" is the input's crop, flips and turns without its colour jitter."""
    arrays, jitter = [tile(k) for k in range(8)], AugConfig(hed_jitter=0.2, color_jitter=0.4)
    items = [PretrainTransform(jitter, 24)(a.view(DeviceTile) if device_tiles else a, sample_generator(3, 1, i))
             for i, a in enumerate(arrays)]
    raw = {"image": torch.stack([it["image"] for it in items]),
           "image_aug": torch.stack([it["image_aug"] for it in items])}
    cfg = load_config(None, ["model.img_size=24", "data.aug.hed_jitter=0.2", "data.aug.color_jitter=0.4"])
    assert "image_clean" not in move_batch(raw, torch.device("cpu"), cfg, device_tiles)  # default: MAE's targets
    cfg = load_config(None, ["model.img_size=24", "data.aug.hed_jitter=0.2", "data.aug.color_jitter=0.4",
                             "data.aug.jitter_targets=false"])
    out = move_batch(raw, torch.device("cpu"), cfg, device_tiles)
    plain = finish_images(raw["image"], AugConfig(), raw["image_aug"], 24, device_tiles)
    jittered = finish_images(raw["image"], cfg.data.aug, raw["image_aug"], 24, device_tiles)
    assert torch.allclose(out["image_clean"], plain, atol=1e-5) and torch.equal(out["image"], jittered)
    assert (out["image"] - out["image_clean"]).abs().mean() > 0.05


def test_crop_on_device_choice(tmp_path):
    write_pcam(tmp_path, splits=("test",))
    fixed = open_sources([str(tmp_path)], DataConfig())
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert crop_on_device(fixed, AugConfig(), cuda) and not crop_on_device(fixed, AugConfig(), cpu)
    assert crop_on_device(fixed, AugConfig(crop_on="device"), cpu)
    assert not crop_on_device(fixed, AugConfig(crop_on="workers"), cuda)


def loader_items(ds, workers):
    sampler = GlobalBatchSampler(len(ds), 4, 1, 0, 5, start=0, total=6)
    return [b for b in build_loader(ds, sampler, workers, False)]


@pytest.mark.parametrize("device_tiles", [False, True])
def test_batches_do_not_depend_on_worker_count(tmp_path, device_tiles):
    write_pcam(tmp_path, splits=("train",), n=12, side=32)
    cfg = load_config(None, ["model.name=vit_tiny_patch16", "model.img_size=32", "data.aug.hed_jitter=0.05"])
    from sdmae.methods import build_method

    ds = PretrainDataset(open_sources([str(tmp_path)], cfg.data), build_method(cfg).sample_fn(), 5,
                         arrays=device_tiles)
    zero, two = loader_items(ds, 0), loader_items(ds, 2)
    for a, b in zip(zero, two):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = finish_images(zero[0]["image"], cfg.data.aug, zero[0]["image_aug"], 32, crops=device_tiles)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32


def test_bench_data_prints_json(tmp_path, capsys):
    write_pcam(tmp_path / "pcam", splits=("train",), n=40, side=32)
    write_pack(open_sources([str(tmp_path / "pcam")], DataConfig()), tmp_path / "b.pack")
    assert main(["bench", "data", "--data", str(tmp_path / "b.pack"), "--batches", "3", "--warmup", "1",
                 "--set", "model.name=vit_tiny_patch16", "model.img_size=32", "data.batch_size=8",
                 "data.num_workers=0", "train.device=cpu"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["images_per_s"] > 0 and r["images"] == 24 and r["shape"] == [8, 3, 32, 32]


def test_hed_conversion_matches_scikit_image():
    color = pytest.importorskip("skimage.color")
    img = tile(3)
    ours = rgb_to_hed(torch.from_numpy(img).permute(2, 0, 1).double() / 255).permute(1, 2, 0).numpy()
    ref = color.rgb2hed(img)  # scikit-image clips concentrations at 0; ours keeps them for an exact inverse
    assert np.allclose(np.maximum(ours, 0), ref, atol=1e-12)
    back = hed_to_rgb(torch.from_numpy(ref).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    assert np.allclose(back, color.hed2rgb(ref), atol=1e-12)
