"""`sdmae analyze false-negatives`: how many of a contrastive batch's negatives share the anchor's class.

InfoNCE (MoCo v3) treats every other image of the batch as a negative. With few tissue classes many of
them are the anchor's own class, and the loss pushes them away: the SD-MAE paper's argument against
contrastive learning on histopathology. For a labelled dataset this reports

- the expected share of an anchor's B - 1 negatives that are of its class, from the class counts
  (batches drawn uniformly without replacement, as the pre-training sampler does):
  sum_c f_c (n_c - 1) / (N - 1), and the chance that an anchor has at least one (hypergeometric);
- the same two figures measured over sampled batches;
- with --ckpt, in the encoder's feature space (the evaluation features, one unaugmented view per
  tile, centred on their mean): the cosine similarity of an anchor to its false and to its true
  negatives, the probability that a false negative is closer than a true one, and the share of
  InfoNCE's repulsion (softmax weight exp(s / tau) over the negatives) that lands on false negatives.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sdmae.errors import UsageError


def expected_false_negatives(counts: np.ndarray, batch: int) -> dict:
    """Closed forms for a uniformly drawn batch of `batch` images from a dataset with these class counts."""
    n = int(counts.sum())
    share_c = (counts - 1) / (n - 1)  # chance that one other image of the batch has the anchor's class
    # P(no same-class image among the other batch - 1) = C(n - n_c, batch - 1) / C(n - 1, batch - 1)
    p_none = np.array([math.exp(_log_comb(n - c, batch - 1) - _log_comb(n - 1, batch - 1)) if n - c >= batch - 1
                       else 0.0 for c in counts])
    freq = counts / n
    return {"share": float((freq * share_c).sum()), "per_anchor": float((freq * share_c).sum() * (batch - 1)),
            "p_any": float((freq * (1 - p_none)).sum()), "per_class_share": share_c.tolist()}


def _log_comb(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def sampled_batches(n: int, batch: int, batches: int, seed: int) -> list[np.ndarray]:
    """Consecutive chunks of seeded epoch permutations, like the pre-training sampler's global batches."""
    out, epoch = [], 0
    while len(out) < batches:
        perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
        out += [perm[i:i + batch] for i in range(0, n - batch + 1, batch)][: batches - len(out)]
        epoch += 1
    return out


def measured_false_negatives(labels: np.ndarray, batches: Sequence[np.ndarray]) -> dict:
    shares, anys = [], []
    for idx in batches:
        y = labels[idx]
        same = (y[:, None] == y[None, :]).sum(1) - 1  # same-class negatives of each anchor
        shares.append(same / (len(idx) - 1))
        anys.append(same > 0)
    return {"share": float(np.concatenate(shares).mean()), "p_any": float(np.concatenate(anys).mean())}


def similarity_report(features: np.ndarray, labels: np.ndarray, batches: Sequence[np.ndarray], temperature: float,
                      center: bool = True, max_pairs: int = 200_000, seed: int = 0) -> dict:
    """Cosine similarities of anchors to false (same class) and true negatives within the sampled batches.
    With `center`, the mean feature is subtracted first (as sdmae's kNN does): a component that every tile
    shares would otherwise put every cosine near 1."""
    from sklearn.metrics import roc_auc_score

    if center:
        features = features - features.mean(axis=0, keepdims=True)
    f = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    rng = np.random.default_rng(seed)
    fn_sum = fn_sq = tn_sum = tn_sq = 0.0
    fn_n = tn_n = 0
    fn_keep, tn_keep, weight_share = [], [], []
    for idx in batches:
        s = f[idx] @ f[idx].T
        y = labels[idx]
        off = ~np.eye(len(idx), dtype=bool)
        same = (y[:, None] == y[None, :]) & off
        other = y[:, None] != y[None, :]
        fn, tn = s[same], s[other]
        fn_sum, fn_sq, fn_n = fn_sum + fn.sum(), fn_sq + (fn ** 2).sum(), fn_n + fn.size
        tn_sum, tn_sq, tn_n = tn_sum + tn.sum(), tn_sq + (tn ** 2).sum(), tn_n + tn.size
        per = max(1, max_pairs // len(batches))
        fn_keep.append(rng.choice(fn, min(per, fn.size), replace=False) if fn.size else fn)
        tn_keep.append(rng.choice(tn, min(per, tn.size), replace=False) if tn.size else tn)
        w = np.exp((s - 1.0) / temperature) * off  # exp(s / tau), shifted for range; the diagonal is the positive
        weight_share.append((w * same).sum(1) / w.sum(1))
    out = {"temperature": temperature, "centred": center, "false_negative_pairs": int(fn_n),
           "true_negative_pairs": int(tn_n)}
    if fn_n == 0 or tn_n == 0:
        return out
    fn_mean, tn_mean = fn_sum / fn_n, tn_sum / tn_n
    fn_all, tn_all = np.concatenate(fn_keep), np.concatenate(tn_keep)
    auc = roc_auc_score(np.r_[np.ones(len(fn_all)), np.zeros(len(tn_all))], np.r_[fn_all, tn_all])
    out.update({
        "cos_false_negatives": float(fn_mean), "cos_false_negatives_std": _std(fn_sq / fn_n, fn_mean),
        "cos_true_negatives": float(tn_mean), "cos_true_negatives_std": _std(tn_sq / tn_n, tn_mean),
        "p_false_closer": float(auc),
        "repulsion_share": float(np.concatenate(weight_share).mean()),
    })
    return out


def _std(mean_sq: float, mean: float) -> float:
    return float(math.sqrt(max(0.0, mean_sq - mean ** 2)))


def false_negatives(data: Sequence[str], ckpt: Optional[str], batch: int, batches: int, seed: int,
                    temperature: float, overrides: Sequence[str] = (), center: bool = True) -> dict:
    from sdmae.config import load_config, load_eval_config
    from sdmae.eval.frozen import split_overrides
    from sdmae.eval.labelled import labels_of, open_split

    ev, rest = split_overrides(list(overrides))
    ecfg, cfg = load_eval_config(ev), load_config(overrides=rest)
    if batch < 2:
        raise UsageError(f"--batch-size must be at least 2, got {batch}")
    if batches < 1:
        raise UsageError(f"--batches must be at least 1, got {batches}")
    source = open_split(data, cfg.data, "--data")
    labels = labels_of(source)
    if batch > int((labels >= 0).sum()):
        raise UsageError(f"--batch-size {batch} is larger than the {int((labels >= 0).sum())} labelled tiles of --data")
    feats = None
    if ckpt:
        from sdmae.eval.features import encode
        from sdmae.eval.run import EncoderSpec

        got = encode(EncoderSpec(ckpt=ckpt).load(), source, labels, ecfg, cfg.data, "features")
        feats, labels = got.features, got.labels
    keep = np.flatnonzero(labels >= 0)
    labels = labels[keep]
    if batch > len(labels):
        raise UsageError(f"--batch-size {batch} is larger than the {len(labels)} readable labelled tiles of --data")
    counts = np.bincount(labels, minlength=len(source.classes))
    drawn = sampled_batches(len(labels), batch, batches, seed)
    report = {
        "data": [str(p) for p in data], "tiles": int(len(labels)), "batch_size": batch, "batches": batches,
        "seed": seed, "classes": list(source.classes), "class_counts": counts.tolist(),
        "expected": expected_false_negatives(counts, batch), "measured": measured_false_negatives(labels, drawn),
    }
    if feats is not None:
        report["ckpt"] = str(ckpt)
        report["similarity"] = similarity_report(feats[keep], labels, drawn, temperature, center, seed=seed)
    return report


def render(r: dict) -> str:
    e, m = r["expected"], r["measured"]
    lines = [f"{r['tiles']} labelled tiles, {len(r['classes'])} classes; contrastive batch {r['batch_size']} "
             f"({r['batch_size'] - 1} negatives per anchor)", "",
             "class        tiles   share   same-class share of negatives"]
    n = sum(r["class_counts"])
    for c, k, s in zip(r["classes"], r["class_counts"], e["per_class_share"]):
        lines.append(f"{c[:12]:<12} {k:>6}  {k / n:6.1%}  {s:6.1%}")
    lines += ["", f"false negatives per anchor: expected {e['share']:.1%} of negatives ({e['per_anchor']:.1f}), "
                  f"measured {m['share']:.1%} over {r['batches']} batches",
              f"anchors with at least one false negative: expected {e['p_any']:.1%}, measured {m['p_any']:.1%}"]
    s = r.get("similarity")
    if s and "cos_false_negatives" in s:
        lines += [f"cosine to false negatives {s['cos_false_negatives']:.3f} +- {s['cos_false_negatives_std']:.3f}, "
                  f"to true negatives {s['cos_true_negatives']:.3f} +- {s['cos_true_negatives_std']:.3f}",
                  f"P(false negative closer than true negative) {s['p_false_closer']:.3f}; share of InfoNCE "
                  f"repulsion (tau {s['temperature']}) on false negatives {s['repulsion_share']:.1%}"]
    return "\n".join(lines)


def add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="analyses of a dataset or encoder (false-negatives)")
    group = p.add_subparsers(dest="analysis", required=True, parser_class=type(p))
    q = group.add_parser("false-negatives", help="share of a contrastive batch's negatives of the anchor's class",
                         description=__doc__.split("\n\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help="labelled tiles: a class tree ROOT/<class>/<image>, a CSV list path,label, PCam HDF5, "
                        "a packed file")
    q.add_argument("--ckpt", help="an sdmae checkpoint or export folder: also measure how similar false negatives "
                                  "are to their anchors")
    q.add_argument("--batch-size", type=int, default=256,
                   help="the contrastive (global) batch (default 256; MoCo v3 used 4096)")
    q.add_argument("--batches", type=int, default=200, help="sampled batches for the measured figures (default 200)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--temperature", type=float, default=0.2,
                   help="InfoNCE temperature for the repulsion share (MoCo v3: 0.2)")
    q.add_argument("--no-center", dest="center", action="store_false",
                   help="cosines of the raw features (default: features centred on their mean first)")
    q.add_argument("--out", help="also write the report as JSON to this file")
    q.add_argument("--set", nargs="+", default=[], action="extend", metavar="KEY=VALUE",
                   help="options for reading data and extracting features, e.g. eval.batch_size=64 eval.device=cpu")

    def run(a) -> int:
        report = false_negatives(a.data, a.ckpt, a.batch_size, a.batches, a.seed, a.temperature, a.set, a.center)
        print(render(report))
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
            print(f"report: {a.out}", file=sys.stderr)
        return 0

    q.set_defaults(run=run)
