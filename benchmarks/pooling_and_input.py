"""Does a frozen encoder's probe gain from pooling the tile's centre, or lose when the tile's colour is removed?

Two questions about where PCam's class signal sits, asked of random and pre-trained encoders alike:
- PCam's label says whether the central 32 x 32 px of a 96 px tile hold tumour, but sdmae's probes average all
  of the tile's tokens. `--keep K` averages only the central K x K tokens (ViT/16 at 96 px: K = 2 is exactly
  the labelled square; K equal to the grid is sdmae eval's own `official` feature).
- `--input instance` standardises each channel of each tile on its own (a colour cast and the tile's
  brightness are removed before the encoder); `grey` keeps the standardised luminance only. `as_is` is sdmae
  eval's normalisation.
Each combination is probed as handcrafted_baseline.py probes (kNN as is and standardised, the fast linear probe).

    python benchmarks/pooling_and_input.py --train TRAIN --test TEST [--random NAME:SIZE:SEEDS] [--ckpt CKPT...]
        [--keep 6 4 2] [--input as_is instance grey]
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from feature_spectrum import named_encoders  # sibling scripts: benchmarks/ is on sys.path
from handcrafted_baseline import probe
from sdmae.config import load_config, load_eval_config
from sdmae.eval.features import EvalImages, feature_model, normalisation, normalise
from sdmae.eval.labelled import labels_of, open_split

LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


def encoder_input(images: torch.Tensor, mode: str, mean: list, std: list) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> the encoder's float input: as sdmae eval normalises it, or with the colour removed."""
    if mode == "as_is":
        return normalise(images, mean, std)
    x = images.float() / 255.0
    if mode == "grey":
        x = (x * LUMA).sum(1, keepdim=True)
    elif mode != "instance":
        raise ValueError(f"--input {mode!r}: choose as_is, instance or grey")
    x = (x - x.mean((2, 3), keepdim=True)) / (x.std((2, 3), keepdim=True) + 1e-3)
    return x.expand(-1, 3, -1, -1)


def centre_pooled(tokens: np.ndarray, keep: int) -> np.ndarray:
    """(N, g, g, D) pre-norm patch tokens -> parameter-free LayerNorm of the mean of the central keep x keep
    tokens; with keep == g this is sdmae eval's `official` feature."""
    g = tokens.shape[1]
    if not 0 < keep <= g or (g - keep) % 2:
        raise ValueError(f"--keep {keep}: needs 0 < K <= {g} with {g} - K even (a centred square)")
    lo = (g - keep) // 2
    mean = torch.from_numpy(tokens[:, lo:lo + keep, lo:lo + keep].mean((1, 2)))
    return F.layer_norm(mean, (tokens.shape[-1],), eps=1e-6).numpy()


@torch.no_grad()
def token_grid(model, encoder, source, mode: str, interpolation: str, batch: int = 200) -> np.ndarray:
    """(N, g, g, D) pre-norm patch tokens of every tile of `source`, resized as sdmae eval resizes them."""
    size = encoder.cfg.model.img_size
    mean, std = normalisation(encoder)
    images, out = EvalImages(source, size, interpolation), []
    for start in range(0, len(images), batch):
        items = [images[i] for i in range(start, min(start + batch, len(images)))]
        bad = next((it["error"] for it in items if it["error"]), None)
        if bad:  # sdmae eval drops such tiles; here they would enter the probes as black tiles
            raise SystemExit(f"unreadable tile: {bad}")
        x = torch.stack([it["image"] for it in items])
        t = model.forward_features(encoder_input(x, mode, mean, std))[:, model.num_prefix_tokens:]
        g = int(round(t.shape[1] ** 0.5))
        out.append(t.reshape(len(x), g, g, -1).numpy())
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", nargs="+", required=True)
    ap.add_argument("--test", nargs="+", required=True)
    ap.add_argument("--random", default="vit_tiny_patch16:96:3", help="NAME:IMG_SIZE:SEEDS (SEEDS 0: none)")
    ap.add_argument("--ckpt", nargs="*", default=[])
    ap.add_argument("--keep", nargs="+", type=int, default=[6, 4, 2])
    ap.add_argument("--input", nargs="+", default=["as_is", "instance", "grey"])
    a = ap.parse_args()
    dcfg, ecfg = load_config().data, load_eval_config([])
    train, test = open_split(a.train, dcfg, "--train"), open_split(a.test, dcfg, "--test")
    encoders = named_encoders(a.random, a.ckpt)
    y_tr, y_te, out = labels_of(train), labels_of(test), {}
    for label, enc in encoders:
        model = feature_model(enc, "official")
        for mode in a.input:
            t_tr, t_te = (token_grid(model, enc, s, mode, ecfg.interpolation) for s in (train, test))
            for keep in a.keep:
                r = probe(centre_pooled(t_tr, keep), y_tr, centre_pooled(t_te, keep), y_te, len(train.classes), ecfg)
                out[f"{label} | {mode} | {keep}"] = r
                print(f"{label}, input {mode}, central {keep}x{keep} tokens: kNN {r['knn']:.3f} (standardised "
                      f"{r['knn_standardised']:.3f}), linear {r['linear']:.3f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
