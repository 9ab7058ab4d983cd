"""The encoder of an `sdmae eval finetune` run as a checkpoint that `sdmae eval` / `sdmae compare --ckpt` read.

Fine-tuning saves the whole timm classifier; run it with `eval.feature_norm=encoder` so the classifier keeps
the encoder's own final norm (the keys of sdmae's encoder, plus `head.*`). The result holds those weights
under `encoder.*` and the architecture's config, like a pre-training checkpoint.
Usage: python benchmarks/supervised_encoder.py FINETUNE_CKPT OUT.pt KEY=VALUE...   (the --set model.* items)
"""
import sys

from sdmae.config import load_config, to_dict
from sdmae.models import build_encoder
from sdmae.checkpoint import load_checkpoint, save_atomic


def main(src: str, dst: str, *sets: str) -> None:
    cfg = load_config(overrides=list(sets))
    state = load_checkpoint(src)["model"]
    encoder = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm."))}
    build_encoder(cfg.model.name, cfg.model.img_size, cfg.model.pos_embed).load_state_dict(encoder)  # strict
    save_atomic({"model": {f"encoder.{k}": v for k, v in encoder.items()}, "config": to_dict(cfg),
                 "method": "supervised"}, dst)


if __name__ == "__main__":
    main(*sys.argv[1:])
