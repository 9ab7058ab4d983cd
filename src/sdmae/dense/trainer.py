"""The fine-tuning loop of the dense tasks: AdamW with layer decay, linear warm-up then poly or cosine decay
per iteration (the official MoNuSeg recipe: poly, power 1, 200 warm-up iterations), atomic checkpoints
with exact resume, a progress bar and OUT/log.jsonl."""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from sdmae.config import DenseConfig, flatten, to_dict
from sdmae.dense.backbone import layer_decay_groups
from sdmae.dense.crops import collate
from sdmae.errors import SdmaeError, UsageError
from sdmae.checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state

# Options that do not change what is trained: a run may resume with other values.
RESUME_FREE = {"ckpt_every", "log_every", "overlays", "overlap", "precision", "seg.instances", "seg.threshold",
               "seg.watershed_h", "seg.watershed_sigma", "seg.min_size", "det.score_thresh", "det.nms_thresh",
               "det.max_detections", "det.overlay_score"}


def lr_factor(step: int, cfg: DenseConfig) -> float:
    """Fraction of the peak learning rate at iteration `step` (0-based)."""
    warm = min(cfg.warmup_iters, cfg.iters)
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, cfg.iters - warm))
    decay = (1 - t) ** cfg.poly_power if cfg.schedule == "poly" else 0.5 * (1 + math.cos(math.pi * t))
    floor = cfg.min_lr / cfg.lr if cfg.lr else 0.0
    return floor + (1 - floor) * decay


def run_identity(cfg: DenseConfig, **extra) -> dict:
    """What a checkpoint must agree on to be resumed: the training options, the encoder, the data, the seed."""
    keys = {k: v for k, v in flatten(to_dict(cfg)).items() if k not in RESUME_FREE}
    return {"dense": keys, **extra}


def autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _resume(path: Path, identity: dict, model, opt) -> int:
    ckpt = load_checkpoint(path)
    old = ckpt.get("run", {})
    a, b = flatten(old), flatten(identity)
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        raise UsageError(f"{path.parent.parent} holds a run with other settings; refusing to resume. Differing: "
                         f"{', '.join(changed[:8])} (use another --out, or the same settings)")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def train(model: torch.nn.Module, encoder_prefix: str, dataset, step_fn: Callable[[torch.nn.Module, dict], dict],
          cfg: DenseConfig, device: torch.device, num_workers: int, out: Path, identity: dict, desc: str) -> dict:
    """Trains `model` (its ViT at `encoder_prefix`) for cfg.iters iterations, or what is left of them under
    out/checkpoints/last.pt. step_fn(model, batch) -> {"loss": scalar tensor, other parts...}.
    Returns {"steps_run", "seconds"}."""
    groups = layer_decay_groups(model, encoder_prefix, cfg.weight_decay, cfg.layer_decay)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), fused=device.type == "cuda")
    last = out / "checkpoints" / "last.pt"
    start = _resume(last, identity, model, opt) if last.is_file() else 0
    if start >= cfg.iters:
        return {"steps_run": 0, "seconds": 0.0}
    B = cfg.batch_size
    loader = torch.utils.data.DataLoader(dataset, batch_size=B, sampler=range(start * B, cfg.iters * B),
                                         num_workers=num_workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda",
                                         generator=torch.Generator().manual_seed(0))  # not the global RNG
    model.train()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "log.jsonl", "a")
    t0 = tick = time.perf_counter()
    bar = tqdm(total=cfg.iters, initial=start, desc=desc, unit="it", dynamic_ncols=True)
    step = start
    try:
        for step, batch in enumerate(loader, start):
            lr = cfg.lr * lr_factor(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            with autocast(device, cfg.precision):
                parts = step_fn(model, batch)
            loss = parts["loss"]
            if not torch.isfinite(loss):
                raise SdmaeError(f"{desc}: loss is {loss.item()} at iteration {step + 1}; lower eval.dense.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.iters:
                now = time.perf_counter()
                n = cfg.log_every if done % cfg.log_every == 0 else done % cfg.log_every
                row = {"step": done, **{k: float(v.detach()) for k, v in parts.items()}, "lr": lr,
                       "images_per_s": n * B / max(now - tick, 1e-9)}
                tick = now
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{row['loss']:.3f}")
            if done % cfg.ckpt_every == 0 or done == cfg.iters:
                save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": done,
                             "rng": rng_state(), "run": identity}, last)
    finally:
        bar.close()
        log.close()
    return {"steps_run": step + 1 - start, "seconds": time.perf_counter() - t0}
