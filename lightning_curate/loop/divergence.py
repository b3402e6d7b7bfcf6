"""A diverged generator named at its first non-finite training loss, before its samples reach the reward.

A generator whose loss turns NaN (an ``lr`` far too large, say) samples NaN, and the
round's curation then failed on "non-finite rewards", blaming the reward model. The
watch keeps, on the loss's device, whether and at which step the loss first stopped
being finite (no host sync per step); the loop reads it once an epoch, before curating.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["DivergenceWatch", "TrainingDivergedError"]


class TrainingDivergedError(RuntimeError):
    """The generator's training loss became NaN or infinite."""


class DivergenceWatch:
    """The first step whose training loss was not finite, tracked on the device.

    Example:
        >>> watch = DivergenceWatch()
        >>> watch.update(torch.tensor(0.5), step=0); watch.update(torch.tensor(float("nan")), step=1)
        >>> watch.first_bad()
        (1, nan)
    """

    def __init__(self) -> None:
        self._step: Optional[Tensor] = None  # -1 while every loss was finite
        self._value: Optional[Tensor] = None

    def update(self, loss: Any, step: int) -> None:
        """Record one step's loss (a tensor, or a dict with ``loss``: what ``training_step`` returned)."""
        if isinstance(loss, dict):
            loss = loss.get("loss")
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            return
        loss = loss.detach().reshape(())
        if self._step is None or self._value is None or self._step.device != loss.device:
            self._step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._value = torch.zeros((), dtype=torch.float32, device=loss.device)
        new = (self._step < 0) & ~torch.isfinite(loss)
        self._step = torch.where(new, torch.full_like(self._step, step), self._step)
        self._value = torch.where(new, loss.float(), self._value)

    def first_bad(self) -> Optional[tuple[int, float]]:
        """``(step, loss)`` of the first non-finite loss, or ``None`` (one host sync)."""
        if self._step is None or self._value is None or int(self._step) < 0:
            return None
        return int(self._step), float(self._value)

    def check(self, pl_module: Any, epoch: int) -> None:
        """Raise :class:`TrainingDivergedError` naming the step and the learning rate, if the loss diverged."""
        bad = self.first_bad()
        if bad is None:
            return
        step, value = bad
        lr = getattr(pl_module, "lr", None)
        generator = type(getattr(pl_module, "generator", pl_module)).__name__
        raise TrainingDivergedError(
            f"the generator ({generator}) diverged: its training loss was {value} at step {step} (epoch {epoch}), "
            f"before any sample reached the reward model. A learning rate too large is the likely cause "
            f"(lr={lr}): lower it (model.init_args.lr), or check the generator's loss and data scale")
