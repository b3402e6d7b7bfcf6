"""Samples of every round in 2-D: one panel per round over the reward's contours.

The 2-D experiments' ``samples.png``: each round's model samples, coloured by
mode when labels are given, over the reward landscape, so the collapse onto
the reward's top level set is visible round by round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from lightning_curate.plots.common import (
    ArrayLike,
    PathLike,
    check_titles,
    grid_shape,
    new_figure,
    palette,
    save_figure,
    to_numpy,
)
from lightning_curate.utils.validation import check_choice, check_int

__all__ = ["build_rounds_2d_figure", "plot_rounds_2d"]

PANEL_INCHES = 2.6
OFF_MODE_COLOR = "#2b2b2b"  # samples that belong to no mode
REAL_COLOR = "#4d4d4d"
_REWARD_CMAP = "cividis"  # perceptually uniform and colour-blind safe
_REWARD_CHUNK = 1 << 16


def _points_2d(x: ArrayLike, name: str) -> np.ndarray:
    arr = to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected points of shape [n, 2], got shape {tuple(arr.shape)}")
    return arr


def _subsample_index(n: int, max_points: int) -> np.ndarray:
    """A deterministic subset of ``range(n)`` of size ``min(n, max_points)``, in order."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _default_bounds(clouds: Sequence[np.ndarray], margin: float = 0.1) -> tuple[float, float, float, float]:
    pooled = [c[np.isfinite(c).all(axis=1)] for c in clouds if len(c)]
    pooled = [c for c in pooled if len(c)]
    if not pooled:
        return (-1.0, 1.0, -1.0, 1.0)
    data = np.concatenate(pooled)
    # Robust to a few far outliers (a diverging model) without cutting the bulk.
    lo = np.quantile(data, 0.001, axis=0)
    hi = np.quantile(data, 0.999, axis=0)
    span = np.maximum(hi - lo, 1e-6)
    # A square window: the panels use an equal aspect ratio.
    half = 0.5 * span.max() * (1 + 2 * margin)
    cx, cy = 0.5 * (lo + hi)
    return (float(cx - half), float(cx + half), float(cy - half), float(cy + half))


def _module_device(fn) -> torch.device:
    if isinstance(fn, torch.nn.Module):
        for t in fn.parameters():
            return t.device
        for b in fn.buffers():
            return b.device
    return torch.device("cpu")


def _reward_on_grid(reward_fn: Callable[[Tensor], Tensor], bounds, grid_size: int):
    xmin, xmax, ymin, ymax = bounds
    xs = np.linspace(xmin, xmax, grid_size)
    ys = np.linspace(ymin, ymax, grid_size)
    gx, gy = np.meshgrid(xs, ys)
    pts = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32))
    device = _module_device(reward_fn)
    out = []
    with torch.no_grad():
        for chunk in pts.split(_REWARD_CHUNK):
            r = reward_fn(chunk.to(device))
            r = torch.as_tensor(r).detach().to("cpu", torch.float64).reshape(-1)
            if r.numel() != chunk.shape[0]:
                raise ValueError(
                    f"reward_fn: expected {chunk.shape[0]} rewards for {chunk.shape[0]} points, "
                    f"got {r.numel()}"
                )
            out.append(r.numpy())
    z = np.concatenate(out).reshape(gx.shape)
    return gx, gy, np.ma.masked_invalid(z)


def build_rounds_2d_figure(
    samples: Sequence[ArrayLike],
    *,
    reward_fn: Optional[Callable[[Tensor], Tensor]] = None,
    titles: Optional[Sequence[str]] = None,
    labels: Optional[Sequence[ArrayLike]] = None,
    label_names: Optional[Sequence[str]] = None,
    real: Optional[ArrayLike] = None,
    real_panels: str = "all",
    bounds: Optional[tuple[float, float, float, float]] = None,
    max_points: int = 4000,
    grid_size: int = 160,
    suptitle: Optional[str] = None,
) -> Figure:
    """Each round's 2-D model samples over the reward landscape, as a figure (not saved).

    Args:
        samples: one ``[n, 2]`` tensor or array per round (round 0..T).
        reward_fn: maps a float32 ``[M, 2]`` tensor to ``[M]`` rewards. It is
            evaluated under ``torch.no_grad`` on a ``grid_size`` x ``grid_size``
            grid over ``bounds`` and drawn as light filled contours plus
            contour lines, with one shared colorbar.
        titles: one title per panel (default ``"round t"``).
        labels: one integer tensor ``[n]`` per round (the mode of each
            sample); points are coloured by it, negative labels in grey
            ("off-mode").
        label_names: names of the modes for the legend (default ``"mode k"``).
        real: ``[n, 2]`` real data, drawn faintly under the samples in every
            panel (``real_panels="all"``) or only the first (``"first"``).
        bounds: ``(xmin, xmax, ymin, ymax)`` for every panel; default: a square
            window around all the data with a 10% margin.
        max_points: points drawn per round (and of ``real``), a deterministic
            subsample.
        suptitle: an optional title over the whole figure.

    Raises:
        ValueError: naming the argument, for an empty ``samples`` list, samples
            that are not ``[n, 2]``, or mismatched ``titles`` / ``labels``.
    """
    if not isinstance(samples, (list, tuple)):
        raise ValueError(f"samples: expected a list of [n, 2] tensors (one per round), got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples: expected at least one round of samples, got an empty list")
    clouds = [_points_2d(s, f"samples[{t}]") for t, s in enumerate(samples)]
    n_rounds = len(clouds)
    titles = check_titles(titles, n_rounds)
    check_int("max_points", max_points, minimum=1)
    check_int("grid_size", grid_size, minimum=2)
    check_choice("real_panels", real_panels, ("first", "all"))

    label_arrays: Optional[list[np.ndarray]] = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != n_rounds:
            raise ValueError(f"labels: expected {n_rounds} label tensors (one per round), got {len(labels)}")
        label_arrays = []
        for t, (lab, pts) in enumerate(zip(labels, clouds)):
            arr = to_numpy(lab, f"labels[{t}]", dtype=np.int64).reshape(-1)
            if arr.shape[0] != pts.shape[0]:
                raise ValueError(f"labels[{t}]: expected {pts.shape[0]} labels (one per sample), got {arr.shape[0]}")
            label_arrays.append(arr)

    real_arr = _points_2d(real, "real") if real is not None else None

    box: tuple[float, ...]
    if bounds is None:
        box = _default_bounds(clouds + ([real_arr] if real_arr is not None else []))
    else:
        box = tuple(float(b) for b in bounds)
        if len(box) != 4 or not (box[0] < box[1] and box[2] < box[3]):
            raise ValueError(f"bounds: expected (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, "
                             f"got {box}")
    xmin, xmax, ymin, ymax = box

    grid = _reward_on_grid(reward_fn, box, grid_size) if reward_fn is not None else None

    nrows, ncols = grid_shape(n_rounds)
    aspect = (ymax - ymin) / (xmax - xmin)
    extra_w = 0.9 if grid is not None else 0.2
    extra_h = 0.5 + (0.45 if label_arrays is not None else 0) + (0.35 if suptitle else 0)
    fig = new_figure(ncols * PANEL_INCHES + extra_w, nrows * PANEL_INCHES * min(max(aspect, 0.5), 2.0) + extra_h)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)

    # Shared reward levels: identical contours and one colorbar for all panels.
    levels = None
    if grid is not None:
        z = grid[2]
        zmin, zmax = (float(z.min()), float(z.max())) if z.count() else (0.0, 0.0)
        if zmax - zmin > 1e-12 * max(1.0, abs(zmax)):
            levels = MaxNLocator(nbins=9).tick_values(zmin, zmax)

    if label_arrays is not None:
        present = np.unique(np.concatenate(label_arrays)) if sum(len(a) for a in label_arrays) else np.array([], int)
        mode_ids = [int(k) for k in present if k >= 0]
        n_modes = (max(mode_ids) + 1) if mode_ids else 0
        if label_names is not None:
            n_modes = max(n_modes, len(label_names))
        colors = palette(n_modes)
        has_other = bool((present < 0).any())

    point_size = 6.0 if max(len(c) for c in clouds) <= 1500 else 3.0
    filled = None
    panels = []
    for t in range(nrows * ncols):
        ax = axes[t // ncols][t % ncols]
        if t >= n_rounds:
            ax.remove()
            continue
        panels.append(ax)
        ax.set_label(f"round_{t}")
        if grid is not None:
            gx, gy, z = grid
            if levels is not None:
                filled = ax.contourf(gx, gy, z, levels=levels, cmap=_REWARD_CMAP, alpha=0.35, zorder=0)
                ax.contour(gx, gy, z, levels=levels, colors="#3a3a3a", linewidths=0.5, alpha=0.6, zorder=1)
            else:
                ax.set_facecolor(colormaps[_REWARD_CMAP](0.5, alpha=0.2))
        if real_arr is not None and (real_panels == "all" or t == 0):
            ridx = _subsample_index(len(real_arr), max_points)
            ax.scatter(real_arr[ridx, 0], real_arr[ridx, 1], s=point_size, c=REAL_COLOR,
                       alpha=0.12, linewidths=0, rasterized=True, zorder=2)
        pts = clouds[t]
        idx = _subsample_index(len(pts), max_points)
        if label_arrays is not None:
            lab = label_arrays[t][idx]
            off = to_rgba(OFF_MODE_COLOR)
            col = np.array([colors[k] if k >= 0 else off for k in lab]).reshape(-1, 4)
            ax.scatter(pts[idx, 0], pts[idx, 1], s=point_size, c=col, alpha=0.6, linewidths=0, zorder=3)
        else:
            ax.scatter(pts[idx, 0], pts[idx, 1], s=point_size, color=palette(1)[0], alpha=0.45,
                       linewidths=0, zorder=3)
        ax.set_title(titles[t], fontsize=10)
        ax.set_xlim(xmin, xmax)
        ax.set_ylim(ymin, ymax)
        ax.set_aspect("equal", adjustable="box")
        ax.tick_params(labelsize=8)
        ax.label_outer()
        if t // ncols == nrows - 1 or t + ncols >= n_rounds:
            ax.set_xlabel("$x_1$", fontsize=9)
            ax.xaxis.set_tick_params(labelbottom=True)
        if t % ncols == 0:
            ax.set_ylabel("$x_2$", fontsize=9)

    if filled is not None:
        cbar = fig.colorbar(filled, ax=panels, shrink=0.85 if nrows > 1 else 0.9, pad=0.02, aspect=25 * nrows)
        cbar.set_label("reward")
        cbar.ax.tick_params(labelsize=8)
        if cbar.solids is not None:
            cbar.solids.set_alpha(0.6)

    handles = []
    if label_arrays is not None:
        for k in range(n_modes):
            name = label_names[k] if label_names is not None and k < len(label_names) else f"mode {k}"
            handles.append(Line2D([], [], ls="", marker="o", ms=5, color=colors[k], label=name))
        if has_other:
            handles.append(Line2D([], [], ls="", marker="o", ms=5, color=OFF_MODE_COLOR, label="off-mode"))
    if real_arr is not None:
        handles.append(Line2D([], [], ls="", marker="o", ms=5, color=REAL_COLOR, alpha=0.35, label="real data"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 10), fontsize=8,
                   frameon=False, handletextpad=0.2, columnspacing=1.0)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    return fig


def plot_rounds_2d(samples: Sequence[ArrayLike], path: PathLike, **options: Any) -> Path:
    """Write :func:`build_rounds_2d_figure` ``(samples, **options)`` to ``path`` as a PNG, atomically."""
    return save_figure(build_rounds_2d_figure(samples, **options), path)
