"""Training curves from OUT/log.jsonl: loss parts, learning rate, collapse signals, kNN monitoring.

Keys are grouped by name, so parts logged by any method (or added later) land in a panel without a list
to maintain here; a key logged only at some steps (kNN accuracy) is drawn at those steps. Several runs
are drawn in the same panels, one colour each.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from sdmae.errors import SdmaeError, UsageError

PANELS = ("losses", "learning rate", "collapse signals", "kNN / monitoring", "images per second", "other")


def panel_of(key: str) -> str:
    if key == "loss" or key.startswith("loss_"):
        return "losses"
    if key == "lr":
        return "learning rate"
    if key.endswith("_seconds"):  # timings (knn_seconds) would flatten the accuracies they sit beside
        return "other"
    if key.startswith("knn") or "acc" in key:
        return "kNN / monitoring"
    if "entropy" in key or key == "kl" or key.startswith("kl_") or key.endswith("_kl") or "std" in key:
        return "collapse signals"
    if key == "images_per_s":
        return "images per second"
    return "other"


def log_path(run: str) -> Path:
    p = Path(run)
    if p.is_dir():
        p = p / "log.jsonl"
    if not p.is_file():
        raise UsageError(f"--run {run}: no log.jsonl there (give a run folder or its log.jsonl)")
    return p


def read_log(path: Path) -> list[dict]:
    """The rows of a log.jsonl; lines torn by a kill are skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def series(rows: list[dict]) -> dict[str, tuple[list, list]]:
    """key -> (steps, values) for every numeric key other than step and epoch."""
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            xs, ys = out.setdefault(k, ([], []))
            xs.append(r["step"])
            ys.append(v)
    return out


def plot_curves(runs: Sequence[tuple[str, dict]], path: Path) -> list[str]:
    """One panel per group that has data; returns the panel names drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    used = [p for p in PANELS if any(panel_of(k) == p for _, s in runs for k in s)]
    cols = 2 if len(used) > 1 else 1
    nrows = (len(used) + cols - 1) // cols
    fig = Figure(figsize=(5.2 * cols, 3.0 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    styles = ("-", "--", ":", "-.")
    for ax, panel in zip(axes, used):
        colour = 0
        for r, (name, s) in enumerate(runs):
            for k in sorted(s):
                if panel_of(k) != panel:
                    continue
                xs, ys = s[k]
                label = k if len(runs) == 1 else f"{name}: {k}"
                ax.plot(xs, ys, styles[r % len(styles)], color=f"C{colour % 10}", label=label,
                        marker="o" if len(xs) < 20 else None, markersize=3)
                colour += 1
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    for ax in axes[len(used):]:
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return used


def main_curves(runs: Sequence[str], out: str) -> int:
    logs = [(Path(r).name if Path(r).is_dir() else Path(r).parent.name, log_path(r)) for r in runs]
    data = []
    for name, p in logs:
        rows = read_log(p)
        if not rows:
            raise SdmaeError(f"{p} has no logged steps yet")
        data.append((name, series(rows)))
    target = Path(out) / "curves.png"
    used = plot_curves(data, target)
    print(f"wrote {target} ({', '.join(used)})", file=sys.stderr)
    return 0
