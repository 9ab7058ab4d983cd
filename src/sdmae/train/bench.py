"""`sdmae bench train`: times the training step of a config on synthetic input and relates it to the hardware.

The step is the loop's own (`sdmae.train.step.Stepper`: device-side batch finishing, forward under autocast,
backward, optimiser step), on batches made by the method's own per-sample function from random tiles, so
any method and any config key can be timed. FLOPs are counted by PyTorch's FlopCounterMode (matmuls,
convolutions, attention; forward + backward), and the device's dense matmul rate is measured in the same
process and precision, so MFU = achieved FLOP/s / measured matmul FLOP/s (measured, not a datasheet peak).
"""
from __future__ import annotations

import functools
import json
import platform
import resource
import sys
import time
from typing import Optional

import numpy as np
import torch
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from sdmae.config import Config, load_config
from sdmae.errors import UsageError
from sdmae.methods import build_method
from sdmae.train.distributed import pick_device
from sdmae.data.batch import move_batch
from sdmae.train.optim import build_optimizer
from sdmae.train.step import AMP, Stepper, compile_blocks, resolve_precision


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def matmul_rate(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """Best FLOP/s of a large square matmul in `dtype` (fp32 follows torch's TF32 setting, like training); measured
    once per process."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    synchronize(device)
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        reps = 10 if device.type == "cuda" else 1
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        synchronize(device)
        dt = time.perf_counter() - t
        spent += dt
        best = min(best, dt / reps)
    return 2 * n ** 3 / best


def synthetic_batch(method, cfg: Config, seed: int) -> dict:
    """A batch as the data loader would deliver it: the method's sample function on random uint8 tiles."""
    fn = method.sample_fn()
    rng = np.random.default_rng(seed)
    size = cfg.model.img_size
    items = []
    for i in range(cfg.data.batch_size):
        gen = torch.Generator().manual_seed(seed * 100003 + i)
        tile = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        items.append(fn(tile, gen))
    return default_collate(items)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


def count_flops(stepper: Stepper, batch: dict) -> float:
    """FLOPs of one forward + backward (the optimiser step does no matmuls); gradients are discarded."""
    counter = FlopCounterMode(display=False)
    with counter:
        stepper.forward_backward(batch)
    stepper.opt.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bench_train(cfg: Config, steps: int = 10, warmup: int = 3) -> dict:
    """Times `steps` optimiser steps after `warmup` untimed ones; returns the figures `sdmae bench train` prints."""
    if steps < 1 or warmup < 0:
        raise UsageError(f"--steps must be at least 1 and --warmup at least 0, got {steps} and {warmup}")
    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg, device)
    torch.manual_seed(cfg.train.seed)
    method = build_method(cfg).to(device)
    method.train()
    bs = cfg.data.batch_size
    lr = cfg.optim.base_lr * bs / 256
    opt = build_optimizer(method, lr, cfg.optim.weight_decay, cfg.optim.betas, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    stepper = Stepper(method, opt, scaler, precision, device, clip_grad=cfg.optim.clip_grad)
    batches = [synthetic_batch(method, cfg, s) for s in range(2)]
    if device.type == "cuda":  # as the loader delivers them: pinned, so the copies are asynchronous
        batches = [{k: v.pin_memory() if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
    total = warmup + steps

    def step(i: int) -> None:
        method.set_progress(i, total, total)
        stepper.forward_backward(move_batch(batches[i % 2], device, cfg))
        stepper.optimizer_step(lr, i, total, total)

    flops = count_flops(stepper, move_batch(batches[0], device, cfg)) / bs
    if cfg.train.compile:
        compile_blocks(method)
    print(f"bench train: {flops / 1e9:.2f} GFLOP per image; {warmup} warm-up steps"
          f"{' (compiling)' if cfg.train.compile else ''}, {steps} timed", file=sys.stderr)
    for i in range(warmup):
        step(i)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for i in range(warmup, total):
        step(i)
    synchronize(device)
    dt = (time.perf_counter() - t) / steps
    memory, memory_kind = peak_memory_mb(device)
    mm_dtype = AMP.get(precision, torch.float32)
    rate = matmul_rate(device, mm_dtype)
    achieved = flops * bs / dt
    return {
        "images_per_s": bs / dt, "step_ms": 1000 * dt, "flops_per_image": flops, "flops_per_s": achieved,
        "matmul_flops_per_s": rate, "matmul_dtype": str(mm_dtype).replace("torch.", ""), "mfu": achieved / rate,
        "peak_memory_mb": memory, "memory": memory_kind, "device": device_name(device),
        "method": cfg.method.name, "model": cfg.model.name, "img_size": cfg.model.img_size, "batch_size": bs,
        "precision": precision, "compile": cfg.train.compile, "steps": steps, "warmup": warmup,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


def main_bench_train(config: Optional[str], overrides: list[str], steps: int, warmup: int) -> int:
    cfg = load_config(config, overrides)
    print(json.dumps(bench_train(cfg, steps, warmup)))
    return 0
