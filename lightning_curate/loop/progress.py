"""A progress bar over each round, redrawn a few times a second."""

from __future__ import annotations

import math
import time
from typing import Any, Optional

from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_curate.loop.schedule import schedule_of
from lightning_curate.utils.compat import progress_bar_leaves, train_progress_bar
from lightning_curate.utils.validation import check_float

__all__ = ["RoundProgressBar"]


class RoundProgressBar(TQDMProgressBar):
    """A ``TQDMProgressBar`` with one bar per round, ``Round t/T · epoch e``, over the round's batches.

    Why: a round of the main job is 64 epochs of one batch each. Lightning's bar restarts
    every epoch and redraws five times in a one-batch epoch, which costs more than the
    batch's training. This bar spans a round (round 0 is the initial epochs) and redraws
    at most every ``min_interval`` seconds, and always at the round's last batch. Without
    a :class:`~lightning_curate.loop.RetrainingLoop` among the callbacks it spans an epoch.

    Args:
        refresh_rate: batches between two checks of the clock (0 turns the bar off).
        process_position: as ``TQDMProgressBar``'s.
        leave: keep each round's finished bar on screen.
        min_interval: seconds between two redraws.

    Example::

        trainer = Trainer(callbacks=[RetrainingLoop(rounds=3), RoundProgressBar(min_interval=0.5)])
    """

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False,
                 min_interval: float = 0.2) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)
        self.min_interval = check_float("min_interval", min_interval, minimum=0.0)
        self._span: Optional[tuple[int, int]] = None  # first and last epoch of the bar
        self._epoch = -1  # the epoch the counts below are for
        self._batches_before = 0  # batches of the bar's earlier epochs
        self._n = 0  # batches done in the bar's span
        self._drawn_at = -float("inf")
        self._round_done = False  # a round ended: draw it once more, with its last epoch's metrics

    def _span_of(self, trainer: Any, epoch: int) -> tuple[tuple[int, int], str]:
        loop = schedule_of(trainer)
        if loop is None:
            return (epoch, epoch), f"Epoch {epoch}"
        round_idx = loop.round_of_epoch(epoch)
        span = (loop.first_epoch_of_round(round_idx), loop.last_epoch_of_round(round_idx))
        return span, f"Round {round_idx}/{loop.rounds} · epoch {epoch}"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._span, self._epoch, self._round_done = None, -1, False

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._finish_round(trainer, pl_module)
        self._enter_epoch(trainer)

    def _enter_epoch(self, trainer: Any) -> None:
        """Counts (and, at a round's start or after a resume, a new bar) for the epoch now running."""
        epoch = self._epoch = trainer.current_epoch
        span, description = self._span_of(trainer, epoch)
        per_epoch = _finite_count(self.total_train_batches)
        # A round's set is fixed, so its epochs have the same number of batches.
        self._batches_before = self._n = (epoch - span[0]) * (per_epoch or 0)
        if span != self._span:  # a new round (or a resume): a new bar
            if progress_bar_leaves(self) and self._span is not None:
                self.train_progress_bar = self.init_train_tqdm()
            self._span = span
            bar = self.train_progress_bar
            bar.total = None if per_epoch is None else per_epoch * (span[1] - span[0] + 1)
            bar.reset()  # keeps the total just set (tqdm's reset(total=None) would keep the old one)
            bar.initial = self._batches_before  # a resume mid-round: the rate counts from here
            self._drawn_at = time.monotonic()
        self.train_progress_bar.set_description(description, refresh=False)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._epoch != trainer.current_epoch:  # restarted mid-epoch: the epoch-start hooks were skipped
            self._enter_epoch(trainer)
        self._n = self._batches_before + batch_idx + 1
        if not self.is_enabled or (batch_idx + 1) % self.refresh_rate:
            return
        now = time.monotonic()
        if now - self._drawn_at >= self.min_interval:
            self._draw(trainer, pl_module)
            self._drawn_at = now

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # The module logs the epoch's loss after this hook: the round's last draw waits for the next
        # epoch's start (or the end of training), when the progress-bar metrics hold it.
        self._round_done = self._span is not None and trainer.current_epoch == self._span[1]

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish_round(trainer, pl_module)
        super().on_train_end(trainer, pl_module)

    def _finish_round(self, trainer: Any, pl_module: Any) -> None:
        if self._round_done:
            self._round_done = False
            self._draw(trainer, pl_module)
            if progress_bar_leaves(self):
                self.train_progress_bar.close()

    def _draw(self, trainer: Any, pl_module: Any) -> None:
        bar = train_progress_bar(self)
        if bar is None or bar.disable:
            return
        bar.n = self._n
        bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
        bar.refresh()


def _finite_count(count: Optional[float]) -> Optional[float]:
    """A batch count tqdm can show: ``None`` for an unknown (infinite or NaN) one."""
    return None if count is None or math.isinf(count) or math.isnan(count) else count
