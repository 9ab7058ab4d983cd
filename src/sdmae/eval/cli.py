"""Command-line parsers of `sdmae eval PROTOCOL` and `sdmae compare` (heavy imports happen when they run)."""
from __future__ import annotations

from typing import Callable

DATA_HELP = ("a class tree ROOT/<class>/<image>, a CSV list path,label, PCam HDF5, a packed file "
             "(several are merged)")


def add_encoder_options(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ckpt", help="an sdmae checkpoint (OUT/checkpoints/last.pt) or an `sdmae export` folder")
    g.add_argument("--init", help="'random' (architecture from --set model.name=... model.img_size=...) or "
                                  "'timm:NAME' (timm weights already in the local cache)")


def add_data_options(p) -> None:
    p.add_argument("--train", nargs="+", metavar="PATH", help=f"labelled training tiles: {DATA_HELP}")
    p.add_argument("--test", nargs="+", metavar="PATH", help="labelled test tiles (same forms)")
    p.add_argument("--val", nargs="+", metavar="PATH",
                   help="labelled validation tiles for model selection (default: a split carved from --train)")
    p.add_argument("--benchmark", help="instead of --train/--test: nct-crc-he, nct-crc-he-8, pcam or mhist")
    p.add_argument("--root", help="folder holding the --benchmark files")


def add_run_options(p) -> None:
    p.add_argument("--seeds", type=int, default=1, help="repetitions with seeds eval.seed, eval.seed+1, ...; "
                                                        "metrics.json gets mean, std and each seed's values")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="options, e.g. --set eval.linear=paper eval.knn_k=10 data.num_workers=4 "
                        "(with --init random: model.name=vit_small_patch8 model.img_size=96)")


def resolve_data(a) -> tuple:
    """(train, test, val, implied --set items) from --train/--test/--val or --benchmark/--root."""
    from sdmae.errors import UsageError

    if a.benchmark:
        if a.train or a.test or a.val:
            raise UsageError("give either --benchmark NAME --root DIR or --train/--test, not both")
        from sdmae.eval.benchmarks import resolve

        b = resolve(a.benchmark, a.root)
        return b.train, b.test, b.val, b.sets
    if not a.train or not a.test:
        raise UsageError("give --train PATH and --test PATH (or --benchmark NAME --root DIR)")
    return a.train, a.test, a.val, []


def protocol_command(name: str, help: str, description: str) -> Callable:
    """The `add(group)` function that adds `sdmae eval NAME` for a protocol of sdmae.eval.registry."""

    def add(group) -> None:
        p = group.add_parser(name, help=help, description=description)
        add_encoder_options(p)
        add_data_options(p)
        p.add_argument("--out", required=True, help="output folder: metrics.json (and checkpoints for finetune)")
        add_run_options(p)

        def run(a) -> int:
            from sdmae.eval.frozen import split_overrides
            from sdmae.eval.run import EncoderSpec, evaluate, print_summary
            from sdmae.train import distributed

            train, test, val, implied = resolve_data(a)
            sets = implied + list(a.set)
            _, encoder_sets = split_overrides(sets)
            encoder = EncoderSpec(a.ckpt, a.init, [s for s in encoder_sets if not s.startswith("data.")])
            try:
                with distributed.fail_fast(f"eval {name}"):  # a rank that fails ends at once, never hangs the others
                    result = evaluate(name, encoder, train, test, val, a.out, sets, a.seeds)
            finally:
                distributed.cleanup()
            print_summary(result, a.out)
            return 0

        p.set_defaults(run=run)

    return add


add_linear = protocol_command(
    "linear", "linear probe on frozen features (fast logistic regression, or the paper's SGD probe)",
    "Linear probing of frozen mean-pooled features. Default: logistic regression with C chosen on a "
    "validation split; --set eval.linear=paper: BatchNorm + linear layer, SGD, warm-up + cosine, 90 epochs.")
add_knn = protocol_command(
    "knn", "weighted kNN on frozen features (k=20, cosine, T=0.07)",
    "k-nearest-neighbour classification of centred, L2-normalised frozen features with temperature-weighted "
    "votes (eval.knn_k, eval.knn_temperature, eval.knn_center).")
add_fewshot = protocol_command(
    "fewshot", "SimpleShot few-shot classification over random episodes",
    "SimpleShot prototypes from eval.shots labelled tiles per class, over eval.episodes random episodes; "
    "reports the mean and the spread over episodes.")
add_finetune = protocol_command(
    "finetune", "fine-tune the whole encoder (layer decay, mixup/cutmix, RandAugment; resumes)",
    "Full fine-tuning with the official recipe (eval.finetune.*): AdamW, layer-wise lr decay 0.75, drop path "
    "0.1, mixup 0.8 / cutmix 1.0, RandAugment, label smoothing 0.1, warm-up + cosine. Checkpoints in "
    "OUT/checkpoints/ and resumes from them; run under torchrun for several processes. With --init random "
    "or timm:NAME it is the supervised baseline.")


def add_compare(sub) -> None:
    p = sub.add_parser(
        "compare", help="a grid of encoders x datasets x protocols -> markdown + JSON table",
        description="Evaluates every encoder on every dataset with every protocol and writes OUT/compare.md and "
                    "OUT/compare.json in the layout of the paper's tables (rows = methods, columns = dataset x "
                    "protocol, mean ± std over seeds). Finished cells are reused when run again.")
    p.add_argument("--spec", help="YAML file with encoders, datasets, protocols, seeds, set (see docs/evaluation.md)")
    p.add_argument("--encoders", nargs="+", default=[], metavar="[LABEL=]SPEC",
                   help="checkpoints, export folders, 'random' or 'timm:NAME', e.g. MAE=runs/mae/checkpoints/last.pt")
    p.add_argument("--datasets", nargs="+", default=[], metavar="[LABEL=]DATA",
                   help="TRAIN,TEST[,VAL] paths, or BENCHMARK:ROOT (e.g. NCT=nct-crc-he:/data/nct)")
    p.add_argument("--protocols", nargs="+", default=[], help="default: linear knn")
    p.add_argument("--metric", nargs="+", default=[],
                   help="table metric(s): any score the protocols report (e.g. auroc, miou, aji, map); default: "
                        "each protocol's headline metric (balanced_accuracy; dice for segment, map50 for detect)")
    p.add_argument("--out", required=True, help="output folder: compare.md, compare.json, runs/")
    add_run_options(p)
    p.set_defaults(seeds=None)

    def run(a) -> int:
        from sdmae.eval.compare import build_spec, compare, render_markdown
        from sdmae.eval.run import is_main_process

        spec = build_spec(a.spec, a.encoders, a.datasets, a.protocols, a.seeds, a.set, a.metric)
        table = compare(spec, a.out)
        if is_main_process():
            print(render_markdown(table))
        return 0

    p.set_defaults(run=run)
