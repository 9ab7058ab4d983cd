"""`sdmae export` (timm round trip) and `sdmae embed` (order, paths, formats, slides, untrusted files)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sdmae.cli import main
from sdmae.config import load_config, to_dict
from sdmae.embed import INTERPOLATION, RESAMPLE
from sdmae.methods import build_method
from sdmae.checkpoint import save_atomic

TINY = ["model.name=vit_tiny_patch16", "model.img_size=32", "model.decoder_depth=1", "model.head_hidden_dim=64",
        "model.head_bottleneck_dim=32", "model.head_out_dim=128", "train.device=cpu", "method.name=sdmae"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SD-MAE run folder (random weights, non-zero biases) with an eval result next to it, and tiles."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY)
    method = build_method(cfg)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)  # MAE init zeroes biases: make a key mix-up visible
    save_atomic({"model": method.state_dict(), "config": to_dict(cfg), "step": 7, "epoch": 1,
                 "sdmae_version": "test"}, root / "run" / "checkpoints" / "last.pt")
    (root / "run" / "eval" / "knn").mkdir(parents=True)
    (root / "run" / "eval" / "knn" / "metrics.json").write_text(json.dumps(
        {"protocol": "knn", "accuracy": 0.8125, "balanced_accuracy": 0.75, "n_train": 10, "n_test": 16}))
    tiles = root / "tiles"
    rng = np.random.default_rng(0)
    for d in ("b", "a/deeper"):  # a nested folder (no class tree): paths sorted
        (tiles / d).mkdir(parents=True)
    for i, rel in enumerate(["b/z.png", "a/deeper/y.jpg", "a/deeper/x.png", "b/w.png", "b/v.tif"]):
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(tiles / rel)
    assert main(["export", "--ckpt", str(root / "run" / "checkpoints" / "last.pt"), "--out", str(root / "exp")]) == 0
    return {"root": root, "ckpt": root / "run" / "checkpoints" / "last.pt", "exp": root / "exp", "tiles": tiles,
            "method": method, "cfg": cfg}


def timm_inputs(files, cfg) -> torch.Tensor:
    """What a plain timm user feeds: PIL resize with the export's interpolation, the run's mean/std."""
    size = cfg.model.img_size
    mean, std = np.array(cfg.data.aug.mean, np.float32), np.array(cfg.data.aug.std, np.float32)
    x = [(np.asarray(Image.open(f).convert("RGB").resize((size, size), RESAMPLE[INTERPOLATION]), np.float32) / 255
          - mean) / std for f in files]
    return torch.from_numpy(np.stack(x)).permute(0, 3, 1, 2)


def test_export_loads_in_timm_three_ways(run):
    import timm
    from safetensors.torch import load_file

    meta = json.loads((run["exp"] / "config.json").read_text())
    assert meta["architecture"] == "vit_tiny_patch16_224" and "num_classes" not in meta["model_args"]
    assert meta["model_args"]["class_token"] is False and meta["model_args"]["global_pool"] == "avg"
    assert meta["pretrained_cfg"]["input_size"] == [3, 32, 32]
    state = load_file(str(run["exp"] / "model.safetensors"))
    assert not any(k.startswith(("encoder.", "decoder.", "student_head", "teacher_head")) for k in state)
    ref = run["method"].encoder.eval()
    torch.testing.assert_close(state["pos_embed"], ref.pos_embed.detach())  # the fixed sine-cosine table

    plain = timm.create_model(meta["architecture"], pretrained=False, num_classes=0, **meta["model_args"])
    missing, unexpected = plain.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    by_dir = timm.create_model(f"local-dir:{run['exp']}", pretrained=True)
    overlay = dict(file=str(run["exp"] / "model.safetensors"), **meta["pretrained_cfg"])
    by_name = timm.create_model(meta["architecture"], pretrained=True, pretrained_cfg_overlay=overlay,
                                **meta["model_args"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
        for m in (plain, by_dir, by_name):
            torch.testing.assert_close(m.eval()(x), want, atol=1e-5, rtol=1e-5)
    cfg = timm.data.resolve_data_config(model=by_dir)
    assert list(cfg["mean"]) == meta["pretrained_cfg"]["mean"] and cfg["interpolation"] == INTERPOLATION


def test_model_card_lists_config_and_metrics(run):
    card = (run["exp"] / "README.md").read_text()
    assert "library_name: timm" in card and "SD-MAE" in card and "step 7" in card
    assert "eval/knn/metrics.json" in card and "0.8125" in card
    assert "img_size: 32" in card  # the training config


def test_embed_matches_timm_features_and_input_order(run, tmp_path):
    import timm

    out = tmp_path / "f.npz"
    assert main(["embed", "--ckpt", str(run["ckpt"]), "--data", str(run["tiles"]), "--out", str(out),
                 "--batch-size", "2", "--num-workers", "0"]) == 0
    z = np.load(out, allow_pickle=False)
    files = sorted(str(p) for p in run["tiles"].rglob("*") if p.is_file())
    assert list(z["paths"]) == files and z["features"].shape == (5, 192) and z["features"].dtype == np.float32
    assert "coordinates" not in z and "labels" not in z
    m = timm.create_model(f"local-dir:{run['exp']}", pretrained=True).eval()
    with torch.no_grad():
        theirs = m(timm_inputs(files, run["cfg"])).numpy()
    cos = (theirs * z["features"]).sum(1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(z["features"], axis=1)
    assert cos.min() > 0.9999
    # the export folder gives the same features, and .h5 the same rows as .npz
    assert main(["embed", "--ckpt", str(run["exp"]), "--data", str(run["tiles"]), "--out", str(tmp_path / "f.h5"),
                 "--num-workers", "0"]) == 0
    import h5py

    with h5py.File(tmp_path / "f.h5") as h:
        np.testing.assert_allclose(h["features"][:], z["features"], atol=1e-5)
        assert [p.decode() for p in h["paths"][:]] == files


def test_embed_skips_unreadable_tiles_and_lists_them(run, tmp_path, capsys):
    data = tmp_path / "d"
    data.mkdir()
    for name in ("a.png", "c.png"):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(data / name)
    (data / "b.png").write_bytes(b"not an image")
    assert main(["embed", "--ckpt", str(run["ckpt"]), "--data", str(data), "--out", str(tmp_path / "f.npz"),
                 "--num-workers", "0"]) == 0
    z = np.load(tmp_path / "f.npz")
    assert [os.path.basename(p) for p in z["paths"]] == ["a.png", "c.png"]
    assert "b.png" in capsys.readouterr().err
    assert main(["embed", "--ckpt", str(run["ckpt"]), "--data", str(data), "--out", str(tmp_path / "g.npz"),
                 "--num-workers", "0", "--set", "data.strict=true"]) == 1
    assert not (tmp_path / "g.npz").exists()


def test_embed_slide_tiles_have_coordinates(run, tmp_path, sample_slide):
    out = tmp_path / "s.npz"
    assert main(["embed", "--ckpt", str(run["ckpt"]), "--data", str(sample_slide), "--out", str(out),
                 "--num-workers", "0", "--set", "data.tile_size=512"]) == 0
    z = np.load(out)
    n = len(z["paths"])
    assert n > 0 and z["coordinates"].shape == (n, 2) and z["features"].shape == (n, 192)
    for p, (x, y) in zip(z["paths"], z["coordinates"]):
        assert f"#x={x},y={y}" in p
    assert len({tuple(c) for c in z["coordinates"]}) == n


def test_bad_options_exit_2_before_work(run, tmp_path):
    tiles = str(run["tiles"])
    assert main(["embed", "--ckpt", str(run["ckpt"]), "--data", tiles, "--out", str(tmp_path / "f.csv")]) == 2
    assert main(["embed", "--ckpt", str(tmp_path / "missing.pt"), "--data", str(run["tiles"]),
                 "--out", str(tmp_path / "f.npz")]) == 2
    assert main(["export", "--ckpt", str(run["exp"]), "--out", str(tmp_path / "x")]) == 2
    assert main(["export", "--ckpt", str(run["ckpt"]), "--out", str(tmp_path / "x"), "--metrics",
                 str(tmp_path / "nope.json")]) == 2


def test_untrusted_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil(), "step": 1}, tmp_path / "evil.pt")
    assert main(["export", "--ckpt", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "x")]) == 1
    assert main(["embed", "--ckpt", str(tmp_path / "evil.pt"), "--data", str(tmp_path), "--out",
                 str(tmp_path / "e.npz")]) == 1
    assert main(["viz", "reconstruct", "--ckpt", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "r")]) == 1
    assert not marker.exists()


def test_a_checkpoint_whose_config_disagrees_with_its_weights_is_named(run, tmp_path, capsys):
    ckpt = torch.load(run["ckpt"], weights_only=True)
    ckpt["config"]["model"]["name"] = "vit_small_patch16"  # edited after training: 384 wide, weights 192
    save_atomic(ckpt, tmp_path / "edited.pt")
    for argv in (["export", "--ckpt", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "x")],
                 ["embed", "--ckpt", str(tmp_path / "edited.pt"), "--data", str(run["tiles"]),
                  "--out", str(tmp_path / "f.npz")]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{tmp_path / 'edited.pt'}: weights do not fit" in err[0], err
        assert "'pos_embed' is (1, 4, 192) in the file, (1, 4, 384) in the model" in err[0]  # the first mismatch


def eva_snippet(exp):
    import yaml

    return yaml.safe_load((exp / "eva_backbone.yaml").read_text())


def embed_features(run, tmp_path):
    out = tmp_path / "e.npz"
    assert main(["embed", "--ckpt", str(run["exp"]), "--data", str(run["tiles"]), "--out", str(out),
                 "--num-workers", "0"]) == 0
    z = np.load(out, allow_pickle=False)
    return list(z["paths"]), z["features"]


def test_eva_snippet_builds_the_encoder_with_timm_alone(run, tmp_path):
    """The snippet's arguments alone (as eva's TimmModel passes them to timm) rebuild the encoder: strict
    load, `sdmae embed`'s features with the snippet's mean and std."""
    import timm
    from safetensors.torch import load_file

    snip = eva_snippet(run["exp"])
    args = snip["backbone"]["init_args"]
    assert snip["backbone"]["class_path"] == "eva.vision.models.wrappers.TimmModel"
    assert os.path.isabs(args["checkpoint_path"]) and args["model_kwargs"]["img_size"] == 32
    m = timm.create_model(args["model_name"], pretrained=False, **args["model_kwargs"])
    m.load_state_dict(load_file(args["checkpoint_path"]), strict=True)
    assert snip["normalize"] == {"mean": run["cfg"].data.aug.mean, "std": run["cfg"].data.aug.std}
    files, feats = embed_features(run, tmp_path)
    cfg = run["cfg"]
    cfg.data.aug.mean, cfg.data.aug.std = snip["normalize"]["mean"], snip["normalize"]["std"]
    with torch.no_grad():
        theirs = m.eval()(timm_inputs(files, cfg)).numpy()
    np.testing.assert_allclose(theirs, feats, atol=1e-4)


def test_export_files_follow_the_umask(run, tmp_path):
    old = os.umask(0o027)
    try:
        assert main(["export", "--ckpt", str(run["ckpt"]), "--out", str(tmp_path / "x")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "x").iterdir()}
    assert set(modes) == {"model.safetensors", "config.json", "README.md", "eva_backbone.yaml"}
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.eva
def test_eva_timm_model_from_the_snippet_gives_embed_features(run, tmp_path):
    """kaiko-eva's own wrapper, built from the snippet (`pip install kaiko-eva`; skipped without it)."""
    wrappers = pytest.importorskip("eva.vision.models.wrappers", exc_type=ImportError,
                                   reason="kaiko-eva's vision part is not installed (pip install "
                                          "'kaiko-eva[vision]' to run this test)")
    args = eva_snippet(run["exp"])["backbone"]["init_args"]
    model = wrappers.TimmModel(**args).eval()
    files, feats = embed_features(run, tmp_path)
    with torch.no_grad():
        theirs = model(timm_inputs(files, run["cfg"])).numpy()
    np.testing.assert_allclose(theirs, feats, atol=1e-4)
