"""Labelled image grids as PNG (matplotlib's Agg canvas directly: no pyplot state, no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def save_image_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, titles: Sequence[str] = (),
                    row_labels: Optional[Sequence[str]] = None, cell: float = 1.5, dpi: int = 100) -> None:
    """Rows of (H, W, 3) uint8 images -> one PNG, column titles on top, optional label left of each row.
    Small tiles are magnified without smoothing so patches stay visible."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    left = 0.25 if row_labels else 0.0
    fig = Figure(figsize=(cell * n_cols + left * cell, cell * n_rows + (0.3 if titles else 0.05)), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_axis_off()
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=8)
        if row_labels:
            axes[i][0].text(-0.06, 0.5, row_labels[i], transform=axes[i][0].transAxes, rotation=90,
                            ha="right", va="center", fontsize=7)
    fig.subplots_adjust(left=left / (n_cols + left) if row_labels else 0.005, right=0.995, bottom=0.005,
                        top=1 - (0.3 / (cell * n_rows + 0.3) if titles else 0.005), wspace=0.04, hspace=0.04)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def safe_name(text: str, limit: int = 60) -> str:
    """A file-name-safe stem from a tile path (slide tiles carry '#x=..,y=..')."""
    stem = Path(text.split("#", 1)[0]).stem
    extra = text.split("#", 1)[1] if "#" in text else ""
    raw = f"{stem}_{extra}" if extra else stem
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in raw)[:limit]
