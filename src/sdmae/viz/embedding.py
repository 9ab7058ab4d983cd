"""A 2-D map of the encoder's features, coloured by class: UMAP when umap-learn is installed, else t-SNE
from scikit-learn (always installed)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from sdmae.errors import UsageError


def project_2d(feats: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, D) features -> ((N, 2) coordinates, the method used)."""
    if method not in ("auto", "umap", "tsne"):
        raise UsageError(f"--projection must be auto, umap or tsne, got '{method}'")
    if len(feats) < 3:
        raise UsageError(f"an embedding plot needs at least 3 tiles, got {len(feats)}")
    if method in ("auto", "umap"):
        try:
            import umap
        except ImportError:
            if method == "umap":
                raise UsageError("--projection umap needs umap-learn: pip install umap-learn") from None
        else:
            reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(feats) - 1), random_state=seed)
            return reducer.fit_transform(feats).astype(np.float32), "UMAP"
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(feats) - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(feats).astype(np.float32), "t-SNE"


def scatter(xy: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    groups = [(c, name) for c, name in enumerate(classes)] + [(-1, "unlabelled")]
    for c, name in groups:
        sel = labels == c
        if sel.any():
            colour = palette(c % palette.N) if c >= 0 else (0.5, 0.5, 0.5, 1.0)
            ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.8, color=colour, label=f"{name} ({int(sel.sum())})")
    if classes:
        ax.legend(fontsize=7, markerscale=2, loc="best", frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path)


def main_embedding(ckpt: str, data: Optional[Sequence[str]], out: str, projection: str = "auto",
                   max_points: int = 5000, batch_size: int = 64, num_workers: int = 2,
                   overrides: Sequence[str] = ()) -> int:
    from sdmae.config import load_config, to_dict
    from sdmae.data.sources import open_sources
    from sdmae.embed import INTERPOLATION, TileDataset, iter_features
    from sdmae.encoders import load_encoder

    if max_points < 3:
        raise UsageError(f"--max-points must be at least 3, got {max_points}")
    enc = load_encoder(ckpt=ckpt)
    cfg = load_config(base=to_dict(enc.cfg), overrides=list(overrides))
    source = open_sources(data, cfg.data)
    chosen = np.unique(np.linspace(0, len(source) - 1, min(max_points, len(source))).round().astype(int))
    ds = TileDataset(source, cfg.model.img_size, INTERPOLATION, chosen.tolist())
    index, feats = [], []
    for i, f in iter_features(enc.model, ds, cfg, batch_size, num_workers):
        index += i
        feats.append(f)
    xy, used = project_2d(np.concatenate(feats), projection, cfg.train.seed)
    classes = list(getattr(source, "classes", []) or [])
    labels = np.array([source.label(i) for i in index], np.int64)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    scatter(xy, labels, classes, folder / "embedding.png", f"{used} of {enc.name} features ({len(index)} tiles)")
    np.savez(folder / "embedding.npz", xy=xy, labels=labels, classes=np.array(classes, dtype=str),
             paths=np.array([source.path(i) for i in index], dtype=str))
    print(f"wrote {folder / 'embedding.png'} ({used}) and embedding.npz", file=sys.stderr)
    return 0
