"""BatchNorm over the global batch of all processes, on any backend."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is again the sum over processes: every rank's loss depends on
    every rank's input through the sum."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover every process's batch (MoCo v3 uses SyncBatchNorm).

    torch's SyncBatchNorm needs a GPU; this one all-reduces the sums with autograd through gloo or NCCL,
    so k processes with batch b normalise, and back-propagate, like one process with batch k*b. With
    one process, or in eval mode, it is plain BatchNorm1d (same state dict keys).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1:
            return super().forward(x)
        x32 = x.float()
        count = torch.full((1,), float(x.shape[0]), device=x.device)
        dist.all_reduce(count)
        mean = AllReduceSum.apply(x32.sum(0)) / count
        var = AllReduceSum.apply(((x32 - mean) ** 2).sum(0)) / count  # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * count / (count - 1).clamp_min(1), m)
                self.num_batches_tracked.add_(1)
        y = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)
