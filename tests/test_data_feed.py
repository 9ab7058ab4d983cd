"""The device-crop feed: batches gathered whole in the workers are exactly the per-sample batches of before."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data._utils.collate import default_collate

from sdmae.config import load_config
from sdmae.data.base import Source, UnreadableTile
from sdmae.data.loader import GlobalBatchSampler, PretrainDataset, build_loader
from sdmae.data.packed import PackedSource, write_pack
from sdmae.methods import build_method

FIELDS = ("image", "image_aug", "mask", "index")


class Synthetic(Source):
    """24 fixed-size random tiles; `broken` indices are unreadable."""

    tile_shape = (40, 40)

    def __init__(self, broken=()):
        self.broken = set(broken)

    def __len__(self) -> int:
        return 24

    def read_array(self, i: int) -> np.ndarray:
        if i in self.broken:
            raise UnreadableTile(self.path(i), "broken on purpose")
        return np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)

    def path(self, i: int) -> str:
        return f"t{i}"


def dataset(source, method="mae") -> PretrainDataset:
    cfg = load_config(overrides=[f"method.name={method}", "model.name=vit_tiny_patch16", "model.img_size=32",
                                 "data.aug.hed_jitter=0.05", "data.aug.color_jitter=0.1"])
    return PretrainDataset(source, build_method(cfg).sample_fn(), 3, arrays=True)


def per_sample(ds, keys) -> dict:
    return default_collate([ds[k] for k in keys])


def assert_same(a: dict, b: dict) -> None:
    for k in FIELDS:
        assert torch.equal(a[k], b[k]), k


def test_per_sample_batches_are_those_of_before():
    """A digest of masks, crop parameters and tiles taken with the code before the batched feed (torch 2.14)."""
    for method in ("mae", "sdmae"):
        ds, h = dataset(Synthetic(), method), hashlib.sha256()
        for epoch in (0, 5):
            b = per_sample(ds, [(epoch, i) for i in range(0, 24, 3)])
            for k in FIELDS:
                h.update(b[k].contiguous().numpy().tobytes())
        assert h.hexdigest()[:16] == "dc58ad365c582017", method


def test_whole_batch_reads_equal_per_sample_reads_with_an_unreadable_tile():
    ds = dataset(Synthetic(broken={4}))
    keys = [(2, i) for i in (7, 4, 0, 23, 5)]
    got = ds.__getitems__(keys)
    assert got["image"].shape == (5, 3, 40, 40)
    assert got["image"].is_contiguous(memory_format=torch.channels_last)  # the (B, H, W, 3) buffer itself
    assert_same(got, per_sample(ds, keys))
    assert torch.equal(got["image"][1], got["image"][4])  # tile 4 replaced by the next readable one, 5


def test_workers_reusing_their_buffers_hand_over_the_right_batches(tmp_path):
    """Two workers over more batches than their buffer rings hold: every batch, while it is the consumer's,
    equals the in-process reference (a buffer rewritten too early would show here)."""
    write_pack(Synthetic(), tmp_path / "s.pack")
    ds = dataset(PackedSource(tmp_path / "s.pack"))
    sampler = GlobalBatchSampler(len(ds), 4, 1, 0, 3, start=0, total=40)
    ref = list(GlobalBatchSampler(len(ds), 4, 1, 0, 3, start=0, total=40))
    loader = build_loader(ds, sampler, num_workers=2, pin=False)
    n = 0
    for keys, batch in zip(ref, loader):
        assert_same(batch, per_sample(ds, keys))
        n += 1
    assert n == 40 and ds.buffer_slots >= 3


@pytest.mark.parametrize("host_only", [False, True])
def test_bench_data_host_only_reports_the_feed(tmp_path, host_only):
    from sdmae.train.bench_data import bench_data

    write_pack(Synthetic(), tmp_path / "s.pack")
    cfg = load_config(overrides=["model.name=vit_tiny_patch16", "model.img_size=32", "data.batch_size=4",
                                 "data.num_workers=1", "train.device=cpu"])
    out = bench_data(cfg, [str(tmp_path / "s.pack")], batches=3, host_only=host_only)
    assert out["images"] == 12 and out["shape"] == [4, 3, 32 if not host_only else 40, 32 if not host_only else 40]
    assert ("host_only" in out) == host_only and out["crop_on"] == ("device" if host_only else "workers")


def test_multi_view_methods_get_the_tile_itself_in_whole_batch_reads():
    ds = dataset(Synthetic(), "dino")
    keys = [(1, i) for i in (3, 0, 9)]
    got, want = ds.__getitems__(keys), per_sample(ds, keys)
    assert got["tile"].shape == (3, 40, 40, 3) and "views" not in got
    for k in ("tile", "views_aug", "local_aug", "index"):
        assert torch.equal(got[k], want[k]), k
