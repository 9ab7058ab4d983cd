"""AdamW with the usual parameter groups and a per-step warm-up + cosine learning-rate schedule."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

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
