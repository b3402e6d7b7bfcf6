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
    """Interface of a real-data source: what ``p_data`` is (docs/byo/data.md).

    Subclasses implement :meth:`load`; a source whose data has classes also sets
    ``class_names`` and implements :meth:`label`. The fit-start check
    (:mod:`lightning_curate.loop.component_check`) loads the data and labels a few
    samples before any training, and names the source when it breaks this contract.

    Attributes:
        class_names: one name per class (letters, digits, ``_``: they name the ``share_<name>``
            columns of ``rounds.csv`` and the legend of ``samples.png``); ``None`` when the
            data has no classes.

    Example:
        >>> import torch
        >>> class Line(DataSource):
        ...     def load(self):
        ...         gen = torch.Generator().manual_seed(0)  # deterministic: every process, every resume
        ...         return RealData(train=torch.rand(100, 2, generator=gen), heldout=torch.rand(20, 2, generator=gen))
        >>> Line().load().train.shape
        torch.Size([100, 2])
    """

    class_names: Optional[list[str]] = None

    def load(self) -> RealData:
        """The real data, called lazily, once, on every process (before training, by the fit-start check).

        Returns:
            ``RealData``: ``train`` and ``heldout`` float ``[N, *data_shape]``, finite and non-empty,
            with the generator's ``data_shape``; labels int64 ``[N]`` where the data has classes.
            Seeded and read from local files: the same data every time, nothing downloaded.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load() -> RealData")

    def label(self, x: Tensor) -> Optional[Tensor]:
        """The class of each sample.

        Args:
            x: samples ``[n, *data_shape]``: the generator's (on the module's device) or real ones.

        Returns:
            int64 ``[n]`` in ``0..len(class_names) - 1`` (every sample gets a class), or ``None``
            when the data has no classes.
        """
        return None

    def prepare(self) -> None:
        """Make local artifacts the source needs (e.g. train a judge); called once by ``prepare_data``."""

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """Extra per-round metrics of model ``samples`` against held-out ``reference`` (e.g. FID)."""
        return {}
