"""Figures of a curated-retraining run, drawn with matplotlib and written as PNG.

Three figures:

* :func:`plot_rounds_2d`: one panel per round with that round's model samples
  (coloured by mode when labels are given) over the reward's contours;
* :func:`plot_round_metrics`: reward over rounds, distances to the real data
  when the table has them, and mode/class shares over rounds;
* :func:`plot_image_grid`: a grid of generated images per round.

Each ``plot_*`` function writes its PNG atomically (a temporary file beside
the target, then ``os.replace``) and returns the path. The matching
``build_*_figure`` function returns the :class:`matplotlib.figure.Figure`
instead, e.g. to hand it to a logger. Figures are built with
``matplotlib.figure.Figure`` and the Agg canvas, never through ``pyplot``, so
no display is needed and no figure stays registered in pyplot's state.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

__all__ = [
    "DPI",
    "build_image_grid_figure",
    "build_round_metrics_figure",
    "build_rounds_2d_figure",
    "plot_image_grid",
    "plot_round_metrics",
    "plot_rounds_2d",
    "save_figure",
]

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]

DPI = 120
MAX_COLUMNS = 6
PANEL_INCHES = 2.6
OTHER_COLOR = "#9a9a9a"  # shares that belong to no mode
OFF_MODE_COLOR = "#2b2b2b"  # samples that belong to no mode
REAL_COLOR = "#4d4d4d"
_REWARD_CMAP = "cividis"  # perceptually uniform and colour-blind safe
_REWARD_CHUNK = 1 << 16


# --------------------------------------------------------------------------- #
# saving
# --------------------------------------------------------------------------- #


def save_figure(fig: Figure, path: PathLike, *, dpi: int = DPI) -> Path:
    """Write ``fig`` to ``path`` as a PNG, atomically, and return the path.

    The image goes to ``path.with_suffix(".tmp.png")`` first and is then
    moved over ``path`` with ``os.replace``, so a reader never sees a
    half-written file. Missing parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    try:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=4 / 72, h_pad=6 / 72)  # a little air around the panels
    FigureCanvasAgg(fig)
    return fig


# --------------------------------------------------------------------------- #
# input helpers
# --------------------------------------------------------------------------- #


def _to_numpy(x: ArrayLike, name: str, dtype=np.float64) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu")
        if x.is_floating_point():
            x = x.float()
        return x.numpy().astype(dtype, copy=False)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a tensor or an array, got {type(x).__name__}") from err


def _points_2d(x: ArrayLike, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name}: expected points of shape [n, 2], got shape {tuple(arr.shape)}")
    return arr


def _subsample_index(n: int, max_points: int) -> np.ndarray:
    """A deterministic subset of ``range(n)`` of size ``min(n, max_points)``, in order."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def _check_titles(titles: Optional[Sequence[str]], n: int, name: str = "titles") -> list[str]:
    if titles is None:
        return [f"round {t}" for t in range(n)]
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(f"{name}: expected {n} titles (one per round), got {len(titles)}")
    return [str(t) for t in titles]


def _grid_shape(n: int, max_columns: int = MAX_COLUMNS) -> tuple[int, int]:
    ncols = min(n, max_columns)
    return int(math.ceil(n / ncols)), ncols


def _palette(n: int) -> list:
    """``n`` distinct colours from tab10 (up to 9) or tab20 (up to 18), then a cycle.

    The greys of tab10 / tab20 are left out: grey means "off-mode", "other"
    and "real data" in these figures.
    """
    if n <= 9:
        colors = [colormaps["tab10"](i) for i in range(10) if i != 7]
    else:
        colors = [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    return [colors[i % len(colors)] for i in range(max(n, 1))]


# --------------------------------------------------------------------------- #
# 1. samples per round over the reward landscape
# --------------------------------------------------------------------------- #


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
        for t in fn.buffers():
            return t.device
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
    """The figure of :func:`plot_rounds_2d` (same arguments), not saved."""
    if not isinstance(samples, (list, tuple)):
        raise ValueError(f"samples: expected a list of [n, 2] tensors (one per round), got {type(samples).__name__}")
    if len(samples) == 0:
        raise ValueError("samples: expected at least one round of samples, got an empty list")
    clouds = [_points_2d(s, f"samples[{t}]") for t, s in enumerate(samples)]
    n_rounds = len(clouds)
    titles = _check_titles(titles, n_rounds)
    if max_points < 1:
        raise ValueError(f"max_points: expected a positive integer, got {max_points}")
    if real_panels not in ("first", "all"):
        raise ValueError(f"real_panels: expected 'first' or 'all', got {real_panels!r}")

    label_arrays: Optional[list[np.ndarray]] = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != n_rounds:
            raise ValueError(f"labels: expected {n_rounds} label tensors (one per round), got {len(labels)}")
        label_arrays = []
        for t, (lab, pts) in enumerate(zip(labels, clouds)):
            arr = _to_numpy(lab, f"labels[{t}]", dtype=np.int64).reshape(-1)
            if arr.shape[0] != pts.shape[0]:
                raise ValueError(f"labels[{t}]: expected {pts.shape[0]} labels (one per sample), got {arr.shape[0]}")
            label_arrays.append(arr)

    real_arr = _points_2d(real, "real") if real is not None else None

    if bounds is None:
        bounds = _default_bounds(clouds + ([real_arr] if real_arr is not None else []))
    else:
        bounds = tuple(float(b) for b in bounds)
        if len(bounds) != 4 or not (bounds[0] < bounds[1] and bounds[2] < bounds[3]):
            raise ValueError(f"bounds: expected (xmin, xmax, ymin, ymax) with xmin < xmax and ymin < ymax, got {bounds}")
    xmin, xmax, ymin, ymax = bounds

    grid = _reward_on_grid(reward_fn, bounds, grid_size) if reward_fn is not None else None

    nrows, ncols = _grid_shape(n_rounds)
    aspect = (ymax - ymin) / (xmax - xmin)
    extra_w = 0.9 if grid is not None else 0.2
    extra_h = 0.5 + (0.45 if label_arrays is not None else 0) + (0.35 if suptitle else 0)
    fig = _new_figure(ncols * PANEL_INCHES + extra_w, nrows * PANEL_INCHES * min(max(aspect, 0.5), 2.0) + extra_h)
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
        colors = _palette(n_modes)
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
            ax.scatter(pts[idx, 0], pts[idx, 1], s=point_size, color=_palette(1)[0], alpha=0.45,
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


def plot_rounds_2d(
    samples: Sequence[ArrayLike],
    path: PathLike,
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
) -> Path:
    """Plot each round's 2-D model samples over the reward landscape; write a PNG.

    Args:
        samples: one ``[n, 2]`` tensor or array per round (round 0..T).
        path: the PNG to write (atomically).
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

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: naming the argument, for an empty ``samples`` list, samples
            that are not ``[n, 2]``, or mismatched ``titles`` / ``labels``.
    """
    fig = build_rounds_2d_figure(
        samples, reward_fn=reward_fn, titles=titles, labels=labels, label_names=label_names, real=real,
        real_panels=real_panels, bounds=bounds, max_points=max_points, grid_size=grid_size, suptitle=suptitle,
    )
    return save_figure(fig, path)


# --------------------------------------------------------------------------- #
# 2. per-round metrics
# --------------------------------------------------------------------------- #


def _as_float(v) -> float:
    if v is None:
        return math.nan
    if isinstance(v, Tensor):
        return float(v.detach().float().mean()) if v.numel() else math.nan
    if isinstance(v, str):
        v = v.strip()
        if v == "" or v.lower() in ("nan", "none", "null"):
            return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _is_distance_key(key: str) -> bool:
    k = key.lower()
    return k.endswith(("_distance", "_dist")) or k in ("w2", "wasserstein", "mmd", "swd", "fid", "kl", "tv")


def _column(rows: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([_as_float(r.get(key)) for r in rows], dtype=np.float64)


def build_round_metrics_figure(rows: Sequence[Mapping], *, share_prefix: str = "share_") -> Figure:
    """The figure of :func:`plot_round_metrics` (same arguments), not saved."""
    if not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows: expected a list of dicts (one per round), got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows: expected at least one round, got an empty list")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"rows[{i}]: expected a dict, got {type(r).__name__}")

    rounds = _column(rows, "round")
    if not np.isfinite(rounds).all():
        rounds = np.arange(len(rows), dtype=np.float64)
    order = np.argsort(rounds, kind="stable")
    rows = [rows[i] for i in order]
    rounds = rounds[order]

    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    share_keys = [k for k in keys if k.startswith(share_prefix) and np.isfinite(_column(rows, k)).any()]
    dist_keys = [k for k in keys if _is_distance_key(k) and np.isfinite(_column(rows, k)).any()]

    n_panels = 1 + bool(dist_keys) + bool(share_keys)
    fig = _new_figure(4.6 * n_panels + (1.4 if share_keys else 0.0), 3.6)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    single = len(rows) == 1

    def _finish_x(ax):
        if len(rounds) <= 12:
            ax.set_xticks(rounds)
            ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:g}")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        lo, hi = float(rounds.min()), float(rounds.max())
        pad = 0.5 if single else 0.03 * (hi - lo)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("round")
        ax.grid(True, alpha=0.3, linewidth=0.6)

    # --- reward -------------------------------------------------------------
    ax = axes[0]
    ax.set_label("reward")
    c_model, c_cur = _palette(2)
    mean, std, cur = _column(rows, "reward_mean"), _column(rows, "reward_std"), _column(rows, "curated_reward_mean")
    drawn = False
    if np.isfinite(mean).any():
        ax.plot(rounds, mean, "-o", color=c_model, ms=4, lw=1.6, label="model samples (mean)")
        if np.isfinite(std).any():
            band = np.where(np.isfinite(std), std, 0.0)
            ax.fill_between(rounds, mean - band, mean + band, color=c_model, alpha=0.18, linewidth=0,
                            label="model samples (±1 std)")
            if single:  # a band of zero width is invisible: show it as an error bar
                ax.errorbar(rounds, mean, yerr=band, color=c_model, capsize=4, lw=1.2, fmt="none")
        drawn = True
    if np.isfinite(cur).any():
        ax.plot(rounds, cur, "-s", color=c_cur, ms=4, lw=1.6, label="curated samples (mean)")
        drawn = True
    predicted = _column(rows, "predicted_reward_mean")
    if np.isfinite(predicted).any():
        # Row t predicts round t + 1: draw it where it can be compared with what was observed.
        ax.plot(np.asarray(rounds) + 1, predicted, ":^", color="0.25", ms=4, lw=1.3,
                label="ideal learner's prediction")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no reward recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title("Reward over rounds")
    ax.set_ylabel("reward")
    _finish_x(ax)

    # --- distances to the real data -----------------------------------------
    panel = 1
    if dist_keys:
        ax = axes[panel]
        ax.set_label("distance")
        panel += 1
        for key, color in zip(dist_keys, _palette(len(dist_keys))):
            ax.plot(rounds, _column(rows, key), "-o", ms=4, lw=1.6, color=color, label=key.replace("_", " "))
        ax.set_title("Distance to real data")
        ax.set_ylabel("distance")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
        _finish_x(ax)

    # --- shares -------------------------------------------------------------
    if share_keys:
        ax = axes[panel]
        ax.set_label("shares")
        names = [k[len(share_prefix):] or k for k in share_keys]
        shares = np.stack([_column(rows, k) for k in share_keys]) * 100.0  # [S, R], percent
        colors = _palette(len(share_keys))
        if len(share_keys) <= 12:
            vals = np.nan_to_num(shares, nan=0.0).clip(min=0.0)
            other = (100.0 - vals.sum(axis=0)).clip(min=0.0)
            series, labels_, cols = list(vals), list(names), list(colors)
            if other.max() > 0.5:  # shares that do not add to 100%: show the rest
                series.append(other)
                labels_.append("other")
                cols.append(OTHER_COLOR)
            if single:
                bottom = 0.0
                for s, lab, col in zip(series, labels_, cols):
                    ax.bar(rounds, s, bottom=bottom, width=0.5, color=col, label=lab, edgecolor="white", linewidth=0.5)
                    bottom = bottom + s
            else:
                ax.stackplot(rounds, *series, labels=labels_, colors=cols, alpha=0.9, edgecolor="white", linewidth=0.4)
            ax.set_ylim(0, max(100.0, float(np.sum(series, axis=0).max())))
            handles, leg_labels = ax.get_legend_handles_labels()
            # Top of the stack first, as on the chart.
            ax.legend(handles[::-1], leg_labels[::-1], fontsize=8, loc="center left",
                      bbox_to_anchor=(1.01, 0.5), frameon=False)
        else:
            for s, name, col in zip(shares, names, colors):
                ax.plot(rounds, s, "-", marker="o" if single else None, ms=3, lw=1.2, color=col, label=name)
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False,
                      ncol=int(math.ceil(len(share_keys) / 20)))
        ax.set_title("Mode / class shares")
        ax.set_ylabel("share (%)")
        _finish_x(ax)
        ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
    return fig


def plot_round_metrics(rows: Sequence[Mapping], path: PathLike, *, share_prefix: str = "share_") -> Path:
    """Plot the per-round table (``rounds.csv`` rows) and write a PNG.

    Panels, left to right:

    * reward: the model samples' mean with a ±std band (``reward_mean``,
      ``reward_std``) and the curated samples' mean (``curated_reward_mean``);
    * distance to the real data, when the rows have columns ending in
      ``_distance`` or ``_dist`` (e.g. ``sw_distance``);
    * shares: the ``share_<name>`` columns (fractions in [0, 1]) in percent,
      a stacked area chart (plus an "other" band when they add to less than
      100%), or lines when there are more than 12 of them.

    Values may be numbers, strings as read from a CSV file, or empty / NaN
    (round 0 has no curation, so its ``curated_reward_mean`` is NaN): missing
    points are left out. A single round is drawn with markers and bars.

    Raises:
        ValueError: ``rows`` is empty or not a list of dicts.
    """
    return save_figure(build_round_metrics_figure(rows, share_prefix=share_prefix), path)


# --------------------------------------------------------------------------- #
# 3. image grids
# --------------------------------------------------------------------------- #


def _mosaic(images: np.ndarray, nrow: int, pad: int) -> np.ndarray:
    """``[n, H, W, C]`` in [0, 1] -> one ``[rows*(H+pad)+pad, nrow*(W+pad)+pad, C]`` image."""
    n, h, w, c = images.shape
    rows = int(math.ceil(n / nrow))
    out = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


def build_image_grid_figure(
    images_per_round: Sequence[ArrayLike], *, nrow: int = 8, titles: Optional[Sequence[str]] = None
) -> Figure:
    """The figure of :func:`plot_image_grid` (same arguments), not saved."""
    if not isinstance(images_per_round, (list, tuple)):
        raise ValueError(
            f"images_per_round: expected a list of [n, C, H, W] tensors (one per round), "
            f"got {type(images_per_round).__name__}"
        )
    if len(images_per_round) == 0:
        raise ValueError("images_per_round: expected at least one round of images, got an empty list")
    if int(nrow) < 1:
        raise ValueError(f"nrow: expected a positive integer, got {nrow}")
    nrow = int(nrow)
    n_rounds = len(images_per_round)
    titles = _check_titles(titles, n_rounds)

    grids = []
    for t, imgs in enumerate(images_per_round):
        arr = _to_numpy(imgs, f"images_per_round[{t}]", dtype=np.float32)
        if arr.ndim == 3:  # [n, H, W]: grayscale without a channel axis
            arr = arr[:, None]
        if arr.ndim != 4 or arr.shape[1] not in (1, 3):
            raise ValueError(
                f"images_per_round[{t}]: expected shape [n, C, H, W] with C = 1 or 3, got {tuple(arr.shape)}"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"images_per_round[{t}]: expected at least one image, got none")
        arr = arr[: nrow * nrow]
        arr = np.nan_to_num((arr + 1.0) / 2.0, nan=0.0).clip(0.0, 1.0).transpose(0, 2, 3, 1)
        grids.append(_mosaic(arr, min(nrow, arr.shape[0]), pad=max(1, arr.shape[1] // 14)))

    rgb = any(g.shape[2] == 3 for g in grids)
    if rgb:
        grids = [np.repeat(g, 3, axis=2) if g.shape[2] == 1 else g for g in grids]

    nrows, ncols = _grid_shape(n_rounds)
    aspect = max(g.shape[0] / g.shape[1] for g in grids)
    fig = _new_figure(ncols * 2.8, nrows * 2.8 * aspect + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for t in range(nrows * ncols):
        ax = axes[t // ncols][t % ncols]
        if t >= n_rounds:
            ax.remove()
            continue
        ax.set_label(f"round_{t}")
        g = grids[t]
        if rgb:
            ax.imshow(g, interpolation="nearest")
        else:
            ax.imshow(g[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(titles[t], fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return fig


def plot_image_grid(
    images_per_round: Sequence[ArrayLike], path: PathLike, *, nrow: int = 8, titles: Optional[Sequence[str]] = None
) -> Path:
    """Plot a grid of the first ``nrow * nrow`` images of each round, rounds side by side; write a PNG.

    Args:
        images_per_round: one ``[n, C, H, W]`` tensor per round, values in
            [-1, 1], ``C = 1`` (grayscale) or ``3`` (RGB); ``[n, H, W]`` is
            read as grayscale.
        path: the PNG to write (atomically).
        nrow: images per grid row (and rows per grid).
        titles: one title per round (default ``"round t"``).

    Raises:
        ValueError: naming the argument, for an empty list or a bad shape.
    """
    return save_figure(build_image_grid_figure(images_per_round, nrow=nrow, titles=titles), path)
