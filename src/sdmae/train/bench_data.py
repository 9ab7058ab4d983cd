"""`sdmae bench data`: the pre-training input pipeline alone, timed up to batches ready for the model.

It builds exactly what `sdmae pretrain` builds (sources, the method's per-sample function with its masks,
the global-batch sampler, the loader with `data.num_workers` workers) and times the batches after
`move_batch`, i.e. on the training device, augmented and normalised. No model runs. On a CPU the main
process keeps one thread: the other cores belong to the workers, as they would in a data-bound run.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from sdmae.config import Config
from sdmae.data.loader import GlobalBatchSampler, PretrainDataset, build_loader, crop_on_device
from sdmae.data.sources import open_sources
from sdmae.methods import build_method
from sdmae.train.distributed import pick_device
from sdmae.data.batch import move_batch


def bench_data(cfg: Config, data: Optional[Sequence[str]], batches: int = 80, warmup: int = 2) -> dict:
    device = pick_device(cfg.train.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    source = open_sources(data, cfg.data)
    sample_fn = build_method(cfg).sample_fn()
    arrays = crop_on_device(source, cfg.data.aug, device)
    dataset = PretrainDataset(source, sample_fn, cfg.train.seed, arrays=arrays)
    b = cfg.data.batch_size
    sampler = GlobalBatchSampler(len(dataset), b, 1, 0, cfg.train.seed, start=0, total=warmup + batches)
    loader = iter(build_loader(dataset, sampler, cfg.data.num_workers, pin=device.type == "cuda"))
    for _ in range(warmup):
        move_batch(next(loader), device, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for batch in loader:
        x = move_batch(batch, device, cfg)
        n += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images_per_s": round(n / dt, 1), "images": n, "seconds": round(dt, 3), "batch_size": b,
            "num_workers": cfg.data.num_workers, "img_size": cfg.model.img_size, "tiles": len(source),
            "source": type(source).__name__, "crop_on": "device" if arrays else "workers",
            "device": str(device), "shape": list(x["image"].shape)}
