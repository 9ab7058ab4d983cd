"""The `sdmae` command. Each subcommand parses its options and calls one function of the package."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

from sdmae import __version__
from sdmae.analyze import add_analyze
from sdmae.argparsing import Parser
from sdmae.data.cli import add_bench_data, add_data, add_tile
from sdmae.dense.cli import add_detect, add_segment
from sdmae.errors import user_error
from sdmae.eval.cli import add_compare, add_fewshot, add_finetune, add_knn, add_linear
from sdmae.runlock import run_folder_lock
from sdmae.train.cli import add_bench_train
from sdmae.viz.cli import add_viz


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train an encoder (resumes from OUT/checkpoints/last.pt)",
                       description="Pre-train a ViT encoder with SD-MAE, MAE, MoCo v3 or DINO. Without --data: the built-in "
                                   "CC0 sample slide and the small CPU recipe (configs/demo_cpu.yaml).")
    p.add_argument("--config", help="YAML recipe (a path or a built-in name such as pcam_sdmae_vits16)")
    p.add_argument("--data", nargs="+", help="folders, class trees, CSV lists, PCam HDF5, packed folders or slides "
                                             "(several are mixed; PATH@SPLIT picks a split; docs/data.md)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, log.jsonl, checkpoints/")
    p.add_argument("--method", help="sdmae | mae | mocov3 | dino (same as --set method.name=...)")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.name=vit_tiny_patch16 train.max_steps=100")

    def run(a) -> int:
        # the run folder is locked before torch is even imported: a second run on it ends in a fraction of a
        # second, not after the seconds of start-up that a short first run may not outlive (rank 0 locks)
        with run_folder_lock(Path(a.out)) if os.environ.get("RANK", "0") == "0" else nullcontext():
            from sdmae.train.loop import main_pretrain

            return main_pretrain(a.config, a.set, a.method, a.data, a.out)

    p.set_defaults(run=run)


# `sdmae eval PROTOCOL ...`: each entry adds one protocol's parser to the eval group.
EVAL_COMMANDS: list = [add_linear, add_knn, add_fewshot, add_finetune, add_segment, add_detect]


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder (linear, knn, fewshot, finetune, segment, detect)")
    group = p.add_subparsers(dest="protocol", required=True, parser_class=Parser)
    for add in EVAL_COMMANDS:
        add(group)


def add_export(sub) -> None:
    p = sub.add_parser("export", help="the encoder as a timm model folder (safetensors + config.json + card)",
                       description="Writes DIR/model.safetensors (encoder only, timm key names), DIR/config.json "
                                   "(architecture, model_args, pretrained_cfg: timm.create_model('local-dir:DIR', "
                                   "pretrained=True) loads it) and a model card DIR/README.md.")
    p.add_argument("--ckpt", required=True, help="checkpoint file (OUT/checkpoints/last.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--metrics", nargs="+", default=[], metavar="FILE",
                   help="metrics.json files to list in the model card (those under the run folder are found)")

    def run(a) -> int:
        from sdmae.export import main_export

        return main_export(a.ckpt, a.out, a.metrics)

    p.set_defaults(run=run)


def add_embed(sub) -> None:
    p = sub.add_parser("embed", help="features of tiles or slides (tiled on the fly) to .npz or .h5",
                       description="Mean-pooled encoder features (the exported timm model's) in input order: "
                                   "features (N x D float32), paths, coordinates for slide tiles, labels and "
                                   "classes for labelled data.")
    p.add_argument("--ckpt", required=True, help="checkpoint file or `sdmae export` folder")
    p.add_argument("--data", nargs="+", required=True, help="folders, class trees or slides")
    p.add_argument("--out", required=True, help="FILE.npz, or FILE.h5 for outputs larger than memory")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 autocast on GPUs, fp32 on CPUs")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="data overrides, e.g. --set data.tile_size=512 data.mpp=0.5")

    def run(a) -> int:
        from sdmae.embed import main_embed

        return main_embed(a.ckpt, a.data, a.out, a.set, a.batch_size, a.num_workers, a.device, a.precision)

    p.set_defaults(run=run)


# `sdmae bench WHAT ...`: each entry adds one benchmark's parser to the bench group.
BENCH_COMMANDS: list = [add_bench_train, add_bench_data]


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks (train, data); each prints one JSON line last")
    group = p.add_subparsers(dest="bench", required=True, parser_class=Parser)
    for add in BENCH_COMMANDS:
        add(group)


COMMANDS = [add_pretrain, add_eval, add_export, add_embed, add_viz, add_compare, add_bench, add_tile, add_data, add_analyze]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sdmae", description="Self-supervised pre-training (MAE, SD-MAE) of Vision "
                                              "Transformers on histopathology images.")
    parser.add_argument("--version", action="version", version=f"sdmae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"sdmae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        err = user_error(e)
        if err is None:
            raise
        print(f"sdmae {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
