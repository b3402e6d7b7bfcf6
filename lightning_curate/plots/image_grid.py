"""Generated images of every round: a mosaic of the first images of each round, rounds side by side.

The image experiments' ``samples.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from lightning_curate.plots.common import (
    ArrayLike,
    PathLike,
    check_titles,
    grid_shape,
    new_figure,
    save_figure,
    to_numpy,
)
from lightning_curate.utils.validation import check_int

__all__ = ["build_image_grid_figure", "plot_image_grid"]


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
    nrow = check_int("nrow", nrow, minimum=1)
    n_rounds = len(images_per_round)
    titles = check_titles(titles, n_rounds)

    grids = []
    for t, imgs in enumerate(images_per_round):
        arr = to_numpy(imgs, f"images_per_round[{t}]", dtype=np.float32)
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

    nrows, ncols = grid_shape(n_rounds)
    aspect = max(g.shape[0] / g.shape[1] for g in grids)
    fig = new_figure(ncols * 2.8, nrows * 2.8 * aspect + 0.4)
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
