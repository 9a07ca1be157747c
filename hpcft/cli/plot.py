"""A terminal line plot (pure: points in, text out) and the PNG version (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def ascii_plot(xs: Sequence[float], ys: Sequence[float], width: int = 60, height: int = 12,
               label: str = "loss") -> str:
    if not xs:
        return f"(no {label} points yet)"
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or 1.0
    x0, x1 = min(xs), max(xs)
    xspan = (x1 - x0) or 1.0
    grid = [[" "] * width for _ in range(height)]
    for x, y in zip(xs, ys, strict=True):
        col = min(width - 1, int((x - x0) / xspan * (width - 1)))
        row = min(height - 1, int((hi - y) / span * (height - 1)))
        grid[row][col] = "*"
    lines = []
    for i, row in enumerate(grid):
        tick = hi - span * i / (height - 1)
        lines.append(f"{tick:10.4g} |" + "".join(row))
    lines.append(" " * 11 + "+" + "-" * width)
    lines.append(" " * 12 + f"{x0:<10g}{'step':^{max(0, width - 20)}}{x1:>10g}")
    return "\n".join(lines)


def save_png(series: Dict[str, Tuple[List[float], List[float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


Series = Dict[str, Tuple[List[float], List[float]]]
SPARKS = " ▁▂▃▄▅▆▇█"


def sparkline(ys: Sequence[float], width: int = 30, lo: float | None = None, hi: float | None = None) -> str:
    """A one-line plot of ys (resampled to at most `width` characters by taking the mean of each bucket)."""
    if not ys:
        return ""
    n = min(width, len(ys))
    buckets = [ys[i * len(ys) // n:(i + 1) * len(ys) // n] or [ys[-1]] for i in range(n)]
    vals = [sum(b) / len(b) for b in buckets]
    lo = min(vals) if lo is None else lo
    hi = max(vals) if hi is None else hi
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # a flat series: a flat line at mid height
        return SPARKS[4] * len(vals)
    return "".join(SPARKS[max(1, min(8, 1 + int((v - lo) / (hi - lo) * 7.999)))] for v in vals)


LIST_AT_MOST = 8  # a longer series of evaluations is summarised (first, best, last, sparkline), not listed


def series_line(xs: Sequence[float], ys: Sequence[float], higher: bool = False, width: int = 30) -> str:
    """One line for a series of evaluations: up to LIST_AT_MOST values listed (`2.1000, 1.9000`); a longer one as
    `N values, first A (step S), best B (step S), last C (step S) ▇▆▅▃▂▁▁` (best: the highest when `higher`,
    else the lowest; the sparkline resampled to at most `width` characters, low values low)."""
    if len(ys) <= LIST_AT_MOST:
        return ", ".join(f"{y:.4f}" for y in ys)
    best = (max if higher else min)(range(len(ys)), key=lambda i: (ys[i], -i if higher else i))

    def at(i: int) -> str:
        return f"{ys[i]:.4f} (step {xs[i]:g})"

    return (f"{len(ys)} values, first {at(0)}, best {at(best)}, last {at(len(ys) - 1)}  "
            f"{sparkline(list(ys), width=width)}")


def save_grid_png(panels: Sequence[Tuple[str, str, Series]], path: Path, title: str, xlabel: str = "step",
                  ncols: int = 1) -> Path:
    """One subplot per panel (title, y label, {line label: (xs, ys)}), sharing the x axis; lines with few points get
    markers (an evaluation per epoch). matplotlib is imported here, headless (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 2.6 * nrows + 0.6), sharex=True, squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (name, ylabel, series) in zip(flat, panels, strict=False):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    for i, ax in enumerate(flat):
        if i >= len(panels):
            ax.set_visible(False)
        elif i + ncols >= len(panels):  # the lowest panel of its column: its x axis is labelled
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(xlabel)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
