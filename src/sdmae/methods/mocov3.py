"""MoCo v3 for ViT (Chen, Xie and He 2021): two views, a momentum encoder, symmetrised InfoNCE.

    q1 = pred(proj(f(x1)))   q2 = pred(proj(f(x2)))          f: the encoder, mean-pooled tokens
    k1 = proj_m(f_m(x1))     k2 = proj_m(f_m(x2))            f_m, proj_m: momentum copies, no gradient
    L  = ctr(q1, k2) + ctr(q2, k1),  ctr(q, k) = 2 tau * CE(q_i . k_j / tau over the global batch, j = i)

q and k are L2-normalised; the negatives of q_i are the keys of every other image of the global batch,
gathered from all processes. After each optimiser step the momentum branch moves towards the online
one with m rising from `method.momentum` (0.99) to 1 on a half cosine.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from sdmae.config import Config
from sdmae.methods.base import Method, scalar
from sdmae.methods.device_views import batch_views
from sdmae.methods.diagnostics import collapse_stats
from sdmae.methods.ema import cosine_momentum, ema_update, frozen_copy
from sdmae.methods.global_bn import GlobalBatchNorm1d, world_size
from sdmae.methods.views import MultiViewSampleFn, global_specs
from sdmae.models import build_encoder

DEFAULT_MOMENTUM = 0.99
CROP_SCALE = (0.08, 1.0)


def build_mlp(layers: int, in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo v3's MLP: [Linear (no bias), BN, ReLU] * (layers - 1), then Linear and BN without affine."""
    mods: list[nn.Module] = []
    for i in range(layers):
        a, b = (in_dim if i == 0 else hidden), (out_dim if i == layers - 1 else hidden)
        mods.append(nn.Linear(a, b, bias=False))
        if i < layers - 1:
            mods += [GlobalBatchNorm1d(b), nn.ReLU(inplace=True)]
        else:
            mods.append(GlobalBatchNorm1d(b, affine=False))
    return nn.Sequential(*mods)


@torch.no_grad()
def gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Keys of all processes in rank order, and this process's rank. MoCo v3's keys come from the momentum
    branch and carry no gradient, so a plain all_gather suffices."""
    if world_size() == 1:
        return k, 0
    parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, k.contiguous())
    return torch.cat(parts), dist.get_rank()


def info_nce(q: torch.Tensor, k: torch.Tensor, temp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """2 tau * mean_i -log( exp(q_i.k_i / tau) / sum_j exp(q_i.k_j / tau) ) over the gathered keys j;
    returns (loss, share of queries whose own key scores highest)."""
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    keys, rank = gather_keys(k)
    logits = q @ keys.T / temp
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    loss = F.cross_entropy(logits, labels) * (2 * temp)
    return loss, (logits.argmax(dim=1) == labels).float().mean()


class MoCoV3(Method):
    name = "mocov3"

    def __init__(self, cfg: Config):
        super().__init__()
        m, s = cfg.model, cfg.method
        self.cfg = cfg
        self.encoder = build_encoder(m.name, m.img_size, m.pos_embed, m.drop_path, m.init)
        if s.frozen_patch_embed:  # "random patch projection": the patch embedding keeps its random weights
            self.encoder.patch_embed.requires_grad_(False)
        self.projector = build_mlp(3, self.encoder.embed_dim, s.moco_mlp_dim, s.moco_dim)
        self.predictor = build_mlp(2, s.moco_dim, s.moco_mlp_dim, s.moco_dim)
        momentum_encoder = build_encoder(m.name, m.img_size, m.pos_embed, init=m.init)  # no drop path in the key branch
        momentum_encoder.load_state_dict(self.encoder.state_dict())
        self.momentum_encoder = momentum_encoder.requires_grad_(False)
        self.momentum_projector = frozen_copy(self.projector)
        self.base_momentum = DEFAULT_MOMENTUM if s.momentum is None else s.momentum
        self.temp = s.moco_temp
        self.next_momentum = self.base_momentum

    def sample_fn(self) -> MultiViewSampleFn:
        return MultiViewSampleFn(self.cfg, *self.specs())

    def specs(self) -> tuple[list, list]:
        return global_specs(self.cfg, CROP_SCALE), []

    @staticmethod
    def features(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The representation that is evaluated and exported: mean of the final-norm patch tokens."""
        return encoder.forward_head(encoder.forward_features(images), pre_logits=True)

    def forward(self, batch: dict) -> dict:
        batch = batch_views(batch, self.cfg, *self.specs())  # device-crop path: views made here
        x1, x2 = batch["views"][:, 0], batch["views"][:, 1]
        f1 = self.features(self.encoder, x1)
        q1 = self.predictor(self.projector(f1))
        q2 = self.predictor(self.projector(self.features(self.encoder, x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.features(self.momentum_encoder, x1))
            k2 = self.momentum_projector(self.features(self.momentum_encoder, x2))
        loss1, acc1 = info_nce(q1, k2, self.temp)
        loss2, acc2 = info_nce(q2, k1, self.temp)
        loss = loss1 + loss2
        out = {"loss": loss, "contrast_acc": (acc1 + acc2).detach() / 2,
               "momentum": scalar(self.next_momentum, loss)}
        out.update(collapse_stats(embeddings=f1))
        return out

    def set_progress(self, step: int, total: int, steps_per_epoch: int) -> None:
        # MoCo v3 moves the momentum branch at the start of iteration step + 1 with m(step + 1); doing it right
        # after optimiser step `step` is the same thing
        self.next_momentum = cosine_momentum(step + 1, total, self.base_momentum)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total: int) -> None:
        m = cosine_momentum(step + 1, total, self.base_momentum)
        ema_update(self.momentum_encoder, self.encoder, m)
        ema_update(self.momentum_projector, self.projector, m)
