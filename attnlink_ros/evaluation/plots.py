"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_revisits(xy: np.ndarray, queries: np.ndarray, out: str | Path, title: str = "") -> Path:
    """Trajectory (ground plane) coloured by time, revisit queries marked in red."""
    plt = _pyplot()
    xy = np.asarray(xy)
    fig, ax = plt.subplots(figsize=(7, 7))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.arange(len(xy)), s=2, cmap="viridis", label="trajectory")
    if len(queries):
        ax.scatter(xy[queries, 0], xy[queries, 1], s=6, c="red", label=f"revisit queries ({len(queries)})")
    ax.plot(xy[0, 0], xy[0, 1], "k^", ms=9, label="start")
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m] (KITTI camera-0 ground plane)")
    ax.set_title(title)
    fig.colorbar(sc, ax=ax, label="frame", shrink=0.7)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
