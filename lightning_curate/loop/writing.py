"""Writing a run's rounds for people: ``rounds.csv``, the loggers, the figures and the summary.

:class:`RunWriter` keeps the finished rounds' rows and preview samples and writes them
after each round (rank 0): the row to every logger, the whole table to ``rounds.csv``
(atomically), and the figures while drawing them costs at most a share of the run
(:class:`~lightning_curate.loop.report.PlotBudget`). What each artifact holds is
:mod:`lightning_curate.loop.report`'s; when to write it is decided here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from lightning_curate.loop.report import PlotBudget, log_row, plot_run, summary, write_table

__all__ = ["RunWriter"]


class RunWriter:
    """The finished rounds' rows and previews, and when they are written.

    Args:
        plots: draw ``round_metrics.png`` and ``samples.png``.

    Example:
        >>> writer = RunWriter(plots=False)
        >>> writer.rows[0] = {"round": 0, "reward_mean": 0.5}
        >>> writer.ordered_rows()
        [{'round': 0, 'reward_mean': 0.5}]
    """

    def __init__(self, plots: bool = True) -> None:
        self.make_plots = plots
        self.rows: dict[int, dict[str, Any]] = {}
        self.previews: dict[int, Any] = {}
        self.run_dir: Optional[Path] = None
        self._budget = PlotBudget()
        self._drawn = -1  # the last round whose figures were drawn

    @property
    def directory(self) -> Path:
        """The run directory (set in the loop's ``setup``)."""
        if self.run_dir is None:
            raise RuntimeError("RetrainingLoop: the run directory is set in setup(); use the loop inside Trainer.fit")
        return self.run_dir

    @property
    def table_path(self) -> Path:
        """``rounds.csv`` of the run."""
        return self.directory / "rounds.csv"

    def ordered_rows(self) -> list[dict[str, Any]]:
        """The rows by round."""
        return [self.rows[t] for t in sorted(self.rows)]

    def start(self) -> None:
        """Training starts (again): the plot budget counts from now."""
        self._budget = PlotBudget()

    def keep(self, round_idx: int, row: dict[str, Any], preview: Any) -> None:
        """Keep a round's row and preview samples (a restored or reused round's too)."""
        self.rows[round_idx] = row
        self.previews[round_idx] = preview

    def round_done(self, trainer: Any, pl_module: Any, round_idx: int, last: bool) -> None:
        """After round ``round_idx`` (rank 0): its row to the loggers, the table, and the figures if due."""
        log_row(trainer.loggers, self.rows[round_idx], step=trainer.global_step)
        self.write_table()
        if self.make_plots and self._budget.due(last=last):
            self._budget.draw(self.plot, trainer, pl_module)
            self._drawn = round_idx

    def write_table(self) -> None:
        """``rounds.csv`` from every finished round (atomically)."""
        write_table(self.ordered_rows(), self.table_path)

    def plot(self, trainer: Any, pl_module: Any) -> None:
        """``round_metrics.png`` and ``samples.png`` of every finished round."""
        order = sorted(self.rows)
        plot_run([self.rows[t] for t in order], [self.previews.get(t) for t in order], self.directory,
                 generator=pl_module.generator, reward=pl_module.reward, device=pl_module.device,
                 datamodule=trainer.datamodule)

    def finish(self, trainer: Any, pl_module: Any) -> None:
        """At the end of fit: draw the last round if the run stopped before its figures (``max_time``...)."""
        if self.make_plots and self.rows and self._drawn != max(self.rows):
            self.plot(trainer, pl_module)

    def summary(self, last_checkpoint: Optional[Path] = None, learner_noise: float = 0.0) -> str:
        """A short per-round table and where the artifacts are."""
        return summary(self.ordered_rows(), self.directory, last_checkpoint, learner_noise)
