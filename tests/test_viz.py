"""Pictures: reconstruction de-normalisation, explicit attention, and the PNGs the viz commands write."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdmae.cli import main
from sdmae.config import load_config, to_dict
from sdmae.methods import build_method
from sdmae.methods.masking import patchify
from sdmae.checkpoint import save_atomic
from sdmae.viz.attention import block_attentions, explicit_attention, received, rollout
from sdmae.viz.curves import panel_of
from sdmae.viz.reconstruct import fixed_masks, reconstruct

TINY = ["model.name=vit_tiny_patch16", "model.img_size=32", "model.decoder_depth=1", "model.head_hidden_dim=64",
        "model.head_bottleneck_dim=32", "model.head_out_dim=128", "train.device=cpu"]


def tiny_method(name: str, *extra: str):
    torch.manual_seed(0)
    cfg = load_config(overrides=TINY + [f"method.name={name}", *extra])
    return build_method(cfg).eval(), cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny MAE and SD-MAE checkpoint (random weights) and a folder of 5 tiles."""
    root = tmp_path_factory.mktemp("viz")
    out = {}
    for name in ("mae", "sdmae"):
        method, cfg = tiny_method(name)
        out[name] = root / name / "checkpoints" / "last.pt"
        save_atomic({"model": method.state_dict(), "config": to_dict(cfg), "step": 1, "epoch": 0}, out[name])
    tiles = root / "tiles"
    tiles.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        a = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # not square: centre-cropped, then resized
        Image.fromarray(a).save(tiles / f"t{i}.png")
    out["tiles"] = tiles
    return out


def png_array(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32)


@pytest.mark.parametrize("target_norm", ["per_channel", "joint", "none"])
def test_denormalisation_inverts_target_normalisation(target_norm):
    """A decoder that predicts the exact normalised targets must give back the original pixels."""
    method, _ = tiny_method("mae", f"method.target_norm={target_norm}")
    images = torch.randn(2, 3, 32, 32) * 0.7 + 0.2
    mask = fixed_masks(2, method.encoder.num_patches, 0.5, seed=3)
    real = method.encode_decode

    def perfect(x, m):
        z, h, _, ids_keep, ids_mask = real(x, m)
        return z, h, method.targets(x, ids_mask), ids_keep, ids_mask

    method.encode_decode = perfect
    out = reconstruct(method, images, mask)
    torch.testing.assert_close(out["pasted"], images, atol=1e-5, rtol=1e-5)
    shown = patchify(out["pred"], 16)[mask]
    torch.testing.assert_close(shown, patchify(images, 16)[mask], atol=1e-5, rtol=1e-5)
    assert torch.all(patchify(out["pred"], 16)[~mask] == 0)
    assert torch.all(patchify(out["masked"], 16)[mask] == 0)


def test_masks_are_fixed_by_seed():
    a, b, c = fixed_masks(4, 16, 0.75, 0), fixed_masks(4, 16, 0.75, 0), fixed_masks(4, 16, 0.75, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum(1).tolist() == [12] * 4


def test_explicit_attention_times_v_equals_fused_output():
    method, _ = tiny_method("mae")
    attn = method.encoder.blocks[-1].attn
    assert attn.fused_attn  # the module under test really uses scaled_dot_product_attention
    x = torch.randn(2, 16, attn.qkv.in_features)
    weights = explicit_attention(attn, x)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, attn.num_heads, 16))
    v = attn.qkv(x).reshape(2, 16, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[2]
    ours = attn.proj((weights @ v).transpose(1, 2).reshape(2, 16, -1))
    with torch.no_grad():
        torch.testing.assert_close(ours, attn(x), atol=1e-5, rtol=1e-4)


def test_block_attentions_capture_each_block_input():
    method, _ = tiny_method("mae")
    enc = method.encoder
    images = torch.randn(1, 3, 32, 32)
    got = block_attentions(enc, images)
    assert len(got) == len(enc.blocks) and got[0].shape == (1, 3, 4, 4)
    with torch.no_grad():  # block 0's input is the embedded patches plus position embedding
        x0 = enc.norm_pre(enc._pos_embed(enc.patch_embed(images)))
        torch.testing.assert_close(got[0], explicit_attention(enc.blocks[0].attn, enc.blocks[0].norm1(x0)))
    torch.testing.assert_close(received(got[-1]).sum(-1), torch.ones(1, 3))
    r = rollout(got)
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 4))
    one = F.normalize(0.5 * got[0].mean(1) + 0.5 * torch.eye(4), p=1, dim=-1)
    torch.testing.assert_close(rollout(got[:1]), one)


def test_viz_reconstruct_and_attention_write_pictures(checkpoints, tmp_path):
    rec, att = tmp_path / "rec", tmp_path / "att"
    assert main(["viz", "reconstruct", "--ckpt", str(checkpoints["mae"]), "--data", str(checkpoints["tiles"]),
                 "--out", str(rec), "--n", "3"]) == 0
    assert main(["viz", "attention", "--ckpt", str(checkpoints["mae"]), "--compare", str(checkpoints["sdmae"]),
                 "--data", str(checkpoints["tiles"]), "--out", str(att), "--n", "3"]) == 0
    assert main(["viz", "attention", "--ckpt", str(checkpoints["sdmae"]), "--data", str(checkpoints["tiles"]),
                 "--out", str(tmp_path / "heads"), "--n", "2", "--rollout"]) == 0
    grid, singles = png_array(rec / "reconstructions.png"), sorted((rec / "images").glob("*.png"))
    assert len(singles) == 3 and grid.std() > 5
    one = png_array(singles[0])
    assert min(one.shape[:2]) >= 64 and one.std() > 5
    # 3 rows of 4 columns: as wide as one row, about three rows tall
    assert grid.shape[1] == one.shape[1] and 2.5 < grid.shape[0] / one.shape[0] < 3.2
    cmp_grid = png_array(att / "attention.png")
    assert cmp_grid.std() > 5 and len(list((att / "images").glob("*.png"))) == 3
    assert 0.7 < cmp_grid.shape[1] / cmp_grid.shape[0] < 1.2  # 3 rows x (tile, MAE, SD-MAE)
    maps = np.load(att / "attention.npz")
    assert list(maps["labels"]) == ["MAE", "SD-MAE"] and maps["summary_0"].shape == (3, 2, 2)
    heads = png_array(tmp_path / "heads" / "attention.png")
    assert heads.shape[1] / heads.shape[0] > 2  # 2 rows x (tile, rollout, 3 heads)
    # fixed mask seed: the same command draws the same picture
    assert main(["viz", "reconstruct", "--ckpt", str(checkpoints["mae"]), "--data", str(checkpoints["tiles"]),
                 "--out", str(tmp_path / "rec2"), "--n", "3"]) == 0
    assert np.array_equal(grid, png_array(tmp_path / "rec2" / "reconstructions.png"))


def test_viz_reconstruct_refuses_export_folder(checkpoints, tmp_path, capsys):
    assert main(["viz", "reconstruct", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "decoder" in capsys.readouterr().err


def test_viz_curves_groups_keys_and_draws(tmp_path):
    rows = [{"step": s, "epoch": 0, "lr": 1e-3 / s, "loss": 2.0 / s, "loss_rec": 1.5 / s, "loss_sd": 0.5 / s,
             "teacher_entropy": 3.0, "student_entropy": 4.0, "kl": 0.1 * s, "images_per_s": 10.0}
            for s in range(1, 30)]
    rows[10]["knn_accuracy"] = 0.6
    rows[20]["knn_accuracy"] = 0.7
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "lo')
    assert main(["viz", "curves", "--run", str(run), str(run / "log.jsonl"), "--out", str(tmp_path / "c")]) == 0
    img = png_array(tmp_path / "c" / "curves.png")
    assert img.std() > 5 and img.shape[0] > 3 * 250  # five panels in two columns: three rows
    assert [panel_of(k) for k in ("loss_sd", "lr", "kl", "teacher_entropy", "knn_accuracy", "images_per_s",
                                 "knn_seconds")] == [
        "losses", "learning rate", "collapse signals", "collapse signals", "kNN / monitoring", "images per second",
        "other"]
    assert main(["viz", "curves", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "c")]) == 2


def test_viz_embedding_tsne_coloured_by_class(checkpoints, tmp_path):
    tree = tmp_path / "tree"
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        (tree / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tree / c / f"{i}.png")
    assert main(["viz", "embedding", "--ckpt", str(checkpoints["mae"]), "--data", str(tree), "--out",
                 str(tmp_path / "e"), "--projection", "tsne", "--num-workers", "0"]) == 0
    z = np.load(tmp_path / "e" / "embedding.npz")
    assert z["xy"].shape == (8, 2) and list(z["classes"]) == ["a", "b"] and z["labels"].tolist() == [0] * 4 + [1] * 4
    assert png_array(tmp_path / "e" / "embedding.png").std() > 5
