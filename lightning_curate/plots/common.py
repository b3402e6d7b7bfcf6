"""What every figure of the package shares: the PNG writer, the figure factory and input checks.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas, never
through ``pyplot``, so no display is needed and no figure stays registered in
pyplot's state; :func:`save_figure` writes atomically so a reader (a run's
directory watched while it runs) never sees half a PNG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from torch import Tensor

__all__ = ["DPI", "ArrayLike", "PathLike", "check_titles", "grid_shape", "new_figure", "palette", "save_figure",
           "to_numpy"]

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]

DPI = 120
MAX_COLUMNS = 6


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



def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on an Agg canvas (no pyplot), ``width`` x ``height`` inches."""
    # A little air around the panels (4 and 6 points).
    fig = Figure(figsize=(width, height), dpi=DPI, layout=ConstrainedLayoutEngine(w_pad=4 / 72, h_pad=6 / 72))
    FigureCanvasAgg(fig)
    return fig



def to_numpy(x: ArrayLike, name: str, dtype=np.float64) -> np.ndarray:
    """``x`` (a tensor on any device, or an array-like) as a numpy array; ``name`` goes in the error."""
    if isinstance(x, Tensor):
        x = x.detach().to("cpu")
        if x.is_floating_point():
            x = x.float()
        return x.numpy().astype(dtype, copy=False)
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a tensor or an array, got {type(x).__name__}") from err



def check_titles(titles: Optional[Sequence[str]], n: int, name: str = "titles") -> list[str]:
    """One title per round: ``titles`` as strings, or ``"round t"``; a count mismatch names ``name``."""
    if titles is None:
        return [f"round {t}" for t in range(n)]
    titles = list(titles)
    if len(titles) != n:
        raise ValueError(f"{name}: expected {n} titles (one per round), got {len(titles)}")
    return [str(t) for t in titles]


def grid_shape(n: int, max_columns: int = MAX_COLUMNS) -> tuple[int, int]:
    """``(rows, columns)`` of a panel grid for ``n`` panels, at most ``max_columns`` wide."""
    ncols = min(n, max_columns)
    return int(math.ceil(n / ncols)), ncols


def palette(n: int) -> list:
    """``n`` distinct colours from tab10 (up to 9) or tab20 (up to 18), then a cycle.

    The greys of tab10 / tab20 are left out: grey means "off-mode", "other"
    and "real data" in these figures.
    """
    if n <= 9:
        colors = [colormaps["tab10"](i) for i in range(10) if i != 7]
    else:
        colors = [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    return [colors[i % len(colors)] for i in range(max(n, 1))]
