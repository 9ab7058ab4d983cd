"""The `sdmae` command. Each subcommand parses its options and calls one function of the package."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from sdmae import __version__
from sdmae.errors import SdmaeError


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with the message (argparse's default too)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train an encoder (resumes from OUT/checkpoints/last.pt)",
                       description="Pre-train a ViT encoder with MAE or SD-MAE. Without --data: the built-in "
                                   "CC0 sample slide and the small CPU recipe (configs/demo_cpu.yaml).")
    p.add_argument("--config", help="YAML recipe (a path or a built-in name such as pcam_sdmae_vits16)")
    p.add_argument("--data", nargs="+", help="folders, class trees or slides (several are mixed)")
    p.add_argument("--out", required=True, help="run folder: config.yaml, log.jsonl, checkpoints/")
    p.add_argument("--method", help="sdmae | mae (same as --set method.name=...)")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.name=vit_tiny_patch16 train.max_steps=100")

    def run(a) -> int:
        from sdmae.train.loop import main_pretrain

        return main_pretrain(a.config, a.set, a.method, a.data, a.out)

    p.set_defaults(run=run)


# `sdmae eval PROTOCOL ...`: each entry adds one protocol's parser to the eval group.
EVAL_COMMANDS: list = []


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder (linear, knn, fewshot, finetune, segment, detect)")
    group = p.add_subparsers(dest="protocol", required=True, parser_class=Parser)
    for add in EVAL_COMMANDS:
        add(group)


COMMANDS = [add_pretrain, add_eval]


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
    except SdmaeError as e:
        print(f"sdmae {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"sdmae {args.command}: interrupted", file=sys.stderr)
        return 130
