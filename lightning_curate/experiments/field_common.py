"""What the reproductions of the field's results share: their result rows, a round store in memory, medians.

Each reproduction (``lightning_curate.experiments.field_*``) runs one paper's setting with the package's
learners and curation step, and returns a :class:`FieldResult`: rows that each name a claim of the paper
with its published figure, our measurement over seeds, and a PASS/FAIL verdict, plus the figures it drew.
``scripts/reproduce.py --only field`` runs them and writes the report; the modules hold no runner code.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import Tensor

from lightning_curate.data import DataSource, RealData

__all__ = ["FieldResult", "FieldRow", "MemoryStore", "TensorSource", "median", "one_thread", "quartiles"]


@dataclass
class FieldRow:
    """One claim of a paper, checked: what is checked (with the paper's figure), the verdict, our numbers.

    ``passed`` is ``None`` for a row that only reports (no claim to decide).
    """

    what: str
    passed: Optional[bool]
    numbers: str


@dataclass
class FieldResult:
    """A reproduction's rows and figures, with the paper it reproduces and its setting in words."""

    name: str
    title: str
    paper: str
    setting: str
    rows: list[FieldRow] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def add(self, what: str, passed: Optional[bool], numbers: str) -> None:
        """Append a row (``passed`` made a plain ``bool``, ``None`` kept)."""
        self.rows.append(FieldRow(what, None if passed is None else bool(passed), numbers))


class MemoryStore:
    """The round store's ``read`` for the data module, in memory: the loop driven round by round without the
    trainer (``BlendingDataModule.attach(store, ...)`` then ``dataset_for_round(t)``)."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}

    def read(self, t: int) -> Any:
        """Round ``t``'s stored tensors, as the data module reads a record."""
        return type("Record", (), {"tensors": self.rounds[t]})()


class TensorSource(DataSource):
    """A data source of given tensors: ``train`` and ``heldout`` points (``p_data`` drawn beforehand).

    Example:
        >>> TensorSource(torch.zeros(3, 2), torch.ones(1, 2)).load().heldout.tolist()
        [[1.0, 1.0]]
    """

    def __init__(self, train: Tensor, heldout: Tensor) -> None:
        super().__init__()
        self._data = RealData(train=train, heldout=heldout)

    def load(self) -> RealData:
        """The tensors given."""
        return self._data


def median(values: list[float]) -> float:
    """The median (the mean of the two middle values for an even count).

    Example:
        >>> median([3.0, 1.0, 2.0, 10.0])
        2.5
    """
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def quartiles(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartiles, by rank (``sorted[n // 4]``, ``sorted[3n // 4]``).

    Example:
        >>> quartiles([1.0, 2.0, 3.0, 4.0])
        (2.0, 4.0)
    """
    ordered = sorted(values)
    return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]



@contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one torch thread (many tiny fits: the thread pool's overhead dominates), then restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
