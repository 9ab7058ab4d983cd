"""SD-MAE training steps of the official code and of sdmae, interleaved in one process (issue 5's CPU comparison).

On a shared machine, two programs timed one after the other see different loads; timing their steps
alternately in one process gives both the same conditions. Both train ViT-S/16 SD-MAE (heads 2048/256/4096,
teacher 0.04, student 0.1, p 0.2, AdamW) on the same images and masks; the official model and loss are
imported from a scratch folder holding the files of github.com/irsLu/SD-MAE (never copied into this project):

    mkdir /tmp/ref && for f in modeling_pretrain.py modeling_finetune.py loss.py; do
        git -C SNAPSHOT_GIT_DIR show HEAD:$f > /tmp/ref/$f; done
    OMP_NUM_THREADS=2 python benchmarks/cpu_vs_official.py /tmp/ref --rounds 5 [--set KEY=VALUE ...]

Needs einops (the official code imports it). Prints per-round step times to stderr and one JSON line:
median step seconds of each side, images/s and the ratio sdmae / official in images/s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import types
import warnings

import torch
import torch.distributed as dist

from sdmae.config import load_config
from sdmae.methods import build_method
from sdmae.train.optim import build_optimizer
from sdmae.train.step import Stepper


def official_step(src: str, images: torch.Tensor, masks: torch.Tensor, p: float):
    """A closure running one official training step (model, loss and AdamW as the official scripts build them)."""
    warnings.simplefilter("ignore")
    sys.modules.setdefault("threadpool", types.ModuleType("threadpool"))  # unused import of the official code
    sys.path.insert(0, src)
    from einops import rearrange
    import modeling_pretrain
    from loss import SelfDistillationAndMSELoss

    if not dist.is_initialized():  # its loss all-reduces the centre
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    torch.manual_seed(0)
    model = modeling_pretrain.pretrain_mae_small_patch16_224(
        input_size=images.shape[-1], dino_head_dim=4096, dino_hidden_dim=2048, dino_bottleneck_dim=256)
    loss_fn = SelfDistillationAndMSELoss(out_dim=4096, teacher_temp=0.04, nepochs=10, warmup_teacher_temp_epochs=0,
                                         warmup_teacher_temp=0.04, p=p)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    model.train()
    b = images.shape[0]
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]

    def step() -> None:
        with torch.no_grad():  # targets from the un-normalised pixels, as the official training loop does
            sq = rearrange(images * std + mean, "b c (h p1) (w p2) -> b (h w) (p1 p2) c", p1=16, p2=16)
            norm = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
            patch = rearrange(norm, "b n p c -> b n (p c)")
            labels = patch[masks].reshape(b, -1, patch.shape[-1])
        out, ev, dv = model(images, masks)
        loss, _, _ = loss_fn(input=out, target=labels, emb_i=ev, emb_j=dv, epoch=0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def sdmae_step(sets: list[str], images: torch.Tensor, masks: torch.Tensor):
    cfg = load_config(None, ["model.name=vit_small_patch16", f"model.img_size={images.shape[-1]}",
                             f"data.batch_size={images.shape[0]}", "train.device=cpu", "train.precision=fp32", *sets])
    torch.manual_seed(0)
    method = build_method(cfg)
    method.train()
    cpu = torch.device("cpu")
    opt = build_optimizer(method, 1e-4, cfg.optim.weight_decay, cfg.optim.betas, cpu)
    stepper = Stepper(method, opt, torch.amp.GradScaler("cpu", enabled=False), "fp32", cpu)
    batch = {"image": images, "mask": masks}

    def step() -> None:
        stepper.forward_backward(batch)
        stepper.optimizer_step(1e-4, 0, 1, 1)

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("official_src", help="folder with the official modeling_pretrain.py, modeling_finetune.py, loss.py")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--mask", type=float, default=0.75)
    ap.add_argument("--p", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=5, help="timed steps of each side, alternating")
    ap.add_argument("--set", nargs="*", default=[], help="sdmae config overrides (e.g. method.head_shortcut=false)")
    a = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    n = (a.img // 16) ** 2
    images = torch.randn(a.batch, 3, a.img, a.img, generator=g)
    masks = torch.stack([torch.randperm(n, generator=g) < int(a.mask * n) for _ in range(a.batch)])
    steps = {"official": official_step(a.official_src, images, masks, a.p),
             "sdmae": sdmae_step([f"method.mask_ratio={a.mask}", f"method.p={a.p}", *a.set], images, masks)}
    for step in steps.values():  # warm-up
        step()
    times: dict = {k: [] for k in steps}
    for r in range(a.rounds):
        for k, step in steps.items():
            t = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"step_s": med, "images_per_s": {k: a.batch / v for k, v in med.items()},
                      "ratio": med["official"] / med["sdmae"], "threads": torch.get_num_threads(),
                      "rounds": a.rounds, "sets": a.set}))


if __name__ == "__main__":
    main()
