"""A sweep's figure for one metric: the mean over seeds per round, with a 95% band, one line per grid point.

Drawing only: the per-point summaries (rounds, means, half-widths, seeds) come
from :func:`lightning_curate.experiments.aggregate.summarise`, so this module
needs nothing of the sweep runner.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lightning_curate.plots.common import PathLike, new_figure, save_figure

__all__ = ["Summary", "build_grid_figure", "build_sweep_figure", "plot_grid_figure", "plot_sweep_metric"]

# Per grid point: rounds, mean over seeds, 95% half-width, number of seeds.
Summary = Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float], int]]


def build_sweep_figure(metric: str, summary: Summary, *, point_order: Optional[Sequence[str]] = None) -> Figure:
    """The figure of ``metric`` over rounds, a line per grid point.

    Points in ``point_order`` come first, the others sorted; a point with more than one
    seed gets its 95% band.
    """
    order = [p for p in (point_order or []) if p in summary]
    order += sorted(p for p in summary if p not in order)
    cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
    fig = new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    n_seeds = 0
    for i, point in enumerate(order):
        rounds, means, halfs, n = summary[point]
        n_seeds = max(n_seeds, n)
        color = cmap(i % cmap.N)
        ax.plot(rounds, means, "-o", ms=3.5, lw=1.6, color=color, label=point.replace("__", ", "))
        if n > 1:
            ax.fill_between(rounds, [m - h for m, h in zip(means, halfs)],
                            [m + h for m, h in zip(means, halfs)], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    band = f"mean over {n_seeds} seeds, 95% band" if n_seeds > 1 else "one seed"
    ax.set_title(f"{metric} ({band})", fontsize=10)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    if order != ["base"]:  # a sweep without a grid has one point, "base": no legend needed
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    return fig


def plot_sweep_metric(metric: str, summary: Summary, out_dir: PathLike, *,
                      point_order: Optional[Sequence[str]] = None) -> Path:
    """Write :func:`build_sweep_figure` to ``<out_dir>/<metric>.png`` (the name made file-safe)."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in metric)
    return save_figure(build_sweep_figure(metric, summary, point_order=point_order), Path(out_dir) / f"{safe}.png")


def build_grid_figure(panels: Mapping[str, Mapping[tuple[float, float], float]], x_values: Sequence[float],
                      y_values: Sequence[float], *, x_label: str, y_label: str, title: str) -> Figure:
    """Heat maps side by side on one colour scale, one per panel, each cell its value printed.

    A panel maps ``(x, y)`` to a value (e.g. the runs' final honest reward, and the ideal
    learner's); a missing cell stays blank.
    """
    values = [v for panel in panels.values() for v in panel.values() if math.isfinite(v)]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    fig = new_figure(3.4 * len(panels) + 0.8, 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, panel) in zip(axes, panels.items()):
        grid = [[panel.get((x, y), math.nan) for x in x_values] for y in y_values]
        image = ax.imshow(grid, origin="lower", cmap="viridis", vmin=lo, vmax=hi if hi > lo else lo + 1e-9,
                          aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if math.isfinite(v):
                    light = (v - lo) / (hi - lo) < 0.5 if hi > lo else True
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if light else "black")
        ax.set_xticks(range(len(x_values)), [f"{x:g}" for x in x_values])
        ax.set_yticks(range(len(y_values)), [f"{y:g}" for y in y_values])
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(name, fontsize=10)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.85)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_grid_figure(panels: Mapping[str, Mapping[tuple[float, float], float]], x_values: Sequence[float],
                     y_values: Sequence[float], path: PathLike, *, x_label: str, y_label: str, title: str) -> Path:
    """Write :func:`build_grid_figure` to ``path``."""
    return save_figure(build_grid_figure(panels, x_values, y_values, x_label=x_label, y_label=y_label, title=title),
                       path)
