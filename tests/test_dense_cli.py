"""`sdmae eval segment|detect` end to end on a few small crops of the shared MoNuSeg subset (written to a temporary
folder: the data's licence allows tests, not shipping it), resume, and bad input."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.cli import main

TINY = ["model.name=vit_tiny_patch16", "model.img_size=32", "eval.num_workers=0", "eval.device=cpu",
        "eval.dense.crop_size=64", "eval.dense.batch_size=2", "eval.dense.iters=2", "eval.dense.overlays=1",
        "eval.dense.seg.head_channels=16", "eval.dense.det.proposals=50", "eval.dense.det.roi_samples=16",
        "eval.dense.det.fpn_channels=32", "eval.dense.det.box_head_dim=32"]


def crop_split(src, dst, boxes):
    """(image id index, top, left, height, width) crops of a monuseg_subset split -> images/, masks_binary/,
    masks_instance/ under dst."""
    ids = sorted(p.stem for p in (src / "images").glob("*.tif"))
    for sub in ("images", "masks_binary", "masks_instance"):
        (dst / sub).mkdir(parents=True)
    for k, (i, t, l, h, w) in enumerate(boxes):
        box = (l, t, l + w, t + h)
        Image.open(src / "images" / f"{ids[i]}.tif").convert("RGB").crop(box).save(dst / "images" / f"c{k}.png")
        Image.open(src / "masks_binary" / f"{ids[i]}.png").crop(box).save(dst / "masks_binary" / f"c{k}.png")
        inst = np.asarray(Image.open(src / "masks_instance" / f"{ids[i]}.png"), dtype=np.int32)[t:t + h, l:l + w]
        Image.fromarray(inst.astype(np.uint16)).save(dst / "masks_instance" / f"c{k}.png")


@pytest.fixture(scope="module")
def crops(monuseg, tmp_path_factory):
    root = tmp_path_factory.mktemp("monuseg_crops")
    crop_split(monuseg / "train", root / "train", [(0, 100, 100, 96, 96), (3, 400, 200, 96, 128)])
    crop_split(monuseg / "test", root / "test", [(1, 300, 300, 80, 112)])
    return root


def run(protocol, crops, out, *extra):
    return main(["eval", protocol, "--init", "random", "--train", str(crops / "train"), "--test",
                 str(crops / "test"), "--out", str(out), "--set", *TINY, *extra])


def in_unit(m, keys):
    return all(isinstance(m[k], float) and 0.0 <= m[k] <= 1.0 for k in keys)


@pytest.mark.slow
def test_segment_end_to_end_and_resume(crops, tmp_path, capsys):
    out = tmp_path / "seg"
    assert run("segment", crops, out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "segment" and m["n_train"] == 2 and m["n_test"] == 1
    assert in_unit(m, ["dice", "miou", "pixel_accuracy", "aji", "pq", "dq", "sq"])
    assert m["per_image"][0]["image"] == "c0" and m["runs"][0]["train_iters_run"] == 2
    assert (out / "overlays" / "c0.png").is_file() and (out / "overlays" / "c0_prob.png").is_file()
    assert Image.open(out / "overlays" / "c0.png").size == (112, 80)
    assert (out / "checkpoints" / "last.pt").is_file()
    assert len((out / "log.jsonl").read_text().splitlines()) == 1
    assert "dice" in capsys.readouterr().out

    # the same command again: training is complete, only the evaluation runs, with the same numbers
    assert run("segment", crops, out) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["runs"][0]["train_iters_run"] == 0 and again["dice"] == m["dice"] and again["aji"] == m["aji"]

    # other training settings in the same folder: refused, exit 2, naming the key
    assert run("segment", crops, out, "eval.dense.lr=1e-3") == 2
    assert "dense.lr" in capsys.readouterr().err


@pytest.mark.slow
def test_detect_end_to_end(crops, tmp_path):
    out = tmp_path / "det"
    assert run("detect", crops, out) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["protocol"] == "detect" and in_unit(m, ["map", "map50", "map75", "recall", "recall50"])
    assert m["per_image"][0]["n_true"] > 5
    assert (out / "overlays" / "c0.png").is_file()


@pytest.mark.slow
def test_interrupted_training_resumes_exactly(tmp_path):
    """Stopped after the checkpoint at iteration 2 of 4 and resumed, the run ends with the same weights as one
    that never stopped (crops are a function of (seed, index); the RNG state is in the checkpoint)."""
    from sdmae.config import load_eval_config
    from sdmae.dense.backbone import set_drop_path
    from sdmae.dense.crops import CropDataset
    from sdmae.dense.seg_data import NucleiImage
    from sdmae.dense.seg_train import SegStep, build_seg_model
    from sdmae.dense.trainer import run_identity, train
    from sdmae.models.vit import build_encoder

    cfg = load_eval_config(["eval.dense.crop_size=32", "eval.dense.batch_size=2", "eval.dense.iters=4",
                            "eval.dense.ckpt_every=2", "eval.dense.seg.head_channels=8",
                            "eval.dense.drop_path=0.1"]).dense
    rng = np.random.default_rng(0)
    inst = np.zeros((48, 48), np.int32)
    inst[5:15, 5:15], inst[20:40, 25:35] = 1, 2
    data = [NucleiImage("a", rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), (inst > 0).astype(np.uint8),
                        inst, False)]
    cpu = torch.device("cpu")
    step = SegStep(cfg, [0.5] * 3, [0.25] * 3, cpu)

    def fresh():
        torch.manual_seed(0)
        enc = build_encoder("vit_tiny_patch16", 32)
        set_drop_path(enc, cfg.drop_path)  # randomness in the forward, restored from the checkpoint
        return build_seg_model(enc, cfg)

    ident = run_identity(cfg, seed=0)
    straight = fresh()
    train(straight, "backbone.encoder", CropDataset(data, cfg, 0), step, cfg, cpu, 0, tmp_path / "a", ident, "a")

    calls = []

    def stop_after_two(model, batch):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return step(model, batch)

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), "backbone.encoder", CropDataset(data, cfg, 0), stop_after_two, cfg, cpu, 0,
              tmp_path / "b", ident, "b")
    resumed = fresh()
    summary = train(resumed, "backbone.encoder", CropDataset(data, cfg, 0), step, cfg, cpu, 0, tmp_path / "b",
                    ident, "b")
    assert summary["steps_run"] == 2
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_input_fails_before_training(crops, tmp_path, capsys):
    assert main(["eval", "segment", "--init", "random", "--train", str(tmp_path / "nope"), "--test",
                 str(crops / "test"), "--out", str(tmp_path / "o"), "--set", *TINY]) == 2
    assert "--train: no such folder" in capsys.readouterr().err
    assert run("segment", crops, tmp_path / "o", "eval.dense.crop_size=100") == 2
    assert "eval.dense.crop_size" in capsys.readouterr().err
    assert run("detect", crops, tmp_path / "o", "eval.dense.seg.instances=magic") == 2
    assert not (tmp_path / "o" / "checkpoints").exists()
