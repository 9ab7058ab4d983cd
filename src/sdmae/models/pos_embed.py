"""Fixed sine-cosine position embeddings (never trained)."""
import math

import torch


def sincos_1d(num_positions: int, dim: int) -> torch.Tensor:
    """Transformer-style table over a flat token index, as in the official SD-MAE code: (N, dim).

    Channel j uses frequency 10000^(-2*(j//2)/dim); even channels take sin, odd channels cos.
    """
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(num_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float()


def _sincos_axis(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    out = positions.reshape(-1).double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    """MAE's 2-D table: half the channels encode the row, half the column; (H*W, dim) in row-major order."""
    if dim % 4:
        raise ValueError(f"2-D sine-cosine embedding needs a width divisible by 4, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    # MAE puts the width coordinate first
    return torch.cat([_sincos_axis(dim // 2, xs), _sincos_axis(dim // 2, ys)], dim=1).float()


def sincos(kind: str, grid_h: int, grid_w: int, dim: int) -> torch.Tensor:
    if kind == "1d":
        return sincos_1d(grid_h * grid_w, dim)
    if kind == "2d":
        return sincos_2d(grid_h, grid_w, dim)
    raise ValueError(f"unknown position embedding '{kind}' (use 1d or 2d)")


def grid_size(num_tokens: int) -> int:
    side = int(math.isqrt(num_tokens))
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side
