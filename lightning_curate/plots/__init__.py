"""Figures of a run and of a sweep (matplotlib, written as PNG without a display)."""

from lightning_curate.plots.figures import (
    DPI,
    build_image_grid_figure,
    build_round_metrics_figure,
    build_rounds_2d_figure,
    plot_image_grid,
    plot_round_metrics,
    plot_rounds_2d,
    save_figure,
)

__all__ = ["DPI", "build_image_grid_figure", "build_round_metrics_figure", "build_rounds_2d_figure", "plot_image_grid",
           "plot_round_metrics", "plot_rounds_2d", "save_figure"]
