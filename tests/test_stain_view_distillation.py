"""`method.sd_view=stain`: the SD-MAE teacher (decoder features) reads the clean crop, the student (encoder) the
same crop and visible patches under stain and colour jitter; the reconstruction reads the clean crop."""
import pytest
import torch

from sdmae.config import ConfigError, load_config
from sdmae.data.batch import move_batch
from sdmae.methods import build_method

JITTER = ["data.aug.hed_jitter=0.1", "data.aug.color_jitter=0.3"]


def sdmae(tiny_overrides, *extra):
    torch.manual_seed(0)
    return build_method(load_config(overrides=tiny_overrides + JITTER + ["method.name=sdmae", "method.p=0.5",
                                                                         *extra]))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    clean, jittered = torch.randn(2, 3, 3, 32, 32, generator=g)
    mask = torch.stack([torch.randperm(4, generator=g) < 3 for _ in range(3)])
    return {"image": jittered, "image_clean": clean, "mask": mask}


def test_reconstruction_reads_the_clean_crop_and_the_student_the_jittered_one(tiny_overrides):
    stain, same = sdmae(tiny_overrides, "method.sd_view=stain"), sdmae(tiny_overrides)
    b = batch()

    def run(m, x):  # from the same (zero) centre: each forward moves it
        m.center.zero_()
        return m(x)

    with torch.no_grad():
        out = run(stain, b)
        clean_only = run(same, {"image": b["image_clean"], "mask": b["mask"]})  # same weights, one view
        other_jitter = run(stain, {**b, "image": batch(seed=1)["image"]})
        no_jitter = run(stain, {**b, "image": b["image_clean"]})
    assert float(out["loss_rec"]) == pytest.approx(float(clean_only["loss_rec"]), rel=1e-6)
    assert float(other_jitter["loss_rec"]) == pytest.approx(float(out["loss_rec"]), rel=1e-6)
    assert float(other_jitter["loss_sd"]) != pytest.approx(float(out["loss_sd"]), rel=1e-4)
    assert float(no_jitter["loss_sd"]) == pytest.approx(float(clean_only["loss_sd"]), rel=1e-5)


def test_the_encoder_learns_from_the_jittered_view_with_a_stopped_teacher(tiny_overrides):
    """With the teacher's gradient stopped and no reconstruction weight, what reaches the encoder comes only
    through the student's (jittered) view."""
    m = sdmae(tiny_overrides, "method.sd_view=stain", "method.teacher_stop_grad=true", "method.p=1.0")
    b = batch()
    b["image"].requires_grad_(True)
    b["image_clean"].requires_grad_(True)
    m(b)["loss"].backward()
    assert b["image"].grad.abs().sum() > 0
    assert b["image_clean"].grad is None or b["image_clean"].grad.abs().sum() == 0
    assert m.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_move_batch_makes_the_clean_twin_for_the_stain_view(tiny_overrides):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    params = torch.zeros(2, 17)
    params[:, 8:11], params[:, 14:17] = 0.9, 1.2  # haematoxylin-eosin-DAB scale factors, then b / c / s factors
    cfg = load_config(overrides=tiny_overrides + JITTER + ["method.sd_view=stain"])
    out = move_batch({"image": images, "image_aug": params}, torch.device("cpu"), cfg)
    assert (out["image"] - out["image_clean"]).abs().mean() > 0.01
    plain = load_config(overrides=tiny_overrides + JITTER)
    assert "image_clean" not in move_batch({"image": images, "image_aug": params}, torch.device("cpu"), plain)


@pytest.mark.parametrize("extra, fault", [
    (["method.sd_view=stain"], "data.aug.hed_jitter"),
    (JITTER + ["method.sd_view=stain", "method.name=mae"], "method.sd_view"),
    (JITTER + ["method.sd_view=stain", "method.p=0"], "method.sd_view"),
    (JITTER + ["method.sd_view=colour"], "method.sd_view"),
])
def test_stain_view_settings_that_cannot_work_are_refused(tiny_overrides, extra, fault):
    with pytest.raises(ConfigError, match=fault.replace(".", r"\.")):
        load_config(overrides=tiny_overrides + extra)
