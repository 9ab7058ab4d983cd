"""SD-MAE: MAE plus self-distillation on visible tokens (decoder features teach encoder features)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sdmae.config import Config
from sdmae.methods.base import loss_precision
from sdmae.methods.diagnostics import collapse_stats
from sdmae.methods.ema import update_center
from sdmae.methods.mae import MAE
from sdmae.methods.masking import split_ids
from sdmae.models import DINOHead


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, student_temp: float,
                      teacher_temp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L_sd = mean_batch(-sum_k P_k log q_k), P = softmax((t - c) / tau_t), log q = log_softmax(s / tau_s).

    Returns (loss, P, log q)."""
    probs = F.softmax((teacher - center) / teacher_temp, dim=-1)
    log_q = F.log_softmax(student / student_temp, dim=-1)
    return -(probs * log_q).sum(dim=-1).mean(), probs, log_q


class SDMAE(MAE):
    name = "sdmae"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        m, s = cfg.model, cfg.method
        self.student_head = DINOHead(self.encoder.embed_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim,
                                     init=m.init)
        self.teacher_head = DINOHead(m.decoder_dim, m.head_out_dim, m.head_hidden_dim, m.head_bottleneck_dim, init=m.init)
        self.register_buffer("center", torch.zeros(1, m.head_out_dim))
        self.s = s

    def has_unused_parameters(self) -> bool:
        """p = 0 trains no head; a stopped teacher gradient leaves the teacher head without one."""
        return self.s.p == 0 or self.s.teacher_stop_grad

    def forward(self, batch: dict) -> dict:
        z, h, loss_rec, parts = self.reconstruction(self.decoder_view(batch))
        out = dict(parts)
        if self.s.p == 0:
            out["loss"] = loss_rec
            return out
        if self.s.sd_view == "stain":  # the student: the same visible patches, stain-jittered
            ids_keep, _ = split_ids(batch["mask"], self.num_mask)
            z = self.encoder.forward_visible(batch["image"], ids_keep)
        student = loss_precision(self.student_head.forward_mean(z, self.s.head_shortcut))
        teacher = loss_precision(self.teacher_head.forward_mean(h, self.s.head_shortcut))
        if self.s.teacher_stop_grad:  # paper text / DINO: no gradient through the teacher branch at all
            teacher = teacher.detach()
        loss_sd, probs, log_q = distillation_loss(student, teacher, self.center, self.s.student_temp,
                                                  self.s.teacher_temp)
        update_center(self.center, probs if self.s.center_on == "probs" else teacher, self.s.center_momentum)
        out["loss"] = self.s.p * loss_sd + (1 - self.s.p) * loss_rec
        out["loss_sd"] = loss_sd.detach()
        out.update(collapse_stats(probs.detach(), log_q.detach(), z.detach().mean(dim=1)))
        return out

    def decoder_view(self, batch: dict) -> dict:
        """What the reconstruction reads. `sd_view=stain`: the crop without stain and colour jitter, as input and
        target, so that the teacher (decoder features of the clean view) asks the student (encoder on the
        jittered view) for features that do not change with the stain; the paper's term compares one view."""
        if self.s.sd_view != "stain":
            return batch
        return {"image": batch["image_clean"], "mask": batch["mask"]}
