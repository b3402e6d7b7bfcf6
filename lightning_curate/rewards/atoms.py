"""A reward per atom, for the exact learner (``configs/discrete.yaml``)."""

from __future__ import annotations

from torch import Tensor

from lightning_curate.rewards.base import RewardModel
from lightning_curate.utils.validation import atom_indices, check_vector

__all__ = ["AtomReward"]


class AtomReward(RewardModel):
    """``r(x) = gamma * rewards[x]`` for atom indices ``x`` of shape ``[n, 1]``.

    The theory guide's second worked example (docs/THEORY.md section 2) is ``rewards = [1, 0, ..., 0]``,
    ``gamma = 5`` (a perfect classifier's class-0 probability, scaled).
    """

    table: Tensor

    def __init__(self, rewards: list[float], gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.register_buffer("table", check_vector("rewards", rewards), persistent=False)

    @property
    def values(self) -> Tensor:
        """The reward of every atom, ``gamma * rewards``, float64."""
        return self.gamma * self.table.double()

    def score(self, x: Tensor) -> Tensor:
        """``rewards[x]`` for atom indices ``x`` ``[n, 1]``."""
        return self.table[atom_indices(x, self.table.numel(), type(self).__name__).to(self.table.device)]

    def extra_repr(self) -> str:
        """The number of atoms and ``gamma``, for ``print(reward)``."""
        return f"num_atoms={self.table.numel()}, gamma={self.gamma}"
