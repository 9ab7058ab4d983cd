"""`sdmae viz {reconstruct,attention,embedding,curves}`: the parsers (heavy imports wait until a command runs)."""
from __future__ import annotations

from sdmae.argparsing import Parser

DATA_HELP = "folders, class trees or slides (default: the built-in CC0 sample slide)"
SET_HELP = "data overrides, e.g. --set data.tile_size=512 data.level=1"


def _common(p, ckpt_help: str, n_default: int = 8) -> None:
    p.add_argument("--ckpt", required=True, help=ckpt_help)
    p.add_argument("--data", nargs="+", help=DATA_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=n_default, help=f"tiles to show, evenly spaced over the data "
                                                            f"(default {n_default})")
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE", help=SET_HELP)


def add_reconstruct(group) -> None:
    p = group.add_parser("reconstruct", help="original | masked | reconstruction | with visible patches",
                         description="Rows of original, masked input, reconstruction (de-normalised with each "
                                     "patch's own mean and std) and reconstruction with the visible patches "
                                     "pasted back. Writes OUT/reconstructions.png and OUT/images/*.png.")
    _common(p, "pre-training checkpoint (OUT/checkpoints/last.pt): the decoder is needed")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default 0): same seed, same masks")
    p.add_argument("--mask-ratio", type=float, help="default: the run's method.mask_ratio")

    def run(a) -> int:
        from sdmae.viz.reconstruct import main_reconstruct

        return main_reconstruct(a.ckpt, a.data, a.out, a.n, a.seed, a.mask_ratio, a.set)

    p.set_defaults(run=run)


def add_attention(group) -> None:
    p = group.add_parser("attention", help="last-block attention maps (per head and mean), or MAE vs SD-MAE",
                         description="The attention each patch receives in the encoder's last block, per head "
                                     "and averaged, overlaid on the tile (no class token: column means of the "
                                     "attention matrix). Writes OUT/attention.png, OUT/images/*.png and "
                                     "OUT/attention.npz.")
    _common(p, "checkpoint file or export folder")
    p.add_argument("--compare", metavar="OTHER_CKPT", help="a second checkpoint or export folder, shown side "
                                                          "by side (e.g. MAE vs SD-MAE)")
    p.add_argument("--rollout", action="store_true", help="attention rollout through all blocks instead of "
                                                          "the mean of the last block's heads")

    def run(a) -> int:
        from sdmae.viz.attention import main_attention

        return main_attention(a.ckpt, a.data, a.out, a.compare, a.n, a.rollout, a.set)

    p.set_defaults(run=run)


def add_embedding(group) -> None:
    p = group.add_parser("embedding", help="2-D map of the features (UMAP, else t-SNE), coloured by class",
                         description="Features of up to --max-points tiles, projected with UMAP when umap-learn "
                                     "is installed, else t-SNE. Writes OUT/embedding.png and OUT/embedding.npz.")
    p.add_argument("--ckpt", required=True, help="checkpoint file or export folder")
    p.add_argument("--data", nargs="+", help=DATA_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--projection", default="auto", choices=("auto", "umap", "tsne"))
    p.add_argument("--max-points", type=int, default=5000, help="tiles used, evenly spaced (default 5000)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE", help=SET_HELP)

    def run(a) -> int:
        from sdmae.viz.embedding import main_embedding

        return main_embedding(a.ckpt, a.data, a.out, a.projection, a.max_points, a.batch_size, a.num_workers,
                              a.set)

    p.set_defaults(run=run)


def add_curves(group) -> None:
    p = group.add_parser("curves", help="loss parts, learning rate, collapse signals, kNN accuracy",
                         description="Plots OUT/log.jsonl of one or more runs into OUT/curves.png.")
    p.add_argument("--run", "--log", dest="run_dirs", nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders (or their log.jsonl); several are overlaid")
    p.add_argument("--out", required=True, help="output folder")

    def run(a) -> int:
        from sdmae.viz.curves import main_curves

        return main_curves(a.run_dirs, a.out)

    p.set_defaults(run=run)


def add_viz(sub) -> None:
    p = sub.add_parser("viz", help="pictures: reconstructions, attention maps, embeddings, training curves")
    group = p.add_subparsers(dest="picture", required=True, parser_class=Parser)
    for add in (add_reconstruct, add_attention, add_embedding, add_curves):
        add(group)
