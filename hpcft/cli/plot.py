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
