"""The round schedule: which epochs make which round, and where a round ends.

A round is a block of epochs: round 0 is ``initial_epochs`` epochs on real data, every
later round ``epochs_per_round`` epochs. The callbacks that act at round ends (the loop,
its checkpoint, its progress bar) read the schedule here, through :func:`schedule_of`,
so none of them imports another.

The sample budget may grow by round too: :class:`SlotSchedule` gives the number of slots a
round curates (``CurationModule(num_slots_schedule=...)``).

Example:
    >>> s = RoundSchedule(rounds=2, epochs_per_round=3, initial_epochs=4)
    >>> s.total_epochs, s.round_of_epoch(3), s.round_of_epoch(4), s.last_epoch_of_round(2)
    (10, 0, 1, 9)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

from lightning_curate.utils.compat import epoch_batches_ready, set_max_epochs
from lightning_curate.utils.validation import check_choice, check_float, check_int

__all__ = ["SLOT_SCHEDULES", "RoundSchedule", "SlotSchedule", "at_round_end", "epoch_finished", "schedule_of"]

SLOT_SCHEDULES = ("constant", "linear", "geometric")


@dataclass(frozen=True)
class SlotSchedule:
    """How many slots each round curates: ``num_slots`` at round 0, then growing by round.

    ``constant``: ``N`` every round; ``linear``: ``N + increment * t`` (``increment`` defaults
    to ``N``: ``N, 2N, 3N, ...``); ``geometric``: ``round(N * factor ** t)``. The round is the one
    whose model is sampled (round ``t``'s curation trains round ``t + 1``). It depends on the round
    index alone, so a resumed run curates what the uninterrupted run does.

    Args:
        kind: ``constant``, ``linear`` or ``geometric``.
        factor: the geometric growth per round (``> 0``; below 1 shrinks, never under one slot).
        increment: the linear growth per round, in slots (may be negative; never under one slot).

    Example (YAML: ``num_slots_schedule: {kind: geometric, factor: 1.5}``):
        >>> [SlotSchedule("geometric", factor=1.5).slots(1000, t) for t in range(3)]
        [1000, 1500, 2250]
        >>> [SlotSchedule("linear").slots(1000, t) for t in range(3)]
        [1000, 2000, 3000]
    """

    kind: str = "constant"
    factor: float = 1.0
    increment: Optional[int] = None

    def __post_init__(self) -> None:
        check_choice("num_slots_schedule.kind", self.kind, SLOT_SCHEDULES)
        check_float("num_slots_schedule.factor", self.factor, minimum=0.0, strict_minimum=True)
        if self.increment is not None:
            check_int("num_slots_schedule.increment", self.increment)

    def slots(self, num_slots: int, round_idx: int) -> int:
        """The slots of round ``round_idx``'s curation, from the base ``num_slots``."""
        if self.kind == "linear":
            step = num_slots if self.increment is None else self.increment
            return max(1, num_slots + step * round_idx)
        if self.kind == "geometric":
            return max(1, math.floor(num_slots * self.factor ** round_idx + 0.5))
        return num_slots

    def settings(self) -> dict[str, Any]:
        """Its fields, for the manifest's science settings."""
        return asdict(self)


class RoundSchedule:
    """Round and epoch arithmetic of a run (a base of :class:`~lightning_curate.loop.RetrainingLoop`).

    Args:
        rounds: curated retraining rounds after round 0.
        epochs_per_round: training epochs of each curated round.
        initial_epochs: epochs of round 0 (default: ``epochs_per_round``).
    """

    def __init__(self, rounds: int = 10, epochs_per_round: int = 1, initial_epochs: Optional[int] = None) -> None:
        super().__init__()
        check_int("rounds", rounds, minimum=0)
        check_int("epochs_per_round", epochs_per_round, minimum=1)
        if initial_epochs is not None:
            check_int("initial_epochs", initial_epochs, minimum=1)
        self.rounds, self.epochs_per_round = rounds, epochs_per_round
        self.initial_epochs = initial_epochs if initial_epochs is not None else epochs_per_round

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run: round 0's and every curated round's."""
        return self.initial_epochs + self.rounds * self.epochs_per_round

    def round_of_epoch(self, epoch: int) -> int:
        """The round epoch ``epoch`` (0-based) trains."""
        return 0 if epoch < self.initial_epochs else 1 + (epoch - self.initial_epochs) // self.epochs_per_round

    def last_epoch_of_round(self, round_idx: int) -> int:
        """The epoch at whose end round ``round_idx`` is curated."""
        return self.initial_epochs - 1 + round_idx * self.epochs_per_round

    def first_epoch_of_round(self, round_idx: int) -> int:
        """The epoch that starts round ``round_idx`` (where its data are loaded)."""
        return 0 if round_idx == 0 else self.last_epoch_of_round(round_idx - 1) + 1

    def ends_round(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` is its round's last."""
        return epoch == self.last_epoch_of_round(self.round_of_epoch(epoch))

    def apply_to(self, trainer: Any) -> None:
        """Make the trainer's ``max_epochs`` the schedule's (the config's ``max_epochs`` is replaced)."""
        set_max_epochs(trainer, self.total_epochs)


def schedule_of(trainer: Any) -> Optional[RoundSchedule]:
    """The trainer's round schedule (its :class:`~lightning_curate.loop.RetrainingLoop`), or ``None``."""
    return next((c for c in trainer.callbacks if isinstance(c, RoundSchedule)), None)


def epoch_finished(trainer: Any) -> bool:
    """Whether the epoch now ending ran all its batches (an epoch cut short by a stop did not)."""
    total = trainer.num_training_batches
    if total == float("inf"):  # a loader without a length: only a stop tells
        return not trainer.should_stop
    return epoch_batches_ready(trainer) >= total


def at_round_end(trainer: Any) -> bool:
    """Whether the epoch now ending is the whole last epoch of a round (any whole epoch, without a
    schedule). An epoch cut short (``max_time``, ``max_steps``, a stop) is no round end."""
    if not epoch_finished(trainer):
        return False
    schedule = schedule_of(trainer)
    return schedule is None or schedule.ends_round(trainer.current_epoch)
