"""Training-curve plots (PNG) with a headless matplotlib back end."""
from __future__ import annotations

from pathlib import Path


def save_figure(fig, path, dpi: int = 110):
    """Write a matplotlib figure as PNG atomically; returns the path."""
    from .io import _atomic
    return _atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi))


def plot_curves(rows: list[dict], path, x: str = "epoch", panels: list[list[str]] | None = None,
                title: str | None = None):
    """One panel per list of metric names in ``panels`` (e.g. [['train_loss', 'val_loss'], ['val_acc']]),
    plotted against ``x`` from the metric rows. Written atomically as a PNG; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if panels is None:
        keys = [k for k in rows[0] if k != x] if rows else []
        panels = [[k] for k in keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.4), squeeze=False)
    for ax, names in zip(axes[0], panels):
        for name in names:
            pts = [(r[x], r[name]) for r in rows if r.get(name) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, ms=3, label=name)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out
