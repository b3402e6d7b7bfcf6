"""The per-round table as a figure: reward, distances to the real data, shares, fidelity and the learner gap.

A run's ``round_metrics.png``, drawn from ``rounds.csv`` rows as they are (numbers,
CSV strings, empty cells), so the same function serves a live run and a table
read back from disk.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from lightning_curate.plots.common import PathLike, new_figure, palette, save_figure
from lightning_curate.utils.columns import FIDELITY_RATIOS, PREDICTED_SHARE, SHARE, Col, stderr

__all__ = ["build_round_metrics_figure", "plot_round_metrics"]

OTHER_COLOR = "#9a9a9a"  # shares that belong to no mode
MAX_PREDICTED = 3  # classes drawn against the ideal learner's prediction
# Where a learner counts as faithful: lightning_curate.loop.fidelity.FIDELITY_BAND (plots may not import
# the loop; tests/loop/test_fidelity.py checks the two agree).
FIDELITY_BAND = (0.85, 1.15)
GRID_COLUMNS = 3  # panels a row: six panels fit a laptop screen at 100% as 2 x 3
PANEL_SIZE = (4.25, 3.5)  # inches a panel, at common.DPI: 3 columns ~ 1600 px wide
SHARE_LEGEND_WIDTH = 0.6  # extra inches for the shares panel's legend, outside its axes


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
    return k.endswith(("_distance", "_dist", "_fid")) or k in ("w2", "wasserstein", "mmd", "swd", "fid", "kl", "tv")


def _column(rows: Sequence[Mapping], key: str) -> np.ndarray:
    return np.array([_as_float(r.get(key)) for r in rows], dtype=np.float64)


def build_round_metrics_figure(rows: Sequence[Mapping], *, share_prefix: str = SHARE.prefix) -> Figure:
    """The figure of :func:`plot_round_metrics` (same arguments), not saved."""
    if not isinstance(rows, (list, tuple)):
        raise ValueError(f"rows: expected a list of dicts (one per round), got {type(rows).__name__}")
    if len(rows) == 0:
        raise ValueError("rows: expected at least one round, got an empty list")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise ValueError(f"rows[{i}]: expected a dict, got {type(r).__name__}")

    rounds = _column(rows, Col.ROUND)
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

    predicted_keys = _predicted_share_keys(rows, keys, share_prefix)
    fidelity_keys = [k for k in FIDELITY_RATIOS if k in keys and np.isfinite(_column(rows, k)).any()]
    gap = _column(rows, Col.LEARNER_GAP)
    gap_shown = np.isfinite(gap) & (rounds >= 1)  # round 0's gap (p_0 against the real data) sits in rounds.csv
    n_panels = (1 + bool(dist_keys) + bool(share_keys) + bool(predicted_keys) + bool(fidelity_keys)
                + bool(gap_shown.any()))
    fig, axes = _panel_grid(n_panels, legend_room=bool(share_keys))
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
    c_model, c_cur = palette(2)
    mean, std = _column(rows, Col.REWARD_MEAN), _column(rows, Col.REWARD_STD)
    cur = _column(rows, Col.CURATED_REWARD_MEAN)
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
    predicted = _column(rows, Col.PREDICTED_REWARD_MEAN)
    if np.isfinite(predicted).any():
        # Row t predicts round t + 1: draw it where it can be compared with what was observed.
        ax.plot(np.asarray(rounds) + 1, predicted, ":^", color="0.25", ms=4, lw=1.3,
                label="ideal learner's prediction")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no reward recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
    else:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)
    ax.set_title("Reward: rises as curation optimises it")
    ax.set_ylabel("reward")
    _finish_x(ax)

    # --- distances to the real data -----------------------------------------
    panel = 1
    if dist_keys:
        ax = axes[panel]
        ax.set_label("distance")
        panel += 1
        for key, color in zip(dist_keys, palette(len(dist_keys))):
            ax.plot(rounds, _column(rows, key), "-o", ms=4, lw=1.6, color=color, label=key.replace("_", " "))
        ax.set_title("Distance to the real data: the drift")
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
        colors = palette(len(share_keys))
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
        ax.set_title("Shares: which modes or classes take over")
        ax.set_ylabel("share (%)")
        _finish_x(ax)
        ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
        panel += 1

    # --- observed vs predicted shares ---------------------------------------
    if predicted_keys:
        ax = axes[panel]
        ax.set_label("predicted shares")
        panel += 1
        for name, color in zip(predicted_keys, palette(len(predicted_keys))):
            ax.plot(rounds, 100.0 * _column(rows, share_prefix + name), "-o", ms=4, lw=1.6, color=color,
                    label=f"{name} observed")
            # Row t predicts round t + 1: drawn at t + 1, beside what was observed there.
            ax.plot(rounds + 1, 100.0 * _column(rows, PREDICTED_SHARE(name)), ":^", ms=4, lw=1.3, color=color,
                    label=f"{name} ideal learner")
        ax.set_title("Shares: solid should track dotted (ideal)")
        ax.set_ylabel("share (%)")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
        _finish_x(ax)

    # --- learner fidelity ---------------------------------------------------
    if fidelity_keys:
        ax = axes[panel]
        ax.set_label("fidelity")
        ax.axhspan(FIDELITY_BAND[0], FIDELITY_BAND[1], color="0.85", alpha=0.6, linewidth=0,
                   label=f"{FIDELITY_BAND[0]:g}-{FIDELITY_BAND[1]:g}")
        ax.axhline(1.0, color="0.3", lw=1.0, ls="--")
        for key, color in zip(fidelity_keys, palette(len(fidelity_keys))):
            values = _column(rows, key)
            err = _column(rows, stderr(key)) if stderr(key) in keys else None
            if err is not None and np.isfinite(err).any():
                ax.errorbar(rounds, values, yerr=np.nan_to_num(err), fmt="-o", ms=4, lw=1.4, capsize=3, color=color,
                            label=key.replace("_", " "))
            else:
                ax.plot(rounds, values, "-o", ms=4, lw=1.4, color=color, label=key.replace("_", " "))
        ax.set_title("Fidelity: in the grey band = follows theory")
        ax.set_ylabel("observed move / predicted move")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
        _finish_x(ax)
        panel += 1

    # --- learner gap ----------------------------------------------------------
    if gap_shown.any():
        ax = axes[panel]
        ax.set_label("learner gap")
        ax.axhline(0.0, color="0.3", lw=1.0, ls="--", label="reproduces its training set")
        err = _column(rows, stderr(Col.LEARNER_GAP))
        ax.errorbar(rounds[gap_shown], gap[gap_shown], yerr=np.nan_to_num(err[gap_shown]), fmt="-o", ms=4, lw=1.4,
                    capsize=3, color=palette(1)[0], label="model reward - training set's (±1 se)")
        ax.set_title("Learner gap: near 0 = learns its data")
        ax.set_ylabel("reward difference")
        ax.legend(fontsize=7, loc="best", framealpha=0.85)
        _finish_x(ax)
    return fig


def _panel_grid(n_panels: int, *, legend_room: bool) -> tuple[Figure, list]:
    """``n_panels`` axes in rows of at most ``GRID_COLUMNS``, in reading order; unused cells removed."""
    ncols = min(n_panels, GRID_COLUMNS)
    nrows = int(math.ceil(n_panels / ncols))
    fig = new_figure(PANEL_SIZE[0] * ncols + (SHARE_LEGEND_WIDTH if legend_room else 0.0), PANEL_SIZE[1] * nrows)
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in grid[n_panels:]:
        ax.remove()
    return fig, list(grid[:n_panels])


def _predicted_share_keys(rows: Sequence[Mapping], keys: Sequence[str], share_prefix: str) -> list[str]:
    """The (at most ``MAX_PREDICTED``) classes the ideal learner moves most, over the whole run."""
    moves = []
    for key in PREDICTED_SHARE.columns(keys):
        name = PREDICTED_SHARE.name_of(key)
        observed, predicted = _column(rows, share_prefix + name), _column(rows, key)
        gap = np.abs(predicted - observed)
        if np.isfinite(gap).any():
            moves.append((float(np.nanmax(gap)), name))
    moves.sort(key=lambda m: -m[0])
    return [name for _, name in moves[:MAX_PREDICTED]]


def plot_round_metrics(rows: Sequence[Mapping], path: PathLike, *, share_prefix: str = SHARE.prefix) -> Path:
    """Plot the per-round table (``rounds.csv`` rows) and write a PNG.

    Panels, in reading order on a grid of at most three columns (six panels are
    2 x 3, about 1,600 px wide, to fit a laptop screen at 100%), each titled with
    what to look for:

    * reward: the model samples' mean with a ±std band (``reward_mean``,
      ``reward_std``) and the curated samples' mean (``curated_reward_mean``);
    * distance to the real data, when the rows have columns ending in
      ``_distance`` or ``_dist`` (e.g. ``sw_distance``);
    * shares: the ``share_<name>`` columns (fractions in [0, 1]) in percent,
      a stacked area chart (plus an "other" band when they add to less than
      100%), or lines when there are more than 12 of them;
    * observed vs predicted shares: the (up to 3) classes the ideal learner moves
      most, observed and as predicted the round before (``predicted_share_<name>``);
    * learner fidelity: ``reward_fidelity`` (with its standard error) and
      ``gain_share_fidelity`` against the faithful band 0.85-1.15.

    Values may be numbers, strings as read from a CSV file, or empty / NaN
    (round 0 has no curation, so its ``curated_reward_mean`` is NaN): missing
    points are left out. A single round is drawn with markers and bars.

    Raises:
        ValueError: ``rows`` is empty or not a list of dicts.
    """
    return save_figure(build_round_metrics_figure(rows, share_prefix=share_prefix), path)
