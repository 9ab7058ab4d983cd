"""`sdmae bench data`: the pre-training input pipeline alone, timed up to batches ready for the model.

It builds exactly what `sdmae pretrain` builds (sources, the method's per-sample function with its masks,
the global-batch sampler, the loader with `data.num_workers` workers) and times the batches after
`move_batch`, i.e. on the training device, augmented and normalised. No model runs. On a CPU the main
process keeps one thread: the other cores belong to the workers, as they would in a data-bound run.

`host_only` times the feed of the device-crop path instead: the batches as the training process receives
them from the workers (uint8 tiles, masks, crop parameters; in pinned memory when CUDA is present), with
no device-side work. That is what a GPU run asks of the host, measured on any machine.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from sdmae.config import Config
from sdmae.data.batch import move_batch
from sdmae.data.loader import PREFETCH, GlobalBatchSampler, PretrainDataset, build_loader, crop_on_device
from sdmae.data.sources import open_sources
from sdmae.errors import UsageError
from sdmae.methods import build_method
from sdmae.train.distributed import pick_device


def bench_data(cfg: Config, data: Optional[Sequence[str]], batches: int = 80, warmup: Optional[int] = None,
               host_only: bool = False) -> dict:
    """`warmup` (None: 2 + what it takes every worker to allocate its ring of tile buffers, a one-off cost
    like starting the workers) batches run untimed first."""
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    source = open_sources(data, cfg.data)
    if host_only and source.tile_shape is None:
        raise UsageError("--host-only times the device-crop feed, which needs fixed-size tiles (a packed folder, "
                         "HDF5, slides); this --data has tiles of several sizes: pack it with `sdmae data pack`")
    sample_fn = build_method(cfg).sample_fn()
    arrays = True if host_only else crop_on_device(source, cfg.data.aug, device)
    dataset = PretrainDataset(source, sample_fn, cfg.train.seed, arrays=arrays)
    b = cfg.data.batch_size
    if warmup is None:
        warmup = 2 + (cfg.data.num_workers * (PREFETCH + 2) if arrays else 0)
    sampler = GlobalBatchSampler(len(dataset), b, 1, 0, cfg.train.seed, start=0, total=warmup + batches)
    pin = torch.cuda.is_available() if host_only else device.type == "cuda"
    loader = iter(build_loader(dataset, sampler, cfg.data.num_workers, pin=pin))
    finish = (lambda batch: batch) if host_only else (lambda batch: move_batch(batch, device, cfg, arrays))
    for _ in range(warmup):
        finish(next(loader))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        x = finish(batch)
        n += len(batch["index"])
    if device.type == "cuda" and not host_only:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"images_per_s": round(n / dt, 1), "images": n, "seconds": round(dt, 3), "batch_size": b,
           "num_workers": cfg.data.num_workers, "img_size": cfg.model.img_size, "tiles": len(source),
           "source": type(source).__name__, "crop_on": "device" if arrays else "workers",
           "device": "host" if host_only else str(device), "shape": list(next(x[k] for k in ("image", "views", "tile") if k in x).shape), "warmup_batches": warmup}
    if host_only:
        out["host_only"] = ("batches as the training process receives them from the workers (uint8 tiles, masks, "
                            f"crop parameters{', pinned' if pin else ''}), no device-side work")
    return out
