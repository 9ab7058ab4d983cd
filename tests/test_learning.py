"""Pre-training must learn, not only run: the test that catches "loss goes down, features are random".

Synthetic 32 px tiles of 4 px stripes in two random colours, horizontal (class 0) or vertical (class 1), at a
random phase. Freshly drawn weights already read the orientation fairly well (kNN about 0.88 to 0.91:
every 8 px patch holds an edge); a short MAE run with per-patch normalised targets (`joint`), which take the
colours out of the target and leave the stripes, must bring the reconstruction (`loss_rec_rel`) well below 1
and raise a kNN probe on held-out tiles above the untrained encoder (+4 to +7 points over 400 steps in four
seeds; a run whose encoder does not change, because the optimiser step is skipped or the encoder's output is
detached from the loss, gives exactly +0). A short SD-MAE run must bring its distillation loss down.
Measured failing on the three sabotaged variants in docs/results.md ("Learning test").
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.config import load_config
from sdmae.eval.monitor import KnnMonitor
from sdmae.methods import build_method
from sdmae.train.loop import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
STEPS = 400


def stripes(root: Path, n: int, seed: int) -> Path:
    """n tiles in a class tree: 0 = horizontal stripes, 1 = vertical ones; 4 px wide, two random colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for c in (0, 1):
        (root / str(c)).mkdir(parents=True)
    for i in range(n):
        c = i % 2
        band = (((yy if c == 0 else xx) + rng.integers(0, 8)) // 4) % 2
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = np.where(band[..., None] == 1, a, b) + rng.normal(0, 6, (SIZE, SIZE, 3))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / str(c) / f"t{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stripes")
    return stripes(root / "train", 256, 0), stripes(root / "val", 256, 1)


def overrides(method: str, steps: int, train: Path, val: Path) -> list[str]:
    """ViT-tiny/8 at 32 px, MAE's per-patch normalised targets, the demo's lr; no rotations (they would swap the
    classes)."""
    return [f"method.name={method}", "model.name=vit_tiny_patch8", "model.img_size=32", "method.target_norm=joint",
            "method.p=0.03", "model.head_hidden_dim=256", "model.head_bottleneck_dim=64", "model.head_out_dim=256",
            "model.decoder_depth=2", "data.batch_size=32", "data.num_workers=0", "data.aug.crop=none",
            "data.aug.rot90=false", "optim.base_lr=2e-2", "optim.betas=[0.9,0.95]", "optim.warmup_epochs=1",
            "train.epochs=100", f"train.max_steps={steps}", "train.device=cpu", "train.log_every=10",
            "train.reconstructions=false", f"train.knn_every={steps}", f"train.knn_train={train}",
            f"train.knn_val={val}"]


def run(sets: list[str], data: Path, out: Path) -> list[dict]:
    pretrain(load_config(overrides=sets), [str(data)], str(out))
    return [json.loads(line) for line in open(out / "log.jsonl")]


def test_mae_features_learn_the_stripes_orientation(tiles, tmp_path):
    train, val = tiles
    cfg = load_config(overrides=overrides("mae", STEPS, train, val))
    torch.manual_seed(cfg.train.seed)  # the run's own initial weights
    before = KnnMonitor(cfg, torch.device("cpu"))(build_method(cfg).encoder)["knn_balanced_accuracy"]
    rows = run(overrides("mae", STEPS, train, val), train, tmp_path / "mae")
    fifth = rows[-len(rows) // 5:]
    rel = sum(r["loss_rec_rel"] for r in fifth) / len(fifth)
    after = rows[-1]["knn_balanced_accuracy"]
    print(f"MAE {STEPS} steps: loss_rec_rel last fifth {rel:.3f}, kNN balanced accuracy {before:.3f} -> {after:.3f}")
    assert rel < 0.75, f"reconstruction did not learn: loss_rec_rel {rel:.3f} over the last fifth"
    assert after >= before + 0.025, f"kNN did not improve: {before:.3f} untrained -> {after:.3f} after {STEPS} steps"


def test_sdmae_distillation_loss_falls(tiles, tmp_path):
    train, val = tiles
    rows = run(overrides("sdmae", 100, train, val), train, tmp_path / "sdmae")
    first, last = rows[0]["loss_sd"], rows[-1]["loss_sd"]
    print(f"SD-MAE 100 steps: loss_sd {first:.4f} -> {last:.4f}")
    assert 0 <= last < 0.5 * first, f"loss_sd {first:.4f} -> {last:.4f}: the distillation term does not pull together"
