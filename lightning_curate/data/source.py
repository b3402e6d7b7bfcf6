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

from torch import Tensor, nn

__all__ = ["DataSource", "RealData"]



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
        """The real data: train and held-out samples, with labels where the data has classes."""
        raise NotImplementedError(f"{type(self).__name__} must implement load() -> RealData")

    def label(self, x: Tensor) -> Optional[Tensor]:
        """Labels ``[N]`` (int64) of samples ``x``, or ``None`` when the data has no classes."""
        return None

    def prepare(self) -> None:
        """Make local artifacts the source needs (e.g. train a judge); called once by ``prepare_data``."""

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """Extra per-round metrics of model ``samples`` against held-out ``reference`` (e.g. FID)."""
        return {}
