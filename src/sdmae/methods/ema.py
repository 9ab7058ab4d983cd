"""Running averages: the momentum (EMA) teachers of BYOL / MoCo v3 / DINO with their cosine schedule, and the
centre of the distillation methods (SD-MAE, DINO)."""
from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn as nn


def cosine_momentum(step: int, total: int, base: float) -> float:
    """m(step) = 1 - (1 - base) * (cos(pi * step / total) + 1) / 2: `base` at step 0, 1 at `total`."""
    t = min(step, total) / max(1, total)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, m: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter (buffers are the teacher's own)."""
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t, m)
    torch._foreach_add_(t, s, alpha=1.0 - m)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that receives no gradients: the teacher's starting point."""
    return copy.deepcopy(module).requires_grad_(False)


@torch.no_grad()
def update_center(center: torch.Tensor, values: torch.Tensor, momentum: float) -> None:
    """c <- m c + (1 - m) mean over the global batch of `values` (summed across processes)."""
    total = values.to(center.dtype).sum(dim=0, keepdim=True)  # the centre's precision (float32 under autocast)
    count = torch.full((), float(values.shape[0]), dtype=center.dtype, device=values.device)  # a fill, no copy
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        dist.all_reduce(count)
    center.mul_(momentum).add_(total / count, alpha=1 - momentum)
