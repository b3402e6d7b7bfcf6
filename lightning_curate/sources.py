"""Real data sources: what ``p_data`` is, and how generated samples are labelled.

A source gives the real training set and a held-out set (for distances), and
optionally labels any sample (the mode of a 2D mixture, or a classifier
judge's class for images) so that a run can report mode or class shares.
Implement :class:`DataSource` to bring your own data; the DataModule takes it
by class path in the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_curate import data2d


@dataclass
class RealData:
    """Real samples for training and held-out evaluation (labels optional)."""

    train: Tensor
    heldout: Tensor
    train_labels: Optional[Tensor] = None
    heldout_labels: Optional[Tensor] = None


class DataSource(nn.Module):
    """Interface of a real-data source.

    ``load()`` returns the data (called lazily, once); ``label(x)`` maps samples
    to int64 labels in ``0..len(class_names)-1`` or returns ``None`` when the
    data has no classes; ``class_names`` names them (``share_<name>`` columns).
    """

    class_names: Optional[list[str]] = None

    def load(self) -> RealData:
        raise NotImplementedError(f"{type(self).__name__} must implement load() -> RealData")

    def label(self, x: Tensor) -> Optional[Tensor]:
        return None

    def prepare(self) -> None:
        """Make local artifacts the source needs (e.g. train a judge); called once by ``prepare_data``."""

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """Extra per-round metrics of model ``samples`` against held-out ``reference`` (e.g. FID)."""
        return {}


class Toy2D(DataSource):
    """A labelled 2D dataset generated from a seed (``mog8``, ``grid25``, ``moons``, ``circles``).

    Generated samples are labelled with the mode of their nearest real point.
    """

    def __init__(self, name: str = "mog8", num_train: int = 20000, num_heldout: int = 5000,
                 seed: int = 0, noise: Optional[float] = None):
        super().__init__()
        if name not in data2d.DATASETS:
            raise ValueError(f"data source name must be one of {data2d.DATASETS}, got {name!r}")
        for key, value in (("num_train", num_train), ("num_heldout", num_heldout)):
            if value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        self.name, self.num_train, self.num_heldout = name, num_train, num_heldout
        self.seed, self.noise = seed, noise
        self.class_names = data2d.mode_names(name)
        self.assigner = data2d.ModeAssigner(name, seed=seed + 7919, noise=noise)

    def load(self) -> RealData:
        x, y = data2d.make_2d(self.name, self.num_train, self.seed, self.noise)
        hx, hy = data2d.make_2d(self.name, self.num_heldout, self.seed + 1, self.noise)
        return RealData(train=x, heldout=hx, train_labels=y, heldout_labels=hy)

    @torch.no_grad()
    def label(self, x: Tensor) -> Tensor:
        return self.assigner(x.reshape(x.shape[0], -1).float())
