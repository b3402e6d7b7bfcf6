"""A data source of your own: Gaussian blobs on a circle, with a class per blob.

A :class:`lightning_curate.DataSource` gives the real data (``load``) and, if
the data has classes, labels any sample (``label``) and names the classes
(``class_names``: the ``share_<name>`` columns of ``rounds.csv`` and the legend
of ``samples.png``). See docs/byo/data.md. Configs name it as ``my_data.Blobs``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_curate import DataSource, RealData

__all__ = ["Blobs"]


class Blobs(DataSource):
    """``num_blobs`` Gaussian blobs of width ``std``, evenly spaced on a circle of ``radius``.

    Args:
        num_blobs: blobs (and classes).
        radius: the circle's radius.
        std: each blob's standard deviation.
        num_train: real training samples.
        num_heldout: held-out samples (for the distance metrics).
        seed: the data's seed: the same seed, the same data.
    """

    centers: Tensor

    def __init__(self, num_blobs: int = 4, radius: float = 2.0, std: float = 0.3, num_train: int = 2000,
                 num_heldout: int = 500, seed: int = 0) -> None:
        super().__init__()
        angles = torch.arange(num_blobs, dtype=torch.float32) * (2 * math.pi / num_blobs)
        self.register_buffer("centers", radius * torch.stack([angles.cos(), angles.sin()], dim=1))
        self.class_names = ["east", "north", "west", "south"] if num_blobs == 4 else [
            f"blob{i}" for i in range(num_blobs)]
        self.std, self.num_train, self.num_heldout, self.seed = std, num_train, num_heldout, seed

    def _draw(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        labels = torch.randint(len(self.class_names), (n,), generator=gen)
        return self.centers.cpu()[labels] + self.std * torch.randn(n, 2, generator=gen), labels

    def load(self) -> RealData:
        """Seeded samples and their blobs: float32 ``[N, 2]`` and int64 ``[N]``."""
        gen = torch.Generator().manual_seed(self.seed)
        train, train_labels = self._draw(self.num_train, gen)
        heldout, heldout_labels = self._draw(self.num_heldout, gen)
        return RealData(train=train, heldout=heldout, train_labels=train_labels, heldout_labels=heldout_labels)

    def label(self, x: Tensor) -> Tensor:
        """The nearest blob of each point, int64 ``[n]`` in ``0..num_blobs - 1``."""
        return torch.cdist(x.float(), self.centers.to(x.device)).argmin(dim=1)
