"""Command-line parser of `sdmae bench train` (heavy imports happen when it runs)."""
from __future__ import annotations


def add_bench_train(group) -> None:
    p = group.add_parser("train", help="time training steps on synthetic input; prints one JSON line",
                         description="Times optimiser steps of the configured method and model on synthetic tiles "
                                     "(the loop's own step: device-side batch finishing, forward, backward, "
                                     "optimiser). The last line of output is JSON: images_per_s, step_ms, "
                                     "flops_per_image (FlopCounterMode, forward + backward), flops_per_s, the "
                                     "device's measured dense matmul rate matmul_flops_per_s, mfu, peak_memory_mb, "
                                     "device. Progress goes to stderr.")
    p.add_argument("--config", help="YAML recipe (a path or a built-in name); default: the built-in defaults")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="config overrides, e.g. --set model.name=vit_small_patch16 data.batch_size=64 "
                        "train.precision=bf16 train.compile=true")
    p.add_argument("--steps", type=int, default=10, help="timed optimiser steps (default 10)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first (default 3; compilation happens in them)")

    def run(a) -> int:
        from sdmae.train.bench import main_bench_train

        return main_bench_train(a.config, a.set, a.steps, a.warmup)

    p.set_defaults(run=run)
