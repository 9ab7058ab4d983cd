"""Typed config: YAML, dotted overrides, errors that name the key; the CLI's exit codes."""
import subprocess
import sys

import pytest

from sdmae.config import DEMO_RECIPE, ConfigError, diff_training_keys, load_config, to_dict


def test_defaults_follow_the_official_code():
    c = load_config()
    assert (c.model.name, c.model.img_size, c.model.pos_embed) == ("vit_small_patch16", 224, "1d")
    assert (c.method.mask_ratio, c.method.p, c.method.student_temp, c.method.teacher_temp) == (0.75, 0.2, 0.1, 0.04)
    assert (c.method.center_momentum, c.method.center_on, c.method.teacher_stop_grad) == (0.9, "probs", False)
    assert (c.method.target_norm, c.model.head_out_dim, c.model.decoder_depth) == ("per_channel", 4096, 4)
    assert (c.optim.base_lr, c.optim.weight_decay, c.optim.min_lr) == (6e-4, 0.05, 1e-5)


def test_overrides_are_typed():
    c = load_config(overrides=["model.img_size=96", "method.p=0", "train.max_steps=5", "data.strict=true",
                               "optim.betas=[0.9, 0.95]", "train.max_steps=7"])
    assert c.model.img_size == 96 and c.method.p == 0.0 and isinstance(c.method.p, float)
    assert c.train.max_steps == 7 and c.data.strict is True and c.optim.betas == [0.9, 0.95]


@pytest.mark.parametrize("text,needle", [
    ("optim.no_such_key=1", "optim.no_such_key"),
    ("nosection.x=1", "nosection"),
    ("data.batch_size=abc", "data.batch_size"),
    ("data.batch_size=1.5", "data.batch_size"),
    ("data.strict=maybe", "data.strict"),
    ("model.img_size=true", "model.img_size"),
    ("train.precision=fp8", "train.precision"),
    ("method.mask_ratio=1.2", "method.mask_ratio"),
    ("optim.base_lr=-1", "optim.base_lr"),
    ("optim.base_lr=0", "optim.base_lr"),
    ("data.batch_size=0", "data.batch_size"),
    ("train.epochs=0", "train.epochs"),
    ("train.max_steps=0", "train.max_steps"),
    ("model.decoder_dim=64", "model.decoder_dim"),
    ("method.teacher_temp=0", "method.teacher_temp"),
    ("method.student_temp=-0.1", "method.student_temp"),
    ("model.head_out_dim=0", "model.head_out_dim"),
    ("optim.weight_decay=-0.05", "optim.weight_decay"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("optim.betas=[0.9,1.0]", "optim.betas"),
    ("optim.clip_grad=0", "optim.clip_grad"),
    ("method.views.blur_p=[1.0,1.5]", "method.views.blur_p"),
    ("model.drop_path=1.0", "model.drop_path"),
    ("data.aug.std=[0.2,0.2,0]", "data.aug.std"),
    ("data.aug.crop_scale_min=0", "data.aug.crop_scale_min"),
    ("method.moco_temp=0", "method.moco_temp"),
    ("model=3", "model"),
    ("noequals", "KEY=VALUE"),
])
def test_bad_overrides_name_the_key(text, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(overrides=[text])


def test_yaml_file_and_missing_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("model:\n  name: vit_tiny_patch16\ntrain:\n  epochs: 3\n")
    c = load_config(str(f), ["train.epochs=4"])
    assert c.model.name == "vit_tiny_patch16" and c.train.epochs == 4  # --set wins over the file
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    f.write_text("model:\n  nmae: x\n")
    with pytest.raises(ConfigError, match="model.nmae"):
        load_config(str(f))


def test_builtin_recipe_by_name_and_demo_recipe():
    c = load_config(str(DEMO_RECIPE))
    assert c.method.name == "sdmae" and c.train.device == "cpu"
    assert load_config("demo_cpu").model.name == c.model.name


def test_diff_ignores_keys_that_do_not_change_training():
    a = to_dict(load_config())
    b = to_dict(load_config(overrides=["data.num_workers=0", "train.log_every=3", "optim.base_lr=1e-3"]))
    assert diff_training_keys(a, b) == ["optim.base_lr"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "sdmae", *args], capture_output=True, text=True, timeout=120)


def test_cli_usage_errors_exit_2(tmp_path):
    r = run_cli("pretrain", "--out", str(tmp_path / "o"), "--set", "optim.no_such_key=1")
    assert r.returncode == 2 and "optim.no_such_key" in r.stderr
    r = run_cli("pretrain", "--out", str(tmp_path / "o"), "--set", "data.batch_size=abc")
    assert r.returncode == 2 and "data.batch_size" in r.stderr
    r = run_cli("pretrain", "--out", str(tmp_path / "o"), "--data", str(tmp_path / "nonexistent"))
    assert r.returncode == 2 and "nonexistent" in r.stderr
    r = run_cli("pretrain")  # --out missing
    assert r.returncode == 2 and "--out" in r.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_cli_help_for_every_command():
    r = run_cli("--help")
    assert r.returncode == 0 and "pretrain" in r.stdout
    r = run_cli("pretrain", "--help")
    assert r.returncode == 0 and "--set" in r.stdout


def test_a_mask_ratio_that_masks_nothing_is_refused_before_training():
    from sdmae.errors import UsageError
    from sdmae.methods import build_method

    cfg = load_config(overrides=["method.name=mae", "model.name=vit_tiny_patch16", "model.img_size=32",
                                 "method.mask_ratio=0.0"])
    with pytest.raises(UsageError, match=r"method\.mask_ratio.*masks none of the 4 patches"):
        build_method(cfg)
    cfg.method.mask_ratio = 0.25  # 1 of 4: the smallest ratio that masks a patch
    assert build_method(cfg).num_mask == 1


def test_a_renamed_key_is_read_from_old_checkpoints_and_named_in_new_input():
    old = to_dict(load_config())  # a config as a checkpoint saved it before the rename
    old["train"].pop("knn_val")
    old["train"]["knn_test"] = "val.csv"
    assert load_config(base=old).train.knn_val == "val.csv"
    assert diff_training_keys(old, to_dict(load_config(overrides=["train.knn_val=val.csv"]))) == []
    with pytest.raises(ConfigError, match="'train.knn_test' was renamed 'train.knn_val'"):
        load_config(overrides=["train.knn_test=val.csv"])


def test_a_run_saved_before_a_key_existed_resumes_at_that_keys_default():
    """Upgrading sdmae mid-run: the checkpoint's config lacks a key added since, which then reads as its default;
    set to anything else, the key is a difference and the resume is refused."""
    old = to_dict(load_config())
    old["method"].pop("sd_view")
    assert diff_training_keys(old, to_dict(load_config())) == []
    stain = load_config(overrides=["data.aug.hed_jitter=0.1", "method.sd_view=stain"])
    old["data"]["aug"]["hed_jitter"] = 0.1
    assert diff_training_keys(old, to_dict(stain)) == ["method.sd_view"]
