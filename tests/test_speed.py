"""The speed features change nothing but speed: head shortcut, fused AdamW, fused (SDPA) attention, compiled
blocks each give the same numbers as the plain computation; `sdmae bench train` and the GPU check script run."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import Block

from sdmae.cli import main
from sdmae.config import load_config
from sdmae.methods import build_method
from sdmae.models import DINOHead
from sdmae.train.optim import build_optimizer, param_groups
from sdmae.train.step import Stepper, compile_blocks

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.name=vit_tiny_patch8", "model.img_size=16", "model.decoder_depth=1", "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16", "model.head_out_dim=64", "train.device=cpu", "data.batch_size=4"]


def tiny_method(*sets: str):
    torch.manual_seed(0)
    return build_method(load_config(None, [*TINY, *sets]))


def batch(n: int = 4, size: int = 16, patches: int = 4, masked: int = 3) -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(n, patches, dtype=torch.bool)
    for i in range(n):
        mask[i, torch.randperm(patches, generator=g)[:masked]] = True
    return {"image": torch.randn(n, 3, size, size, generator=g), "mask": mask}


def grads(m: torch.nn.Module) -> dict:
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def assert_close_dicts(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


def test_head_shortcut_equals_the_mean_of_head_outputs():
    """mean_i W u_i = W mean_i u_i: the same output and the same gradients as running the last layer per token."""
    torch.manual_seed(0)
    head = DINOHead(24, out_dim=96, hidden_dim=48, bottleneck_dim=16)
    tokens = torch.randn(5, 7, 24, dtype=torch.float64, requires_grad=True)
    head = head.double()
    weights = torch.randn(5, 96, dtype=torch.float64)
    outs, gs = [], []
    for shortcut in (True, False):
        head.zero_grad()
        tokens.grad = None
        out = head.forward_mean(tokens, shortcut)
        (out * weights).sum().backward()
        outs.append(out.detach())
        gs.append({**grads(head), "tokens": tokens.grad.clone()})
    manual = torch.stack([head(tokens[i]).mean(0) for i in range(5)]).detach()
    torch.testing.assert_close(outs[0], manual, atol=1e-12, rtol=0)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-12, rtol=0)
    assert_close_dicts(gs[0], gs[1], atol=1e-12)


def test_sdmae_step_is_the_same_with_and_without_the_head_shortcut():
    b = batch()
    res = {}
    for flag in ("true", "false"):
        m = tiny_method(f"method.head_shortcut={flag}")
        out = m(b)
        out["loss"].backward()
        res[flag] = (out["loss"].detach(), grads(m), m.center.clone())
    torch.testing.assert_close(res["true"][0], res["false"][0], atol=1e-6, rtol=0)
    assert_close_dicts(res["true"][1], res["false"][1], atol=1e-6)
    torch.testing.assert_close(res["true"][2], res["false"][2], atol=1e-7, rtol=0)


def test_fused_adamw_takes_the_same_steps_as_the_reference_adamw():
    """Same parameters, groups and gradients: the fused kernel and the per-tensor reference agree to rounding."""
    m = tiny_method()
    ref = copy.deepcopy(m)
    opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.999), torch.device("cpu"))
    ref_opt = torch.optim.AdamW(param_groups(ref, 0.05), lr=1e-3, betas=(0.9, 0.999), foreach=False, fused=False)
    assert opt.defaults["fused"], "the CPU training step should use the fused AdamW kernel (torch >= 2.4)"
    m(batch())["loss"].backward()
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        for (name, p), q in zip(m.named_parameters(), ref.parameters()):
            if p.grad is not None:
                p.grad = p.grad + 1e-3 * torch.randn(p.shape, generator=g)  # a new gradient each step
                q.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
    assert_close_dicts(dict(m.named_parameters()), dict(ref.named_parameters()), atol=1e-6)


def test_encoder_and_decoder_attention_is_fused_and_equals_the_explicit_computation():
    m = tiny_method()
    blocks = [x for x in m.modules() if isinstance(x, Block)]
    assert blocks and all(x.attn.fused_attn for x in blocks)  # timm routes them to F.scaled_dot_product_attention
    block = blocks[0]
    x = torch.randn(2, 9, block.attn.qkv.in_features, requires_grad=True)
    outs = []
    for fused in (True, False):
        block.attn.fused_attn = fused
        block.zero_grad()
        x.grad = None
        y = block(x)
        y.square().sum().backward()
        outs.append((y.detach(), x.grad.clone(), grads(block)))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-4, rtol=1e-4)
    assert_close_dicts(outs[0][2], outs[1][2], atol=1e-4)


@pytest.mark.slow
def test_compiled_blocks_step_like_eager_ones():
    """The graphs Dynamo and AOTAutograd capture (backend aot_eager: no code generation, fast on a CPU) give the
    eager step's loss and gradients; benchmarks/gpu_check.sh runs the same check with inductor on a GPU."""
    eager = tiny_method()
    compiled = compile_blocks(copy.deepcopy(eager), backend="aot_eager")
    b = batch()
    results = []
    for m in (eager, compiled):
        opt = build_optimizer(m, 1e-3, 0.05, (0.9, 0.999), torch.device("cpu"))
        step = Stepper(m, opt, torch.amp.GradScaler("cpu", enabled=False), "fp32", torch.device("cpu"))
        losses = []
        for i in range(2):
            losses.append(step.forward_backward(b)["loss"].detach())
            step.optimizer_step(1e-3, i, 2, 2)
        results.append((torch.stack(losses), dict(m.state_dict())))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-6, rtol=1e-6)
    assert_close_dicts(results[0][1], results[1][1], atol=1e-6)


@pytest.mark.parametrize("method", ["sdmae", "mae"])
def test_bench_train_prints_throughput_flops_and_mfu_as_json(method, capsys):
    code = main(["bench", "train", "--steps", "1", "--warmup", "0", "--set", *TINY, f"method.name={method}"])
    assert code == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("images_per_s", "step_ms", "flops_per_image", "flops_per_s", "matmul_flops_per_s", "mfu",
                "peak_memory_mb", "device"):
        assert key in row
    assert row["images_per_s"] > 0 and row["step_ms"] > 0
    assert row["flops_per_s"] == pytest.approx(row["flops_per_image"] * row["images_per_s"])
    assert row["mfu"] == pytest.approx(row["flops_per_s"] / row["matmul_flops_per_s"])
    # forward + backward of the encoder's first matmul alone: 3 x 2 x visible tokens x patch pixels x width
    assert row["flops_per_image"] > 3 * 2 * 1 * (8 * 8 * 3) * 192
    assert row["method"] == method and row["precision"] == "fp32"


def test_bench_train_rejects_bad_step_counts(capsys):
    assert main(["bench", "train", "--steps", "0", "--set", *TINY]) == 2
    assert "--steps" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_script_runs_in_smoke_mode_on_the_cpu():
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke"], capture_output=True,
                       text=True, timeout=300, cwd=REPO, env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 2 + 2  # header, rule, one row per method
    assert "sdmae" in r.stdout and "mae" in r.stdout


@pytest.mark.slow
def test_gpu_first_run_script_runs_in_smoke_mode_on_the_cpu(tmp_path, pcam_train):
    """benchmarks/gpu_first_run.sh --smoke: tests, bench grid, host-side feed and the PCam probe at toy sizes."""
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_first_run.sh"), "--smoke", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=REPO,
                       env={**os.environ, "PYTHON": sys.executable, "DATA": str(pcam_train.parent),
                            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 part(s) failed" in r.stdout and "| SD-MAE |" in r.stdout
    feed = [json.loads(line) for line in open(tmp_path / "out" / "feed.jsonl")]
    assert feed and all("host_only" in f for f in feed)


def test_cpu_steps_keep_freed_memory_in_the_heap():
    """sdmae.heap, applied by pick_device on CPUs: glibc's thresholds set (mallopt accepted both); the effect,
    389,000 instead of 861,000 page faults for a ViT-S/16 bench run, is measured in docs/results.md."""
    import platform

    from sdmae.heap import keep_freed_memory
    from sdmae.train.distributed import pick_device

    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("no glibc allocator to tune here")
    assert pick_device("cpu").type == "cpu" and keep_freed_memory() is True
