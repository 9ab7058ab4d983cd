"""`sdmae export`: the encoder of a checkpoint as a timm model folder.

DIR/model.safetensors holds the encoder only, under timm `VisionTransformer` key names; DIR/config.json
follows timm's Hugging Face layout (`architecture`, `num_classes`, `model_args`, `pretrained_cfg`), so
`timm.create_model("local-dir:DIR", pretrained=True)`, `timm.create_model(architecture,
pretrained=True, pretrained_cfg_overlay=dict(file=..., **pretrained_cfg), **model_args)` and a plain
`load_state_dict` all rebuild it (headless: the overlay's num_classes=0, or pass num_classes=0; without
either timm adds its default 1000-class head, which the encoder-only file does not have).
`sdmae_config` (the run config) lets sdmae read the folder back (`--ckpt DIR`).
DIR/README.md is a model card with the training config and any metrics found next to the run.
DIR/eva_backbone.yaml is the `backbone:` block kaiko-eva needs (its `TimmModel` wrapper with every argument
timm needs, and the checkpoint's absolute path) plus the `normalize:` mean and std its transforms must use
(docs/eva.md). Every file is created with the user's umask, like any other file they write.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml

from sdmae import __version__
from sdmae.config import Config, load_config, to_dict
from sdmae.embed import INTERPOLATION
from sdmae.encoders import encoder_state
from sdmae.errors import SdmaeError, UsageError
from sdmae.models.vit import build_encoder, timm_arch_name, timm_model_args
from sdmae.checkpoint import load_checkpoint, load_weights

METHOD_NAMES = {"sdmae": "SD-MAE", "mae": "MAE", "mocov3": "MoCo v3", "dino": "DINO"}
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc")


def export_model_args(cfg: Config) -> dict:
    """timm keyword arguments for this encoder. `num_classes` is left out (callers choose the head;
    config.json's top-level num_classes=0 makes `local-dir:` loads headless). timm's `pos_embed='learn'`
    means "a stored table": it holds the fixed sine-cosine values, frozen in sdmae."""
    args = {k: v for k, v in timm_model_args(cfg.model.name, cfg.model.img_size).items() if k != "num_classes"}
    args["pos_embed"] = "learn"
    return args


def pretrained_cfg(cfg: Config, method: str) -> dict:
    """timm PretrainedCfg fields: how to feed the encoder (whole tile resized, the run's mean/std)."""
    s = cfg.model.img_size
    return {
        "tag": method,
        "custom_load": False,
        "input_size": [3, s, s],
        "fixed_input_size": True,
        "interpolation": INTERPOLATION,
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": list(cfg.data.aug.mean),
        "std": list(cfg.data.aug.std),
        "num_classes": 0,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_name": "Self-distillation Augmented Masked Autoencoders for Histopathological Image Understanding",
        "paper_ids": "arXiv:2203.16983",
    }


EVA_WRAPPER = "eva.vision.models.wrappers.TimmModel"


def eva_backbone(cfg: Config, weights: Path) -> dict:
    """kaiko-eva's view of the export: eva's `TimmModel` calls `timm.create_model(model_name,
    pretrained_cfg={file, num_classes: 0}, **model_kwargs)`, so model_kwargs must carry every argument of
    `export_model_args` (eva's registry names and default transforms would silently drop them)."""
    return {
        "backbone": {"class_path": EVA_WRAPPER,
                     "init_args": {"model_name": timm_arch_name(cfg.model.name), "pretrained": False,
                                   "checkpoint_path": str(weights.resolve()),
                                   "model_kwargs": {**export_model_args(cfg), "num_classes": 0}}},
        "normalize": {"mean": list(cfg.data.aug.mean), "std": list(cfg.data.aug.std)},
        "resize": cfg.model.img_size,
        "in_features": timm_model_args(cfg.model.name, cfg.model.img_size)["embed_dim"],
    }


def eva_yaml(cfg: Config, weights: Path) -> str:
    head = (f"# kaiko-eva backbone for this export ({cfg.model.name} at {cfg.model.img_size} px; the timm name is "
            f"only the family:\n# img_size and patch_size are in model_kwargs). Use with eva: see sdmae's "
            f"docs/eva.md. Moving this folder:\n# run `sdmae export` again or edit checkpoint_path.\n")
    return head + yaml.safe_dump(eva_backbone(cfg, weights), sort_keys=False)


def user_mode(path: Path) -> None:
    """Gives `path` the mode a plain `open(..., "w")` would (0666 less the umask): safetensors writes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def build_timm(cfg: Config) -> torch.nn.Module:
    import timm

    return timm.create_model(timm_arch_name(cfg.model.name), pretrained=False, num_classes=0,
                             **export_model_args(cfg))


@torch.no_grad()
def check_same_features(cfg: Config, state: dict, model: torch.nn.Module, tol: float = 1e-4) -> float:
    """Runs sdmae's encoder and the timm model on one random image: they must agree (max abs difference)."""
    ours = build_encoder(cfg.model.name, cfg.model.img_size, cfg.model.pos_embed).eval()
    ours.load_state_dict(state)
    x = torch.randn(1, 3, cfg.model.img_size, cfg.model.img_size, generator=torch.Generator().manual_seed(0))
    diff = (ours(x) - model.eval()(x)).abs().max().item()
    if diff > tol:
        raise SdmaeError(f"timm's {timm_arch_name(cfg.model.name)} does not reproduce the encoder "
                         f"(max feature difference {diff:.2e}); this timm version is not compatible")
    return diff


def run_dir_of(ckpt: Path) -> Path:
    """OUT for OUT/checkpoints/last.pt, otherwise the checkpoint's folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def find_metrics(run_dir: Path, extra: Sequence[str], skip: Path) -> list[tuple[str, dict]]:
    """metrics.json files under the run folder (`sdmae eval ... --out` inside it) plus `--metrics` files."""
    files = [p for p in sorted(run_dir.rglob("metrics.json")) if skip not in p.parents]
    found = []
    for p in files + [Path(e) for e in extra]:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            if str(p) in extra:
                raise UsageError(f"--metrics {p}: cannot read it as JSON ({e})") from e
            print(f"warning: ignoring unreadable {p} ({e})", file=sys.stderr)
            continue
        if isinstance(data, dict):
            try:
                label = str(Path(p).resolve().relative_to(run_dir))
            except ValueError:
                label = str(p)
            found.append((label, data))
    return found


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))


def model_card(cfg: Config, arch: str, args: dict, ckpt: dict, ckpt_path: Path,
               metrics: list[tuple[str, dict]]) -> str:
    method = METHOD_NAMES.get(cfg.method.name, cfg.method.name)
    args_text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    lines = [
        "---", "library_name: timm", "tags:", "- image-feature-extraction", "- timm", "- histopathology",
        f"- {cfg.method.name}", "pipeline_tag: image-feature-extraction", "---", "",
        f"# {cfg.model.name} ({method}), {cfg.model.img_size} px",
        "",
        f"A ViT encoder pre-trained with {method} by sdmae {ckpt.get('sdmae_version', '')} (exported by sdmae "
        f"{__version__} from `{ckpt_path.name}`, step {ckpt.get('step', '?')}, epoch {ckpt.get('epoch', '?')}). "
        "Encoder only: no class token, fixed sine-cosine position embedding (stored as timm's `pos_embed`), "
        "final LayerNorm, features = mean of the patch tokens.",
        "",
        "## Use",
        "```python",
        "import json, timm",
        "folder = \"path/to/this/folder\"",
        "model = timm.create_model(f\"local-dir:{folder}\", pretrained=True)  # headless: model(x) -> (B, "
        f"{timm_model_args(cfg.model.name, cfg.model.img_size)['embed_dim']})",
        "# or by name, with the arguments in config.json (pretrained_cfg carries num_classes=0, mean, std):",
        "cfg = json.load(open(f\"{folder}/config.json\"))",
        "model = timm.create_model(cfg[\"architecture\"], pretrained=True, **cfg[\"model_args\"],",
        "    pretrained_cfg_overlay=dict(file=f\"{folder}/model.safetensors\", **cfg[\"pretrained_cfg\"]))",
        "data_cfg = timm.data.resolve_data_config(model=model)  # the preprocessing below",
        "```",
        f"`{arch}` with {args_text}.",
        "",
        f"Input: the whole tile resized to {cfg.model.img_size} x {cfg.model.img_size} "
        f"({INTERPOLATION}), RGB in [0, 1] normalised with mean {list(cfg.data.aug.mean)} and std "
        f"{list(cfg.data.aug.std)}. `sdmae embed --ckpt THIS_FOLDER --data TILES --out feats.npz` gives the "
        "same features.",
        "",
        "## Metrics found next to the run",
    ]
    if metrics:
        lines += ["| file | protocol | " + " | ".join(METRIC_KEYS) + " | n_train | n_test |",
                  "|---|---|" + "---|" * (len(METRIC_KEYS) + 2)]
        for label, m in metrics:
            lines.append(f"| {label} | {_fmt(m.get('protocol'))} | "
                         + " | ".join(_fmt(m.get(k)) for k in METRIC_KEYS)
                         + f" | {_fmt(m.get('n_train'))} | {_fmt(m.get('n_test'))} |")
    else:
        lines.append("None (run `sdmae eval ... --out RUN/eval/NAME` to add some, then export again).")
    lines += ["", "## Training config", "```yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).rstrip(), "```",
              "", "## Citation",
              "Luo et al., Self-distillation Augmented Masked Autoencoders for Histopathological Image "
              "Understanding, arXiv:2203.16983.", ""]
    return "\n".join(lines)


def export(ckpt_path: str, out_dir: str, metrics_files: Sequence[str] = ()) -> Path:
    from safetensors.torch import save_file

    path = Path(ckpt_path)
    if path.is_dir():
        raise UsageError(f"--ckpt {ckpt_path} is a folder; export needs a checkpoint file (OUT/checkpoints/last.pt)")
    for m in metrics_files:
        if not Path(m).is_file():
            raise UsageError(f"--metrics: no such file: {m}")
    ckpt = load_checkpoint(path)
    cfg = load_config(base=ckpt.get("config", {}))
    state = encoder_state(ckpt["model"])
    if not state:
        raise SdmaeError(f"{path} has no encoder weights (no 'encoder.' keys in its model)")
    arch, args = timm_arch_name(cfg.model.name), export_model_args(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_timm(cfg)
    load_weights(model, state, path, f"timm's {arch} with {cfg.model.name} at {cfg.model.img_size} px of its config")
    check_same_features(cfg, state, model)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    weights = out / "model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    user_mode(weights)
    meta = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": model.num_features,
        "global_pool": "avg",
        "model_args": args,
        "pretrained_cfg": pretrained_cfg(cfg, cfg.method.name),
        "sdmae_config": to_dict(cfg),
        "sdmae": {"version": __version__, "method": cfg.method.name, "checkpoint": str(path.resolve()),
                  "step": ckpt.get("step"), "epoch": ckpt.get("epoch")},
    }
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    found = find_metrics(run_dir_of(path.resolve()), list(metrics_files), out.resolve())
    (out / "README.md").write_text(model_card(cfg, arch, args, ckpt, path, found))
    (out / "eva_backbone.yaml").write_text(eva_yaml(cfg, weights))
    return out


def main_export(ckpt: str, out: str, metrics: Optional[Sequence[str]] = None) -> int:
    folder = export(ckpt, out, metrics or ())
    print(f"exported the encoder to {folder} (model.safetensors, config.json, README.md, eva_backbone.yaml)", file=sys.stderr)
    return 0
