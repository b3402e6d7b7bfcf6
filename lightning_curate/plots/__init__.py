"""Figures of a run and of a sweep (matplotlib, written as PNG without a display).

Each ``plot_*`` function writes its PNG atomically and returns the path; the
matching ``build_*_figure`` returns the :class:`matplotlib.figure.Figure`
instead, e.g. to hand it to a logger.
"""

from lightning_curate.plots.common import DPI, save_figure
from lightning_curate.plots.image_grid import build_image_grid_figure, plot_image_grid
from lightning_curate.plots.rounds import build_round_metrics_figure, plot_round_metrics
from lightning_curate.plots.samples import build_rounds_2d_figure, plot_rounds_2d
from lightning_curate.plots.sweep import build_sweep_figure, plot_sweep_metric

__all__ = ["DPI", "build_image_grid_figure", "build_round_metrics_figure", "build_rounds_2d_figure",
           "build_sweep_figure", "plot_image_grid", "plot_round_metrics", "plot_rounds_2d", "plot_sweep_metric",
           "save_figure"]
