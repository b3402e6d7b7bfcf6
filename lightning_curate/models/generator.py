"""The interface between the retraining loop and a generative model.

The loop needs only a few things from a model: a training loss on a batch of
data, reproducible sampling, a hook after each optimizer step (for weight
averaging) and two round hooks. These are plain ``nn.Module``\\ s, with no
Lightning in them, so custom trainers can use them as they are.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["Generator"]


class Generator(nn.Module):
    """Interface of a generative model that the retraining loop can drive.

    Subclasses set ``data_shape`` (the shape of one sample) and implement
    :meth:`loss` and :meth:`sample`; :meth:`update_ema` is optional.
    """

    data_shape: tuple[int, ...]

    def loss(self, x: Tensor) -> Tensor:
        """Scalar training loss on a batch ``x`` of shape ``[B, *data_shape]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement loss(x) -> scalar Tensor")

    def sample(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
    ) -> Tensor:
        """``n`` samples of shape ``[n, *data_shape]``; the same ``generator`` state gives the same samples."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement sample(n, *, generator=None, device=None) -> Tensor"
        )

    def update_ema(self) -> None:
        """Called after each optimizer step; a model that averages its weights updates them here."""

    def start_round(self, round_idx: int) -> None:
        """Called when training on round ``round_idx``'s data begins (``round_idx >= 1``). A model that
        averages its weights may restart the average here, so it holds no memory of earlier rounds."""

    def finish_round(self) -> None:
        """Called when a round's data is complete without this model having sampled it (a stored
        round reused after a crash). A model that refits lazily (the exact learner) refits here."""

    def round_metrics(self, reward: nn.Module, source: nn.Module, *, beta: float, num_candidates: int,
                      real_fraction: float, round_idx: int) -> dict[str, float]:
        """Extra ``rounds.csv`` columns this model can compute exactly (e.g. its KL to the ideal learner)."""
        return {}
