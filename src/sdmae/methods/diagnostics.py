"""Collapse diagnostics shared by the distillation-type methods (SD-MAE's branch, DINO, MoCo v3).

A self-distillation run can collapse in two ways (DINO, section 5.3): every output the same one-hot
(teacher entropy -> 0, the batch-mean distribution far from uniform) or every output uniform (teacher
entropy -> log K). Contrastive and distillation runs can also collapse in the embedding: every image
mapped to nearly the same direction (SimSiam's std of L2-normalised outputs -> 0).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


@torch.no_grad()
def collapse_stats(teacher_probs: Optional[torch.Tensor] = None, student_log_probs: Optional[torch.Tensor] = None,
                   embeddings: Optional[torch.Tensor] = None) -> dict:
    """Batch means, as logged in log.jsonl:

    teacher_entropy     mean_i H(P_i) of the teacher's distributions; 0 = one-hot, log K = uniform collapse
    kl_uniform          KL(mean_i P_i || uniform) = log K - H(mean_i P_i); log K = all images on one output
    student_entropy     mean_i H(Q_i) of the student's distributions
    kl                  mean_i KL(P_i || Q_i), teacher to student
    embed_std           sqrt(D) * mean_d std_i(e_i / |e_i|): about 1 for embeddings spread over the sphere,
                        0 when all images share one direction
    """
    out = {}
    if teacher_probs is not None:
        p = teacher_probs.float()
        log_p = torch.log(p.clamp_min(1e-12))
        out["teacher_entropy"] = -(p * log_p).sum(-1).mean()
        mean_p = p.mean(0)
        out["kl_uniform"] = (mean_p * torch.log(mean_p.clamp_min(1e-12) * p.shape[-1])).sum()
    if student_log_probs is not None:
        log_q = student_log_probs.float()
        out["student_entropy"] = -(log_q.exp() * log_q).sum(-1).mean()
        if teacher_probs is not None:
            out["kl"] = (p * (log_p - log_q)).sum(-1).mean()
    if embeddings is not None and embeddings.shape[0] > 1:
        e = F.normalize(embeddings.detach().float(), dim=-1)
        out["embed_std"] = e.std(dim=0).mean() * math.sqrt(e.shape[-1])
    return out
