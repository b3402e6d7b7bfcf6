"""A reward per atom, for the exact learner (``configs/discrete.yaml``)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_curate.rewards.base import RewardModel
from lightning_curate.utils.validation import atom_indices

__all__ = ["AtomReward"]


class AtomReward(RewardModel):
    """``r(x) = gamma * rewards[x]`` for atom indices ``x`` of shape ``[n, 1]``.

    The theory guide's second worked example (docs/THEORY.md section 2) is ``rewards = [1, 0, ..., 0]``,
    ``gamma = 5`` (a perfect classifier's class-0 probability, scaled).
    """

    def __init__(self, rewards: list[float], gamma: float = 1.0) -> None:
        super().__init__(gamma)
        try:
            table = torch.as_tensor([float(v) for v in rewards], dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"rewards must be a list of numbers, got {rewards!r}") from err
        if table.numel() == 0 or not torch.isfinite(table).all():
            raise ValueError(f"rewards must be a non-empty list of finite numbers, got {rewards!r}")
        self.register_buffer("table", table, persistent=False)

    @property
    def values(self) -> Tensor:
        """The reward of every atom, ``gamma * rewards``, float64."""
        return self.gamma * self.table.double()

    def score(self, x: Tensor) -> Tensor:
        return self.table[atom_indices(x, self.table.numel(), type(self).__name__).to(self.table.device)]

    def extra_repr(self) -> str:
        return f"num_atoms={self.table.numel()}, gamma={self.gamma}"
