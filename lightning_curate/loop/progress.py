"""A progress bar that says which round is running."""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

__all__ = ["RoundProgressBar"]


class RoundProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose description reads ``Round t/T · epoch e``.

    It redraws every ``refresh_rate`` batches (default 20, not Lightning's 1):
    a redraw costs a fair fraction of a small model's training step.
    """

    def __init__(self, refresh_rate: int = 20, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate=refresh_rate, process_position=process_position, leave=leave)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        from lightning_curate.loop.callback import RetrainingLoop

        loop = next((c for c in trainer.callbacks if isinstance(c, RetrainingLoop)), None)
        if loop is not None:
            epoch = trainer.current_epoch
            self.train_progress_bar.set_description(
                f"Round {loop.round_of_epoch(epoch)}/{loop.rounds} · epoch {epoch}")
