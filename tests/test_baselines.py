"""MoCo v3 and DINO: losses against the papers' formulas, momentum updates, multi-crop, gathered negatives
under two gloo processes, learning on a small batch, exact resume and timm loading."""
import json
import math
import os
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sdmae.config import load_config
from sdmae.data.transforms import sample_generator
from sdmae.methods import build_method
from sdmae.methods.diagnostics import collapse_stats
from sdmae.methods.dino import dino_loss, encode
from sdmae.methods.ema import cosine_momentum, ema_update, update_center
from sdmae.methods.mocov3 import info_nce
from sdmae.checkpoint import load_checkpoint
from sdmae.train.loop import pretrain

BASELINE = ["method.moco_mlp_dim=64", "method.moco_dim=32", "method.views.local_crops=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def tiny(tiny_overrides):
    return tiny_overrides + BASELINE


def cfg_for(name, sets, *more):
    return load_config(overrides=sets + [f"method.name={name}", *more])


def random_tile(seed=0, size=48):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def make_batch(method, n, seed=0):
    """What the loop hands to forward: the method's sample function, collated, normalised."""
    from sdmae.data.batch import move_batch

    fn = method.sample_fn()
    items = [fn(random_tile(seed + i), sample_generator(seed, 0, i)) for i in range(n)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return move_batch(batch, torch.device("cpu"), method.cfg)


def test_info_nce_matches_the_moco_v3_formula():
    g = torch.Generator().manual_seed(0)
    q, k, tau = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), 0.2
    loss, _ = info_nce(q, k, tau)
    qn = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in q.tolist()]
    kn = [[x / math.sqrt(sum(y * y for y in v)) for x in v] for v in k.tolist()]
    terms = []
    for i in range(6):
        s = [sum(a * b for a, b in zip(qn[i], kn[j])) / tau for j in range(6)]
        terms.append(-math.log(math.exp(s[i]) / sum(math.exp(x) for x in s)))
    assert loss.item() == pytest.approx(2 * tau * sum(terms) / 6, rel=1e-5)


def test_dino_loss_matches_the_paper_formula():
    g = torch.Generator().manual_seed(1)
    B, K, V = 3, 5, 4  # 2 global + 2 local views
    student, teacher, center = torch.randn(V * B, K, generator=g), torch.randn(2 * B, K, generator=g), \
        torch.randn(1, K, generator=g)
    loss, probs, _ = dino_loss(student, teacher, center, 0.1, 0.04)

    def softmax(v):
        e = [math.exp(x - max(v)) for x in v]
        return [x / sum(e) for x in e]

    total, pairs = 0.0, 0
    for a in range(2):
        for v in range(V):
            if v == a:
                continue
            for b in range(B):
                P = softmax([(t - c) / 0.04 for t, c in zip(teacher[a * B + b].tolist(), center[0].tolist())])
                Q = softmax([s / 0.1 for s in student[v * B + b].tolist()])
                total += -sum(p * math.log(q) for p, q in zip(P, Q)) / B
            pairs += 1
    assert pairs == 6 and loss.item() == pytest.approx(total / pairs, rel=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(2 * B))


def test_cosine_momentum_and_ema_update_follow_the_formula():
    assert cosine_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.9) == pytest.approx(1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t0, t, s in zip(before, teacher.parameters(), student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s)
    c = torch.ones(1, 3)
    update_center(c, torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]]), 0.9)
    assert torch.allclose(c, 0.9 * torch.ones(1, 3) + 0.1 * torch.tensor([[2.0, 3.0, 4.0]]))


def test_method_momentum_updates_after_each_step(tiny):
    for name, teacher, student, shift in (("mocov3", "momentum_encoder", "encoder", 1),
                                          ("dino", "encoder", "student_encoder", 0)):
        m = build_method(cfg_for(name, tiny, "method.momentum=0.9"))
        with torch.no_grad():
            for p in getattr(m, student).parameters():
                p.add_(1.0)
        t0 = [p.clone() for p in getattr(m, teacher).parameters()]
        m.after_optimizer_step(3, 10)
        mom = cosine_momentum(3 + shift, 10, 0.9)  # MoCo v3 uses the next iteration's momentum
        for a, t, s in zip(t0, getattr(m, teacher).parameters(), getattr(m, student).parameters()):
            assert torch.allclose(t, mom * a + (1 - mom) * s), name


def test_dino_teacher_temperature_warmup_and_last_layer_freeze(tiny):
    m = build_method(cfg_for("dino", tiny, "method.warmup_teacher_temp=0.04", "method.teacher_temp=0.07",
                             "method.warmup_teacher_temp_epochs=30", "method.freeze_last_layer_epochs=1",
                             "train.epochs=100"))
    m.set_progress(0, 1000, 10)
    assert m.teacher_temp == pytest.approx(0.04) and m.freeze_steps == 10
    m.set_progress(150, 1000, 10)
    assert m.teacher_temp == pytest.approx(0.055)
    m.set_progress(400, 1000, 10)
    assert m.teacher_temp == pytest.approx(0.07)
    for step, frozen in ((9, True), (10, False)):
        m.set_progress(step, 1000, 10)
        for p in m.student_head.parameters():
            p.grad = torch.ones_like(p)
        m.before_optimizer_step(step, 10)
        assert (m.student_head.last_layer.weight.grad is None) == frozen
        assert m.student_head.mlp[0].weight.grad is not None


def test_collapse_stats_tell_the_two_collapses_apart():
    K = 16
    uniform = collapse_stats(torch.full((8, K), 1 / K))
    assert uniform["teacher_entropy"].item() == pytest.approx(math.log(K), rel=1e-5)
    assert uniform["kl_uniform"].item() == pytest.approx(0.0, abs=1e-6)
    one_hot = collapse_stats(F.one_hot(torch.zeros(8, dtype=torch.long), K).float())
    assert one_hot["teacher_entropy"].item() == pytest.approx(0.0, abs=1e-6)
    assert one_hot["kl_uniform"].item() == pytest.approx(math.log(K), rel=1e-5)
    probs = torch.softmax(torch.randn(8, K), -1)
    both = collapse_stats(probs, torch.log(probs))
    assert both["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert both["student_entropy"].item() == pytest.approx(both["teacher_entropy"].item(), rel=1e-5)
    assert collapse_stats(embeddings=torch.ones(8, 32))["embed_std"].item() == pytest.approx(0.0, abs=1e-6)
    spread = collapse_stats(embeddings=torch.randn(4096, 32))["embed_std"].item()
    assert 0.9 < spread < 1.1


def test_every_distillation_method_logs_the_collapse_stats(tiny):
    from sdmae.methods.masking import MaskSampler

    g = torch.Generator().manual_seed(0)
    sd = build_method(cfg_for("sdmae", tiny))
    out = sd({"image": torch.randn(4, 3, 32, 32), "mask": torch.stack([MaskSampler(4, 3)(g)["mask"] for _ in range(4)])})
    assert {"teacher_entropy", "student_entropy", "kl", "kl_uniform", "embed_std"} <= set(out)
    dino = build_method(cfg_for("dino", tiny))
    assert {"teacher_entropy", "kl_uniform", "embed_std", "teacher_temp"} <= set(dino(make_batch(dino, 4)))
    moco = build_method(cfg_for("mocov3", tiny))
    assert {"embed_std", "contrast_acc", "momentum"} <= set(moco(make_batch(moco, 4)))


def test_multicrop_views_shapes_and_per_sample_randomness(tiny):
    m = build_method(cfg_for("dino", tiny, "method.views.local_crops=3"))
    fn = m.sample_fn()
    out = fn(random_tile(size=96), sample_generator(0, 0, 5))
    assert out["views"].shape == (2, 3, 32, 32) and out["views"].dtype == torch.uint8
    assert out["local"].shape == (3, 3, 16, 16) and out["local"].dtype == torch.uint8
    again = fn(random_tile(size=96), sample_generator(0, 0, 5))
    assert torch.equal(out["views"], again["views"]) and torch.equal(out["local"], again["local"])
    other = fn(random_tile(size=96), sample_generator(0, 0, 6))
    assert not torch.equal(out["views"], other["views"])
    assert not torch.equal(out["views"][0], out["views"][1])
    arr = fn(np.asarray(random_tile(size=96)), sample_generator(0, 0, 5))  # fixed-size sources give arrays
    assert torch.equal(arr["views"], out["views"])
    moco = build_method(cfg_for("mocov3", tiny)).sample_fn()(random_tile(size=96), sample_generator(0, 0, 5))
    assert set(moco) == {"views"} and moco["views"].shape == (2, 3, 32, 32)
    batch = make_batch(m, 2)
    assert batch["views"].dtype == torch.float32 and batch["local"].shape == (2, 3, 3, 16, 16)


def test_hed_jitter_option_changes_the_views(tiny):
    base = build_method(cfg_for("mocov3", tiny)).sample_fn()(random_tile(size=96), sample_generator(0, 0, 1))
    hed = build_method(cfg_for("mocov3", tiny, "data.aug.hed_jitter=0.2")).sample_fn()(
        random_tile(size=96), sample_generator(0, 0, 1))
    assert hed["views"].shape == base["views"].shape and not torch.equal(hed["views"], base["views"])


def test_local_crop_encoding_resamples_the_position_embedding(tiny):
    m = build_method(cfg_for("dino", tiny)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encode(m.encoder, x), m.encoder.forward_features(x).mean(1))
        # a 16 px crop of a 32 px encoder: one token, position embedding averaged to one entry
        assert encode(m.encoder, x[..., :16, :16]).shape == (2, m.encoder.embed_dim)


@pytest.mark.parametrize("name", ["mocov3", "dino"])
def test_tiny_model_loss_falls_on_a_small_batch(tiny, name):
    torch.manual_seed(0)
    m = build_method(cfg_for(name, tiny))
    batch = make_batch(m, 4)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(8):
        m.set_progress(step, 8, 8)
        loss = m(batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        m.after_optimizer_step(step, 8)
        losses.append(loss.item())
    assert all(map(math.isfinite, losses))
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.05, losses


def folder_of_tiles(root, n=16, size=40):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        random_tile(i, size).save(root / f"t{i:03d}.png")
    return str(root)


def state_tensors(ckpt):
    out = dict(ckpt["model"])
    for i, s in ckpt["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": v for k, v in s.items()})
    return out


@pytest.mark.parametrize("name", ["mocov3", "dino"])
def test_interrupted_run_resumes_bit_identically_and_loads_in_timm(tmp_path, tiny, name, monkeypatch):
    import timm

    from sdmae.encoders import encoder_state
    from sdmae.models.vit import timm_model_args

    data = [folder_of_tiles(tmp_path / "tiles")]
    cfg = cfg_for(name, tiny, "train.max_steps=4", "train.epochs=1", "train.reconstructions=false",
                  "method.freeze_last_layer_epochs=0.5")
    pretrain(cfg, data, str(tmp_path / "a"))
    cls = type(build_method(cfg))
    original = cls.after_optimizer_step

    def stop_after_second_step(self, step, total):
        original(self, step, total)
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop checkpoints at this step boundary and stops

    monkeypatch.setattr(cls, "after_optimizer_step", stop_after_second_step)
    assert pretrain(cfg, data, str(tmp_path / "b"))["stopped"]
    monkeypatch.setattr(cls, "after_optimizer_step", original)
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 2
    pretrain(cfg, data, str(tmp_path / "b"))
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    ta, tb = state_tensors(a), state_tensors(b)
    assert a["step"] == b["step"] == 4 and set(ta) == set(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta), [k for k in ta if not torch.equal(ta[k], tb[k])]
    rows = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "embed_std" in rows[-1] and "momentum" in rows[-1]

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **timm_model_args(cfg.model.name, 32))
    vit.load_state_dict(encoder_state(a["model"]))  # strict: every timm key present, nothing extra
    m = build_method(cfg).eval()
    m.load_state_dict(a["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit(x), m.encoder.forward_head(m.encoder.forward_features(x), pre_logits=True),
                              atol=1e-5)


def _gloo_worker(rank, world, init_file, out_dir, sets):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = build_method(load_config(overrides=sets))
        batch = make_batch(m, 4)
        half = {k: v[rank * 2:(rank + 1) * 2] for k, v in batch.items()}
        loss = m(half)["loss"]
        loss.backward()
        grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
        for g in grads.values():
            dist.all_reduce(g)
            g /= world  # what DDP does
        buffers = {n: b.clone() for n, b in m.named_buffers() if "running" in n}
        torch.save({"loss": loss.detach(), "grads": grads, "buffers": buffers}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_gathered_negatives_under_two_gloo_processes_equal_one_process(tmp_path, tiny):
    """Two processes with batch 2 (keys gathered, BatchNorm over both) = one process with the batch of 4."""
    import torch.multiprocessing as mp

    sets = tiny + ["method.name=mocov3"]
    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "rdzv"), str(tmp_path), sets), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"{i}.pt", weights_only=True) for i in range(2)]
    torch.manual_seed(0)
    m = build_method(load_config(overrides=sets))
    loss = m(make_batch(m, 4))["loss"]
    loss.backward()
    assert ((r[0]["loss"] + r[1]["loss"]) / 2).item() == pytest.approx(loss.item(), rel=1e-5)
    grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert set(grads) == set(r[0]["grads"])
    scale = max(g.abs().max() for g in grads.values())
    for n, g in grads.items():  # float32 sums in another order: equal to 1e-4 of the largest gradient
        assert (r[0]["grads"][n] - g).abs().max() <= 1e-4 * scale, n
    for n, b in m.named_buffers():
        if "running" in n:
            assert (r[0]["buffers"][n] - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6, n
