"""Aggregate a sweep: every run's ``rounds.csv`` into ``sweep.csv``, and the mean over seeds per round.

The summaries (mean and 95% Student-t half-width per grid point and round) feed
the figures, drawn by :mod:`lightning_curate.plots.sweep`.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path
from typing import Optional, Sequence

from lightning_curate.experiments.grid import RunSpec, format_value
from lightning_curate.experiments.runner import read_table, table_path
from lightning_curate.plots.sweep import plot_grid_figure, plot_sweep_metric
from lightning_curate.utils.table import write_csv

__all__ = ["NOT_METRICS", "TABLE_NAME", "aggregate", "as_float", "final_grid", "metric_columns", "plot_final_grid",
           "plot_sweep", "summarise"]

TABLE_NAME = "sweep.csv"
# Columns that are bookkeeping rather than metrics: no figure for them.
NOT_METRICS = ("round", "epoch", "real_fraction", "n_real", "n_synthetic")


def aggregate(specs: Sequence[RunSpec], out) -> tuple[Path, list[dict]]:
    """Write ``<out>/sweep.csv``: one row per point x seed x round (runs without a table are left out).

    Columns: ``point`` (its directory name), one column per grid key (named by the
    key itself, e.g. ``data.init_args.real_fraction``, so it never clashes with a
    metric), ``seed``, then the columns of ``rounds.csv``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for s in specs for k in s.values))
    rows, metric_cols = [], []
    for spec in specs:
        path = table_path(spec.run_dir)
        if path is None:
            continue
        for r in read_table(path):
            r = {c: v for c, v in r.items() if c not in ("point", "seed", *keys)}
            for c in r:
                if c not in metric_cols:
                    metric_cols.append(c)
            rows.append({"point": spec.point, **{k: format_value(v) for k, v in spec.values.items()},
                         "seed": spec.seed, **r})
    columns = ["point", *keys, "seed", *metric_cols]
    return write_csv(out / TABLE_NAME, columns, rows), rows


def as_float(v) -> float:
    """A table cell as a float; NaN for an empty or non-numeric cell."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _t_quantile(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return 1.96


def metric_columns(rows: Sequence[dict], patterns: Optional[Sequence[str]] = None,
                   exclude: Sequence[str] = ()) -> list[str]:
    """Numeric per-round columns of the aggregated rows, the ones worth a figure.

    Bookkeeping, grid-key (dotted config paths) and ``exclude`` columns are left out;
    ``patterns`` (shell-style) keep only the columns that match one of them.
    """
    skip = {"point", "seed", *NOT_METRICS, *exclude}
    cols = []
    for r in rows:
        for c in r:
            if c not in cols and c not in skip and "." not in c:
                cols.append(c)
    numeric = []
    for c in cols:
        vals = [as_float(r.get(c)) for r in rows]
        if any(math.isfinite(v) for v in vals):
            numeric.append(c)
    if patterns:
        numeric = [c for c in numeric if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return numeric


def summarise(rows: Sequence[dict], metric: str) -> dict[str, tuple[list[float], list[float], list[float], int]]:
    """Per point: rounds, mean over seeds, 95% half-width, and the number of seeds."""
    by_point: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        v, t = as_float(r.get(metric)), as_float(r.get("round"))
        if math.isfinite(t):
            by_point.setdefault(r["point"], {}).setdefault(t, [])
            if math.isfinite(v):
                by_point[r["point"]][t].append(v)
    out = {}
    for point, per_round in by_point.items():
        rounds, means, halfs, n_max = [], [], [], 0
        for t in sorted(per_round):
            vals = per_round[t]
            if not vals:
                continue
            n = len(vals)
            mean = sum(vals) / n
            half = 0.0
            if n > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
                half = _t_quantile(n - 1) * sd / math.sqrt(n)
            rounds.append(t)
            means.append(mean)
            halfs.append(half)
            n_max = max(n_max, n)
        out[point] = (rounds, means, halfs, n_max)
    return out



def plot_sweep(rows: Sequence[dict], out_dir, *, metrics: Optional[Sequence[str]] = None,
               point_order: Optional[Sequence[str]] = None) -> list[Path]:
    """One PNG per metric in ``out_dir``: mean over seeds per round with a 95% band, a line per point."""
    paths = []
    for metric in metric_columns(rows, metrics):
        summary = summarise(rows, metric)
        if summary:
            paths.append(plot_sweep_metric(metric, summary, out_dir, point_order=point_order))
    return paths


def final_grid(rows: Sequence[dict], x: str, y: str, metric: str) -> dict[tuple[float, float], float]:
    """``metric`` at each run's last round, averaged over seeds, per ``(x, y)`` grid cell (grid-key columns)."""
    last: dict[tuple[str, int], dict] = {}
    for r in rows:
        key = (r["point"], r["seed"])
        if key not in last or as_float(r.get("round")) > as_float(last[key].get("round")):
            last[key] = r
    cells: dict[tuple[float, float], list[float]] = {}
    for r in last.values():
        v = as_float(r.get(metric))
        if math.isfinite(v):
            cells.setdefault((as_float(r.get(x)), as_float(r.get(y))), []).append(v)
    return {cell: sum(vs) / len(vs) for cell, vs in cells.items()}


def plot_final_grid(rows: Sequence[dict], path, *, x: str, y: str, metric: str, reference: Optional[str] = None,
                    x_label: Optional[str] = None, y_label: Optional[str] = None) -> Optional[Path]:
    """The last round's ``metric`` on the ``(x, y)`` grid, beside ``reference`` (e.g. the ideal learner's)."""
    panels = {f"{metric} (runs)": final_grid(rows, x, y, metric)}
    if reference:
        panels[f"{reference} (ideal learner)"] = final_grid(rows, x, y, reference)
    cells = [c for panel in panels.values() for c in panel]
    if not cells:
        return None
    xs, ys = sorted({c[0] for c in cells}), sorted({c[1] for c in cells})
    rounds = max((as_float(r.get("round")) for r in rows), default=math.nan)
    return plot_grid_figure(panels, xs, ys, path, x_label=x_label or x.split(".")[-1],
                            y_label=y_label or y.split(".")[-1],
                            title=f"after {rounds:g} rounds (mean over seeds)")
