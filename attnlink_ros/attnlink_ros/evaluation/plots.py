"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out: str | Path) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
    return _save(plt, fig, out)


def plot_recall_curves(curves: dict[str, list[float]], out: str | Path, title: str = "") -> Path:
    """Recall@N (N = 1 .. len) for each labelled curve."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, c in curves.items():
        if c:
            ax.plot(range(1, len(c) + 1), c, marker="o", ms=3, label=label)
    ax.set_xlabel("N (top-N retrieved places)")
    ax.set_ylabel("Recall@N")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)


def plot_matches(xy: np.ndarray, queries: np.ndarray, top1: np.ndarray, correct: np.ndarray, out: str | Path, title: str = "") -> Path:
    """Trajectory with each query's top-1 match: green lines correct (<= 10 m), red wrong."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.plot(xy[:, 0], xy[:, 1], color="0.75", lw=1, zorder=1)
    for q, m, ok in zip(queries, top1, correct):
        if m < 0:
            continue
        ax.plot([xy[q, 0], xy[m, 0]], [xy[q, 1], xy[m, 1]], color="tab:green" if ok else "tab:red", lw=0.8, alpha=0.7, zorder=2)
    ax.scatter(xy[queries[correct], 0], xy[queries[correct], 1], s=4, c="tab:green", label=f"correct top-1 ({int(correct.sum())})", zorder=3)
    ax.scatter(xy[queries[~correct], 0], xy[queries[~correct], 1], s=6, c="tab:red", label=f"wrong top-1 ({int((~correct).sum())})", zorder=3)
    ax.set_aspect("equal")
    ax.set_xlabel("x [m]")
    ax.set_ylabel("z [m]")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(plt, fig, out)
