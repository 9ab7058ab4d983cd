"""Evaluation end to end on small files: features and their cache, the `sdmae eval` protocols, fine-tuning with
exact resumption, named benchmarks, `sdmae compare` and kNN monitoring during pre-training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdmae.cli import main
from sdmae.config import load_config, load_eval_config, to_dict
from sdmae.encoders import load_encoder
from sdmae.errors import UsageError
from sdmae.eval.features import encode, feature_model, pooled
from sdmae.eval.labelled import labels_of, open_split
from sdmae.models.vit import build_encoder
from sdmae.checkpoint import save_atomic

TINY = ["model.name=vit_tiny_patch16", "model.img_size=32"]
QUIET = ["eval.num_workers=0", "eval.batch_size=16"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_tree(root: Path, n_train: int = 10, n_test: int = 5, classes=("a", "b")) -> Path:
    """A class tree of noisy coloured tiles: class 'a' reddish, 'b' bluish (separable by any encoder)."""
    rng = np.random.default_rng(0)
    colours = {"a": (200, 60, 80), "b": (60, 80, 200), "c": (90, 200, 90)}
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.array(colours[c])[None, None] + rng.normal(0, 30, (24, 24, 3))
                Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(d / f"{c}{i}.png")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("tree"))


def write_ckpt(path: Path, seed: int) -> Path:
    """A checkpoint laid out like pre-training's (encoder.* keys + config), without pre-training."""
    cfg = load_config(overrides=TINY)
    torch.manual_seed(seed)
    enc = build_encoder(cfg.model.name, cfg.model.img_size)
    save_atomic({"model": {f"encoder.{k}": v for k, v in enc.state_dict().items()}, "config": to_dict(cfg)}, path)
    return path


def check_consistent(m: dict) -> None:
    cm = np.array(m["confusion_matrix"], float)
    assert cm.sum() == m["n_test"]
    assert np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])
    assert np.mean(np.diag(cm) / cm.sum(1)) == pytest.approx(m["balanced_accuracy"])


def test_official_pooling_matches_its_definition():
    """official: mean of the pre-norm tokens, then a parameter-free LayerNorm; encoder: mean of normed tokens."""
    cfg = load_config(overrides=TINY)
    enc = load_encoder(init="random", overrides=TINY)
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    hook = enc.model.norm.register_forward_hook(lambda m, inp, out: captured.update(pre=inp[0], post=out))
    enc.model.forward_features(x)
    hook.remove()
    with torch.no_grad():
        official = pooled(feature_model(enc, "official"), x)
        own = pooled(feature_model(enc, "encoder"), x)
        raw = pooled(feature_model(enc, "none"), x)
    mean_pre = captured["pre"].mean(1)
    assert torch.allclose(official, F.layer_norm(mean_pre, (mean_pre.shape[-1],), eps=1e-6), atol=1e-5)
    assert torch.allclose(own, captured["post"].mean(1), atol=1e-5)
    assert torch.allclose(raw, mean_pre, atol=1e-5)
    assert isinstance(enc.model.norm, torch.nn.LayerNorm)  # the encoder itself is left as it was
    assert cfg.model.img_size == 32


def test_feature_cache_hits_and_invalidates_when_checkpoint_changes(tree, tmp_path):
    ecfg = load_eval_config(QUIET + [f"eval.cache_dir={tmp_path / 'cache'}"])
    cfg = load_config()
    ckpt = write_ckpt(tmp_path / "last.pt", seed=0)
    src = open_split([str(tree / "test")], cfg.data, "--test")
    labels = labels_of(src)
    first = encode(load_encoder(str(ckpt)), src, labels, ecfg, cfg.data, "t")
    again = encode(load_encoder(str(ckpt)), src, labels, ecfg, cfg.data, "t")
    assert not first.cached and again.cached
    assert np.array_equal(first.features, again.features) and first.features.shape == (10, 192)
    write_ckpt(ckpt, seed=1)  # new weights at the same path
    changed = encode(load_encoder(str(ckpt)), src, labels, ecfg, cfg.data, "t")
    assert not changed.cached and not np.allclose(changed.features, first.features)


def test_eval_protocols_end_to_end(tree, tmp_path, capsys):
    base = ["--train", str(tree / "train"), "--test", str(tree / "test"), "--set", *TINY, *QUIET,
            f"eval.cache_dir={tmp_path / 'cache'}", "eval.shots=3", "eval.episodes=4"]
    for proto in ("linear", "knn", "fewshot"):
        assert main(["eval", proto, "--init", "random", "--out", str(tmp_path / proto), "--seeds", "2", *base]) == 0
        m = json.loads((tmp_path / proto / "metrics.json").read_text())
        assert m["protocol"] == proto and m["classes"] == ["a", "b"] and m["seeds"] == [0, 1]
        assert m["balanced_accuracy"] > 0.9 and m["n_test"] == 10 and len(m["runs"]) == 2
        assert set(m["std"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "auroc"}
        assert m["config"]["eval"]["knn_k"] == 20
        check_consistent(m)
        for run in m["runs"]:
            check_consistent(run)
    assert "linear (random, 2 seed(s)): balanced_accuracy" in capsys.readouterr().out
    # the paper's probe on the same (cached) features
    assert main(["eval", "linear", "--init", "random", "--out", str(tmp_path / "paper"), *base,
                 "eval.linear=paper", "eval.linear_epochs=5", "eval.linear_warmup_epochs=1"]) == 0
    m = json.loads((tmp_path / "paper" / "metrics.json").read_text())
    assert m["linear"] == "paper" and m["n_train"] == 20
    check_consistent(m)


def test_eval_bad_inputs_exit_2(tree, tmp_path, capsys):
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.new("RGB", (24, 24)).save(unlabelled / "x.png")
    ckpt = write_ckpt(tmp_path / "c.pt", seed=0)
    train, test = ["--train", str(tree / "train")], ["--test", str(tree / "test")]
    rnd = ["--init", "random", "--out", str(tmp_path / "o")]
    cases = [
        ([*rnd, "--train", str(unlabelled), *test, "--set", *TINY], "has no labels"),
        ([*rnd, *train, "--test", str(tmp_path / "missing"), "--set", *TINY], "missing"),
        ([*rnd, *train, *test, "--set", *TINY, "eval.knn_k=zero"], "eval.knn_k"),
        (["--ckpt", str(ckpt), "--out", str(tmp_path / "o"), *train, *test, "--set", "model.name=vit_small_patch16"],
         "model."),
        ([*rnd, "--benchmark", "nct-crc-he", "--root", str(tmp_path)], "NCT-CRC-HE-100K"),
        ([*rnd, *train], "--test"),
    ]
    for args, needle in cases:
        assert main(["eval", "knn", *args]) == 2, args
        assert needle in capsys.readouterr().err
    third = make_tree(tmp_path / "three", 2, 2, classes=("a", "b", "c"))
    assert main(["eval", "knn", "--init", "random", "--train", str(tree / "train"), "--test",
                 str(third / "test"), "--out", str(tmp_path / "o"), "--set", *TINY, *QUIET]) == 2
    assert "classes the training set lacks: c" in capsys.readouterr().err


def test_named_benchmarks_resolve_to_paths(tmp_path):
    from sdmae.eval.benchmarks import resolve

    for folder in ("NCT-CRC-HE-100K", "CRC-VAL-HE-7K"):
        (tmp_path / folder).mkdir()
    b = resolve("nct-crc-he-8", str(tmp_path))
    assert b.train == [str(tmp_path / "NCT-CRC-HE-100K")] and b.sets == ["eval.exclude_classes=[BACK]"]
    assert resolve("nct-crc-he", str(tmp_path)).sets == []
    (tmp_path / "camelyonpatch_level_2_split_train_x.h5.gz").write_bytes(b"")
    with pytest.raises(UsageError, match="gunzip"):
        resolve("pcam", str(tmp_path))
    (tmp_path / "annotations.csv").write_text("Image Name,Majority Vote Label,Partition\n")
    (tmp_path / "images").mkdir()
    assert resolve("mhist", str(tmp_path)).test == [f"{tmp_path}@test"]
    with pytest.raises(UsageError, match="unknown --benchmark"):
        resolve("imagenet", str(tmp_path))


def test_exclude_classes_drops_a_class(tree, tmp_path):
    three = make_tree(tmp_path / "three", 4, 2, classes=("a", "b", "c"))
    assert main(["eval", "knn", "--init", "random", "--train", str(three / "train"), "--test", str(three / "test"),
                 "--out", str(tmp_path / "o"), "--set", *TINY, *QUIET, "eval.exclude_classes=[c]",
                 f"eval.cache_dir={tmp_path / 'cache'}"]) == 0
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["classes"] == ["a", "b"] and m["n_test"] == 4 and m["n_train"] == 8


def test_finetune_resumes_exactly(tree, tmp_path, monkeypatch):
    from sdmae.eval import finetune
    from sdmae.train import distributed

    args = ["eval", "finetune", "--init", "random", "--train", str(tree / "train"), "--test", str(tree / "test"),
            "--set", *TINY, *QUIET, "eval.finetune.batch_size=4", "eval.finetune.epochs=2",
            "eval.finetune.warmup_epochs=1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert whole["steps"] == 10 and whole["epochs"] == 2 and len(whole["history"]) == 2
    assert set(whole["best_on_test"]) >= {"epoch", "accuracy"} and "last10_mean" in whole
    check_consistent(whole)

    calls = {"n": 0}

    def stop_at_step_3(env, value):  # a SIGTERM that every rank agrees on, after the third step
        calls["n"] += 1
        return 15 if calls["n"] == 3 else 0

    monkeypatch.setattr(finetune.D, "agreed_max", stop_at_step_3)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(finetune.D, "agreed_max", distributed.agreed_max)
    assert main([*args, "--out", str(tmp_path / "cut")]) == 0
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert cut["history"] == whole["history"]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a different recipe in the same folder is refused rather than mixed
    assert main([*args, "eval.finetune.base_lr=0.01", "--out", str(tmp_path / "cut")]) == 2


def test_compare_grid_table_and_reuse(tree, tmp_path, capsys):
    ckpt = write_ckpt(tmp_path / "runA" / "checkpoints" / "last.pt", seed=3)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
encoders:
  random: {{init: random}}
  A: {{ckpt: {ckpt}}}
datasets:
  colours: {{train: {tree / 'train'}, test: {tree / 'test'}}}
protocols: [knn, linear]
seeds: 2
set: [{', '.join(TINY + QUIET)}, eval.cache_dir={tmp_path / 'cache'}]
""")
    out = tmp_path / "cmp"
    assert main(["compare", "--spec", str(spec), "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| Method | colours knn | colours linear |" in md
    assert "| random |" in md and "| A |" in md and "±" in md
    table = json.loads((out / "compare.json").read_text())
    cell = table["rows"][1]["cells"][0]
    assert cell["balanced_accuracy"]["mean"] > 0.9 and len(cell["balanced_accuracy"]["per_seed"]) == 2
    stamp = (out / "runs" / "A" / "colours" / "knn" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["compare", "--spec", str(spec), "--out", str(out)]) == 0
    assert (out / "runs" / "A" / "colours" / "knn" / "metrics.json").stat().st_mtime_ns == stamp  # reused
    assert "compare: A / colours" not in capsys.readouterr().err
    assert main(["compare", "--encoders", "random", "--datasets", f"x={tree / 'train'}", "--out", str(out)]) == 2


def test_compare_tables_any_reported_score():
    """Dense protocols report mIoU, AJI, PQ or mAP beside their headline metric: each one can be tabled."""
    from sdmae.eval.compare import cell_summary, render_markdown

    run = {"miou": 0.7, "dice": 0.8, "aji": 0.45, "n_train": 8, "train_seconds": 3.0, "per_image": []}
    result = {"protocol": "segment", **run, "std": {"miou": 0.01, "dice": 0.02, "aji": 0.03}, "seeds": [0, 1],
              "runs": [run, run]}
    cell = cell_summary(result)
    assert cell["aji"]["mean"] == 0.45 and cell["miou"]["std"] == 0.01 and "per_image" not in cell
    table = {"metrics": ["aji", "miou"], "seeds": 2, "columns": [{"dataset": "MoNuSeg", "protocol": "segment"}],
             "rows": [{"method": "sdmae", "cells": [cell]}]}
    md = render_markdown(table)
    assert "| sdmae | 45.0 ± 3.0 |" in md and "| sdmae | 70.0 ± 1.0 |" in md


def test_knn_monitor_logs_during_pretraining(tree, tmp_path, tiny_overrides):
    out = tmp_path / "pt"
    assert main(["pretrain", "--data", str(tree / "train"), "--out", str(out), "--set", *tiny_overrides,
                 "train.max_steps=4", "train.knn_every=2", f"train.knn_train={tree / 'train'}",
                 f"train.knn_val={tree / 'test'}", "train.log_every=3", "train.reconstructions=false"]) == 0
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    knn = [r for r in rows if "knn_accuracy" in r]
    assert [r["step"] for r in knn] == [2, 4]
    assert all(0.0 <= r["knn_balanced_accuracy"] <= 1.0 for r in knn)


def test_knn_monitor_draws_no_random_numbers(tree):
    from sdmae.eval.monitor import KnnMonitor

    cfg = load_config(overrides=TINY + [f"train.knn_train={tree / 'train'}", f"train.knn_val={tree / 'test'}",
                                        "train.knn_every=1", "train.knn_max=6"])
    mon = KnnMonitor(cfg, torch.device("cpu"))
    enc = build_encoder(cfg.model.name, cfg.model.img_size)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    state = torch.get_rng_state()
    res = mon(enc)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert len(mon.y_train) == 6 and 0.0 <= res["knn_accuracy"] <= 1.0
    with pytest.raises(UsageError, match="train.knn_val"):
        KnnMonitor(load_config(overrides=["train.knn_every=5", f"train.knn_train={tree / 'train'}"]),
                   torch.device("cpu"))


@pytest.mark.slow
@pytest.mark.dist
def test_finetune_two_processes_match_one(tree, tmp_path):
    """torchrun with 2 processes x batch 2 trains on the global batches of 1 process x batch 4."""
    import os
    import subprocess
    import sys

    common = ["eval", "finetune", "--init", "random", "--train", str(tree / "train"), "--test", str(tree / "test"),
              "--set", *TINY, *QUIET, "eval.finetune.epochs=2", "eval.finetune.warmup_epochs=1",
              "eval.finetune.drop_path=0", "eval.finetune.mixup=0", "eval.finetune.cutmix=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "sdmae", *common, "eval.finetune.batch_size=2", "--out", str(tmp_path / "two")],
                   check=True, env=env, capture_output=True, timeout=600)
    assert main([*common, "eval.finetune.batch_size=4", "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert [h["train_loss"] for h in two["history"]] == pytest.approx([h["train_loss"] for h in one["history"]],
                                                                      rel=1e-5)
    assert two["confusion_matrix"] == one["confusion_matrix"]


def test_compare_recomputes_a_cell_whose_data_changed_in_place(tmp_path):
    data = make_tree(tmp_path / "data")
    ckpt = write_ckpt(tmp_path / "runA" / "checkpoints" / "last.pt", seed=3)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""
encoders:
  A: {{ckpt: {ckpt}}}
datasets:
  colours: {{train: {data / 'train'}, test: {data / 'test'}}}
protocols: [knn]
set: [{', '.join(TINY + QUIET)}, eval.cache_dir={tmp_path / 'cache'}]
""")
    out = tmp_path / "cmp"

    def balanced_accuracy() -> float:
        assert main(["compare", "--spec", str(spec), "--out", str(out)]) == 0
        return json.loads((out / "compare.json").read_text())["rows"][0]["cells"][0]["balanced_accuracy"]["mean"]

    before = balanced_accuracy()
    test = data / "test"  # the test class folders swapped in place: every test label flipped
    (test / "a").rename(test / "tmp")
    (test / "b").rename(test / "a")
    (test / "tmp").rename(test / "b")
    assert balanced_accuracy() == pytest.approx(1 - before)  # not the stale cell
