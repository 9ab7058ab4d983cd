"""GPU speed paths (run by benchmarks/gpu_check.sh; skipped without CUDA): a bf16 step is finite and close to fp32,
fused AdamW steps like the reference, inductor-compiled blocks step like eager ones."""
from __future__ import annotations

import copy

import pytest
import torch

from sdmae.config import load_config
from sdmae.methods import build_method
from sdmae.data.batch import move_batch
from sdmae.train.optim import build_optimizer, param_groups
from sdmae.train.step import Stepper, compile_blocks

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SETS = ["model.name=vit_small_patch16", "model.img_size=64", "train.device=cuda", "data.batch_size=8"]
CUDA = torch.device("cuda")


def setup(*sets: str):
    cfg = load_config(None, [*SETS, *sets])
    torch.manual_seed(0)
    m = build_method(cfg).to(CUDA)
    g = torch.Generator().manual_seed(1)
    mask = torch.stack([torch.randperm(16, generator=g) < 12 for _ in range(8)])
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=g)
    return cfg, m, move_batch({"image": images.pin_memory(), "mask": mask.pin_memory()}, CUDA, cfg)


def run_steps(m, b, precision: str, n: int = 3) -> torch.Tensor:
    opt = build_optimizer(m, 1e-4, 0.05, (0.9, 0.999), CUDA)
    step = Stepper(m, opt, torch.amp.GradScaler("cuda", enabled=precision == "fp16"), precision, CUDA)
    losses = []
    for i in range(n):
        losses.append(step.forward_backward(b)["loss"].detach().float())
        step.optimizer_step(1e-4, i, n, n)
    return torch.stack(losses)


def test_bf16_step_is_finite_and_close_to_fp32():
    _, m, b = setup()
    m32 = copy.deepcopy(m)
    bf16 = run_steps(m, b, "bf16")
    fp32 = run_steps(m32, b, "fp32")
    assert torch.isfinite(bf16).all()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)


def test_fused_adamw_is_used_on_cuda_and_steps_like_the_reference():
    """Same parameters, groups and gradients: the fused kernel and the per-tensor reference agree to rounding."""
    _, m, b = setup()
    ref = copy.deepcopy(m)
    opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.999), CUDA)
    assert opt.defaults["fused"]
    ref_opt = torch.optim.AdamW(param_groups(ref, 0.05), lr=1e-3, foreach=False, fused=False)
    m(b)["loss"].backward()
    g = torch.Generator(device="cuda").manual_seed(2)
    for _ in range(3):
        for p, q in zip(m.parameters(), ref.parameters()):
            if p.grad is not None:
                p.grad = p.grad + 1e-3 * torch.randn(p.shape, generator=g, device="cuda")
                q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    for (k, a), r in zip(m.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5, msg=k)


def test_inductor_compiled_blocks_step_like_eager_ones():
    _, m, b = setup()
    compiled = compile_blocks(copy.deepcopy(m))
    torch.testing.assert_close(run_steps(compiled, b, "fp32"), run_steps(m, b, "fp32"), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method,crops", [("mae", True), ("sdmae", True), ("sdmae", False), ("dino", False),
                                          ("mocov3", False)])
def test_steps_never_synchronise_with_the_host(method, crops):
    """tests/test_no_sync.py's check, on the GPU itself: CUDA raises on any synchronising call in the steps
    (the batch moves in pinned and the first step builds the constants, outside the checked part)."""
    extra = {"dino": ["method.views.local_crops=2"], "sdmae": ["method.p=0.2"]}.get(method, [])
    cfg = load_config(None, [*SETS, f"method.name={method}", "data.aug.hed_jitter=0.05", "data.aug.color_jitter=0.2",
                             "train.precision=bf16", *extra])
    torch.manual_seed(0)
    m = build_method(cfg).to(CUDA)
    fn = m.sample_fn()
    from torch.utils.data import default_collate

    from sdmae.data.transforms import DeviceTile, sample_generator

    g = torch.Generator().manual_seed(1)
    tiles = [torch.randint(0, 256, (80, 80, 3), dtype=torch.uint8, generator=g).numpy() for _ in range(8)]
    batch = default_collate([fn(t.view(DeviceTile) if crops else t[:64, :64].copy(), sample_generator(0, 0, i))
                             for i, t in enumerate(tiles)])
    batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
    opt = build_optimizer(m, 1e-4, 0.05, (0.9, 0.999), CUDA)
    step = Stepper(m, opt, torch.amp.GradScaler("cuda", enabled=False), "bf16", CUDA, clip_grad=1.0)
    for i in range(3):
        if i == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            m.set_progress(i, 10, 5)
            step.forward_backward(move_batch(batch, CUDA, cfg, crops))
            step.optimizer_step(1e-4, i, 10, 5)
        finally:
            torch.cuda.set_sync_debug_mode("default")
