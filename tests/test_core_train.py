"""The loop: schedule, parameter groups, checkpoints (atomic, safe), exact resume, logs."""
import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from sdmae.config import load_config
from sdmae.data.loader import GlobalBatchSampler
from sdmae.errors import SdmaeError, UsageError
from sdmae.methods import build_method
from sdmae.checkpoint import UnsafeCheckpointError, load_checkpoint, save_atomic
from sdmae.train.loop import pretrain
from sdmae.train.optim import lr_at, param_groups


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 100, 10, 1.0, 0.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0, 0.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert all(lr_at(s, 100, 10, 1.0, 0.0) >= lr_at(s + 1, 100, 10, 1.0, 0.0) for s in range(10, 99))


def test_param_groups_skip_decay_on_biases_norms_tokens(tiny_overrides):
    m = build_method(load_config(overrides=tiny_overrides))
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert "decoder.mask_token" in nd and "encoder.blocks.0.norm1.weight" in nd and "encoder.blocks.0.attn.qkv.bias" in nd
    assert "encoder.blocks.0.attn.qkv.weight" in d and "student_head.last_layer.weight" in d
    assert "encoder.pos_embed" not in d | nd  # fixed, never optimised
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_global_batches_do_not_depend_on_world_size():
    one = list(GlobalBatchSampler(50, 8, 1, 0, seed=3, start=0, total=12))
    two = [list(GlobalBatchSampler(50, 4, 2, r, seed=3, start=0, total=12)) for r in range(2)]
    for k in range(12):
        assert one[k] == two[0][k] + two[1][k]
    assert [b[0][0] for b in one] == [0] * 6 + [1] * 6  # 6 batches of 8 per epoch of 50
    assert list(GlobalBatchSampler(50, 8, 1, 0, seed=3, start=5, total=12)) == one[5:]


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}, "step": 1}, path)

    def broken_save(obj, f):  # what a full disk does to torch.save: part of the file, then an error
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(SdmaeError, match=f"cannot write {path}: no space left on the device"):
        save_atomic({"model": {"w": torch.zeros(3)}, "step": 2}, path)
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["step"] == 1 and torch.equal(ck["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_a_full_disk_that_torch_reports_as_runtimeerror_is_named(tmp_path, monkeypatch):
    """torch.save's zip writer turns ENOSPC into `RuntimeError: [enforce fail at inline_container.cc]`."""
    def broken_save(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", broken_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(3 << 20, 3 << 20, 0))
    with pytest.raises(SdmaeError, match="cannot write .*last.pt: no space left on the device"):
        save_atomic({"step": 1}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from sdmae import cli

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "log.jsonl"))

    monkeypatch.setattr("sdmae.train.loop.pretrain", full)
    assert cli.main(["pretrain", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == f"sdmae pretrain: error: {tmp_path / 'run' / 'log.jsonl'}: no space left on the device\n"


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_CHECKPOINT",))


def test_pickled_payload_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": Evil(), "step": 1}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError, match="refusing") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "system" in str(e.value) and "weights_only` set to `False`" not in str(e.value)  # names the global
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"model": 1}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clear error, not torch's pickle-protocol warning before it
        with pytest.raises(UnsafeCheckpointError, match="refusing"):
            load_checkpoint(tmp_path / "raw.pkl")


def folder_of_tiles(root, n=24, size=40):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = (torch.rand(size, size, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(root / f"t{i:03d}.png")
    return root


def tensors(x, pre=""):
    if isinstance(x, torch.Tensor):
        yield pre, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from tensors(v, f"{pre}.{k}")
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from tensors(v, f"{pre}[{i}]")


def assert_same_checkpoint(a, b):
    ta, tb = dict(tensors(a)), dict(tensors(b))
    assert set(ta) == set(tb)
    differ = {k: (ta[k].double() - tb[k].double()).abs().max().item() for k in ta if not torch.equal(ta[k], tb[k])}
    assert not differ, f"{len(differ)} of {len(ta)} tensors differ: {sorted(differ.items(), key=lambda x: -x[1])[:6]}"


def test_run_writes_outputs_and_is_deterministic(tmp_path, tiny_overrides):
    data = [str(folder_of_tiles(tmp_path / "tiles"))]
    sets = tiny_overrides + ["train.max_steps=6", "train.epochs=2", "train.ckpt_every_steps=2",
                             "train.reconstructions=false"]
    pretrain(load_config(overrides=sets), data, str(tmp_path / "a"))
    rows = [json.loads(l) for l in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"step", "epoch", "loss", "lr", "images_per_s", "loss_rec", "loss_sd"} <= set(rows[-1])
    assert all("loss_rec_rel" in r and r["loss_rec_rel"] > 0 for r in rows)
    assert load_config(str(tmp_path / "a" / "config.yaml")).model.name == "vit_tiny_patch16"
    ck = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and ck["epoch"] == 1 and "center" in ck["model"] and ck["optimizer"]["state"]
    pretrain(load_config(overrides=sets), data, str(tmp_path / "b"))
    assert_same_checkpoint(ck, load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"))


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(tmp_path, tiny_overrides):
    data = str(folder_of_tiles(tmp_path / "tiles", n=32))
    sets = tiny_overrides + ["train.max_steps=20", "train.ckpt_every_steps=3", "train.reconstructions=false",
                             "train.log_every=1"]
    cmd = [sys.executable, "-m", "sdmae", "pretrain", "--data", data, "--set", *sets]
    subprocess.run(cmd + ["--out", str(tmp_path / "a")], check=True, capture_output=True, timeout=900)
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "b")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log = tmp_path / "b" / "log.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline:
        lines = log.read_text().splitlines() if log.exists() else []
        if lines and json.loads(lines[-1])["step"] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(log.read_text().splitlines()[-1])["step"]
    assert killed_at < 20
    subprocess.run(cmd + ["--out", str(tmp_path / "b")], check=True, capture_output=True, timeout=900)
    assert_same_checkpoint(load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt"),
                           load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt"))
    steps = [json.loads(l)["step"] for l in log.read_text().splitlines()]
    assert steps == list(range(1, 21))  # the log was cut back to the checkpoint, then continued


def test_loader_workers_ignore_stop_signals_sent_to_them(tmp_path, tiny_overrides, monkeypatch):
    """`pkill -f sdmae` signals the loader workers as well as the run (they share its command line). A worker
    that died of it would fail the run at its next batch, before the run's own stop at a step boundary; the
    workers ignore SIGTERM / SIGINT and leave the decision to the run, which checkpoints and stops."""
    import multiprocessing

    data = [str(folder_of_tiles(tmp_path / "tiles", n=32))]
    cfg = load_config(overrides=tiny_overrides + ["data.num_workers=1", "train.max_steps=8",
                                                  "train.reconstructions=false"])
    cls = type(build_method(cfg))
    original = cls.after_optimizer_step
    workers = []

    def signal_workers_then_run(self, step, total):
        original(self, step, total)
        if step == 1:
            workers.extend(p.pid for p in multiprocessing.active_children())
            for pid in workers:
                os.kill(pid, signal.SIGTERM)
                os.kill(pid, signal.SIGINT)
            time.sleep(0.5)  # a worker killed by them would be dead before the next batch is asked for
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(cls, "after_optimizer_step", signal_workers_then_run)
    summary = pretrain(cfg, data, str(tmp_path / "run"))
    assert workers, "the run started no loader worker"
    assert summary["stopped"] and summary["signal"] == signal.SIGTERM
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


def test_resume_with_changed_training_config_is_refused(tmp_path, tiny_overrides):
    data = [str(folder_of_tiles(tmp_path / "tiles", n=8))]
    sets = tiny_overrides + ["train.max_steps=1", "train.reconstructions=false"]
    pretrain(load_config(overrides=sets), data, str(tmp_path / "run"))
    with pytest.raises(UsageError, match="method.p"):
        pretrain(load_config(overrides=sets + ["method.p=0.5"]), data, str(tmp_path / "run"))
    # keys that do not change training may differ
    pretrain(load_config(overrides=sets + ["train.log_every=5"]), data, str(tmp_path / "run"))


def test_too_little_data_for_one_batch_is_a_usage_error(tmp_path, tiny_overrides):
    data = [str(folder_of_tiles(tmp_path / "tiles", n=3))]
    with pytest.raises(UsageError, match="fewer than one global batch"):
        pretrain(load_config(overrides=tiny_overrides + ["train.max_steps=1"]), data, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_bf16_autocast_step_on_cpu(tmp_path, tiny_overrides):
    data = [str(folder_of_tiles(tmp_path / "tiles", n=8))]
    pretrain(load_config(overrides=tiny_overrides + ["train.max_steps=2", "train.precision=bf16"]), data,
             str(tmp_path / "run"))
    rows = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (tmp_path / "run" / "reconstructions.png").stat().st_size > 1000


def test_gradient_accumulation_matches_the_large_batch(tmp_path, tiny_overrides):
    data = [str(folder_of_tiles(tmp_path / "tiles", n=16))]
    base = tiny_overrides + ["method.name=mae", "train.max_steps=2", "train.reconstructions=false"]
    pretrain(load_config(overrides=base + ["data.batch_size=8"]), data, str(tmp_path / "big"))
    pretrain(load_config(overrides=base + ["data.batch_size=4", "optim.accum_steps=2"]), data, str(tmp_path / "acc"))
    a = load_checkpoint(tmp_path / "big" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "acc" / "checkpoints" / "last.pt")["model"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


HOLD_LOCK = """import sys, time
from pathlib import Path
from sdmae.runlock import run_folder_lock
with run_folder_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_run_on_one_out_exits_2_and_a_killed_holder_leaves_no_lock(tmp_path, tiny_overrides):
    data = str(folder_of_tiles(tmp_path / "tiles", n=8))
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    stale = out / "checkpoints" / ".last.pt.tmp-4242"  # what a kill during a checkpoint write leaves
    stale.write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        sets = tiny_overrides + ["train.max_steps=1", "train.reconstructions=false"]
        r = subprocess.run([sys.executable, "-m", "sdmae", "pretrain", "--data", data, "--out", str(out), "--set",
                            *sets], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert f"--out {out} is in use by another run (pid {holder.pid}" in r.stderr
        assert "Traceback" not in r.stderr and not (out / "log.jsonl").exists()
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    pretrain(load_config(overrides=sets), [data], str(out))
    assert (out / "checkpoints" / "last.pt").exists() and not stale.exists()


def test_cuda_rng_restores_on_any_number_of_visible_gpus(monkeypatch):
    """Saved on a 4-GPU node, resumed where one GPU is visible (or the reverse): only the current device's
    generator is saved and restored (CUDA calls faked: no GPU here)."""
    from sdmae import checkpoint as C

    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a: torch.full((8,), 7, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, *a: restored.append(s))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: (_ for _ in ()).throw(IndexError("4 > 1")))
    state = C.rng_state()
    assert torch.equal(state["cuda"], torch.full((8,), 7, dtype=torch.uint8))
    C.set_rng_state(state)
    four = [torch.full((8,), k, dtype=torch.uint8) for k in range(4)]  # an older checkpoint: one per GPU
    C.set_rng_state({"torch": state["torch"], "cuda": four})
    assert [int(s[0]) for s in restored] == [7, 0]
