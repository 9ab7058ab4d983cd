"""AdamW with the usual parameter groups, and the run's length and per-step warm-up + cosine learning rate."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from sdmae.config import Config
from sdmae.errors import UsageError

NO_DECAY_NAMES = ("pos_embed", "mask_token", "cls_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms (all 1-D parameters), position embeddings and the mask token."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(name.endswith(n) for n in NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw(device: torch.device) -> bool:
    """The fused AdamW kernel (one pass over each parameter instead of about ten) runs on CUDA, and on the CPU
    since torch 2.4; it computes the same update (tests/test_speed.py)."""
    version = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and version >= (2, 4))


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas, device: torch.device):
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=tuple(betas),
                             fused=fused_adamw(device))


def lr_at(step: int, total: int, warmup: int, peak: float, final: float) -> float:
    """Linear warm-up over `warmup` steps, then half-cosine from `peak` to `final` at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return final + (peak - final) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


@dataclass(frozen=True)
class Schedule:
    """How long a run is and how its learning rate moves, in optimiser steps of one global batch."""

    steps_per_epoch: int
    total: int
    warmup: int
    peak_lr: float
    min_lr: float
    accum: int
    global_batch: int

    @classmethod
    def create(cls, cfg: Config, tiles: int, world: int) -> "Schedule":
        """Linear scaling (lr = base_lr * global batch / 256); warm-up epochs as a share of train.epochs."""
        accum = cfg.optim.accum_steps
        global_batch = cfg.data.batch_size * world * accum
        steps_per_epoch = tiles // (cfg.data.batch_size * world) // accum
        if steps_per_epoch == 0:
            raise UsageError(f"the data has {tiles} tiles, fewer than one global batch of {global_batch}: "
                             f"lower data.batch_size")
        total = cfg.train.epochs * steps_per_epoch
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        warmup = int(round(total * cfg.optim.warmup_epochs / cfg.train.epochs))
        return cls(steps_per_epoch, total, warmup, cfg.optim.base_lr * global_batch / 256, cfg.optim.min_lr,
                   accum, global_batch)

    def lr(self, step: int) -> float:
        return lr_at(step, self.total, self.warmup, self.peak_lr, self.min_lr)
