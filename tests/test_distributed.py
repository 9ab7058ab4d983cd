"""Two-process runs under torchrun (gloo, CPU): world-size invariance, the all-reduced SD-MAE centre, stop and resume,
a failing rank; and gradient accumulation against one large batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.config import load_config
from sdmae.methods import build_method
from sdmae.train.loop import pretrain

TINY = ["model.name=vit_tiny_patch8", "model.img_size=16", "model.decoder_depth=1", "model.head_hidden_dim=32",
        "model.head_bottleneck_dim=16", "model.head_out_dim=64", "data.num_workers=0", "train.device=cpu",
        "train.seed=3", "train.reconstructions=false", "data.aug.crop=none"]
STEPS = 8
TIMEOUT = 120


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    """48 random 16 px tiles: 6 global batches of 8 per epoch."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for i in range(48):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def launch(args: list[str], script: Path | None = None, fault: str = "") -> subprocess.CompletedProcess:
    """torchrun with two processes of `python -m sdmae ARGS` (or of SCRIPT ARGS)."""
    entry = [str(script)] if script else ["-m", "sdmae"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDMAE_DIST_TIMEOUT": "60", "SDMAE_TEST_FAULT": fault}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def pretrain_args(tiles: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(tiles), "--out", str(out), "--set", *TINY, f"data.batch_size={batch}",
            f"train.max_steps={STEPS}", *extra]


def weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# A wrapper around `python -m sdmae` that injects a fault into the real command (the run's code is untouched).
WRAPPER = textwrap.dedent("""
    import os, signal, sys
    from sdmae.methods.sdmae import SDMAE
    from sdmae.train.logger import RunLogger
    from sdmae.cli import main

    mode = os.environ["SDMAE_TEST_FAULT"]
    calls = {"n": 0}
    forward, log = SDMAE.forward, RunLogger.log

    def failing_forward(self, batch):
        calls["n"] += 1
        if os.environ["RANK"] == "1" and calls["n"] == 2:
            raise RuntimeError("injected failure on rank " + os.environ["RANK"])
        return forward(self, batch)

    def terminating_log(self, row):
        log(self, row)
        if self.enabled and row["step"] == 2:  # like Slurm or a user: SIGTERM to the launcher, which forwards it
            os.kill(os.getppid(), signal.SIGTERM)

    if mode == "raise":
        SDMAE.forward = failing_forward
    else:
        RunLogger.log = terminating_log
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def wrapper(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wrapper") / "faulty_sdmae.py"
    path.write_text(WRAPPER)
    return path


@pytest.fixture(scope="module")
def runs(tiles, tmp_path_factory) -> dict:
    """One process with batch 8 (in-process) and two processes with batch 4 each (torchrun)."""
    root = tmp_path_factory.mktemp("runs")
    one = root / "one"
    pretrain(load_config(None, [*TINY, "data.batch_size=8", f"train.max_steps={STEPS}"]), [str(tiles)], str(one))
    two = root / "two"
    r = launch(pretrain_args(tiles, two, 4))
    assert r.returncode == 0, r.stderr[-3000:]
    return {"one": weights(one), "two": weights(two), "two_dir": two,
            "logs": [(d / "log.jsonl").read_text().splitlines() for d in (one, two)]}


@pytest.mark.dist
@pytest.mark.slow
def test_two_processes_train_the_same_weights_as_one(runs):
    a, b = runs["one"], runs["two"]
    assert a["step"] == b["step"] == STEPS
    assert max_diff(a["model"], b["model"]) < 1e-4  # AdamW turns rounding noise in near-zero gradients into +-lr
    last = [json.loads(log[-1]) for log in runs["logs"]]  # rank 0 logs the global batch's loss, not its shard's
    assert last[0]["loss"] == pytest.approx(last[1]["loss"], abs=1e-5)


@pytest.mark.dist
@pytest.mark.slow
def test_sdmae_centre_is_all_reduced(runs):
    """Each rank's centre follows the mean over the global batch, not over its own shard."""
    a, b = runs["one"]["model"]["center"], runs["two"]["model"]["center"]
    assert a.abs().sum() > 0
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.dist
@pytest.mark.slow
def test_sigterm_checkpoints_and_the_run_resumes_under_two_processes(runs, tiles, wrapper, tmp_path):
    out = tmp_path / "stopped"
    t = time.monotonic()
    r = launch(pretrain_args(tiles, out, 4), wrapper, fault="term")
    assert r.returncode != 0
    assert time.monotonic() - t < TIMEOUT
    stopped = weights(out)
    assert 2 <= stopped["step"] < STEPS, r.stderr[-2000:]
    assert "run the same command to resume" in r.stderr
    r = launch(pretrain_args(tiles, out, 4))
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = weights(out)
    assert resumed["step"] == STEPS
    assert max_diff(resumed["model"], runs["two"]["model"]) < 1e-6
    assert (out / "log.jsonl").read_text().count('"step"') == STEPS


@pytest.mark.dist
@pytest.mark.slow
def test_a_failing_rank_ends_every_rank_and_is_reported_once(tiles, wrapper, tmp_path):
    t = time.monotonic()
    r = launch(pretrain_args(tiles, tmp_path / "run", 4), wrapper, fault="raise")
    elapsed = time.monotonic() - t
    assert r.returncode != 0
    assert elapsed < 60, f"took {elapsed:.0f} s"
    out = r.stdout + r.stderr
    assert out.count("injected failure on rank 1") == 1, out[-3000:]


@pytest.mark.dist
@pytest.mark.slow
def test_an_error_every_rank_meets_is_shown_once(runs, tiles):
    """Resuming with a changed setting fails on both ranks after the process group exists: one message."""
    r = launch(pretrain_args(tiles, runs["two_dir"], 4, "optim.base_lr=1e-3"))
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert out.count("refusing to resume") == 1, out[-3000:]


def test_gradient_accumulation_matches_one_large_batch(tiles, tmp_path):
    """MAE (no batch statistics): 2 micro-batches of 4 accumulated = one batch of 8."""
    base = [*TINY, "method.name=mae", "train.max_steps=3"]
    pretrain(load_config(None, [*base, "data.batch_size=8"]), [str(tiles)], str(tmp_path / "big"))
    pretrain(load_config(None, [*base, "data.batch_size=4", "optim.accum_steps=2"]), [str(tiles)],
             str(tmp_path / "accum"))
    a, b = weights(tmp_path / "big"), weights(tmp_path / "accum")
    assert max_diff(a["model"], b["model"]) < 1e-5


def assert_teacher_head_kept_student_head_trained(ck: dict, *overrides: str) -> None:
    """The run's teacher head (no gradient) is still its initial draw (TINY's train.seed=3); the
    student head has moved."""
    torch.manual_seed(3)
    fresh = build_method(load_config(None, [*TINY, *overrides])).state_dict()
    head = [k for k in ck["model"] if k.startswith("teacher_head.")]
    assert head and all(torch.equal(ck["model"][k], fresh[k]) for k in head)
    assert not torch.equal(ck["model"]["student_head.mlp.0.weight"], fresh["student_head.mlp.0.weight"])


@pytest.mark.dist
@pytest.mark.slow
def test_a_stopped_teacher_gradient_trains_under_two_processes(tiles, tmp_path):
    """SD-MAE with teacher_stop_grad leaves the teacher head without gradients: DDP must be told (the method
    declares it, `Method.has_unused_parameters`), or the second step fails; the teacher head stays put."""
    out = tmp_path / "sg"
    r = launch(pretrain_args(tiles, out, 4, "method.teacher_stop_grad=true", "train.max_steps=3"))
    assert r.returncode == 0, r.stderr[-3000:]
    ck = weights(out)
    assert ck["step"] == 3
    assert_teacher_head_kept_student_head_trained(ck, "method.teacher_stop_grad=true")


@pytest.mark.dist
@pytest.mark.slow
def test_the_stain_view_term_trains_under_two_processes(tiles, tmp_path):
    """`method.sd_view=stain` runs the encoder twice per step (clean and jittered copies) and, with a stopped
    teacher gradient, leaves the teacher head unused: DDP must take both, and the student head must learn."""
    out = tmp_path / "sv"
    r = launch(pretrain_args(tiles, out, 4, "method.sd_view=stain", "method.teacher_stop_grad=true",
                             "data.aug.hed_jitter=0.1", "train.max_steps=3"))
    assert r.returncode == 0, r.stderr[-3000:]
    ck = weights(out)
    assert ck["step"] == 3 and ck["config"]["method"]["sd_view"] == "stain"
    assert_teacher_head_kept_student_head_trained(ck, "data.aug.hed_jitter=0.1", "method.sd_view=stain")


@pytest.mark.dist
@pytest.mark.slow
def test_the_momentum_teacher_trains_under_two_processes(tiles, tmp_path):
    """`method.sd_view=full` leaves the teacher head without gradients (DDP must take that) and moves the momentum
    copy after every step, on each process from the same all-reduced weights."""
    out = tmp_path / "mt"
    r = launch(pretrain_args(tiles, out, 4, "method.sd_view=full", "train.max_steps=3"))
    assert r.returncode == 0, r.stderr[-3000:]
    ck = weights(out)
    assert ck["step"] == 3 and ck["config"]["method"]["sd_view"] == "full"
    assert_teacher_head_kept_student_head_trained(ck, "method.sd_view=full")
    torch.manual_seed(3)
    fresh = build_method(load_config(None, [*TINY, "method.sd_view=full"])).state_dict()
    key = "momentum_branch.encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(ck["model"][key], fresh[key])
