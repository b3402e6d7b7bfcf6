"""Rewards built from another reward: the adversary that wants the opposite of the honest curators."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

__all__ = ["NegatedReward"]


class NegatedReward(nn.Module):
    """``r(x) = -reward(x)``: an adversarial curator that prefers what ``reward`` dislikes.

    Any reward model works inside (it is frozen like every judge). A per-atom
    table (``values``, e.g. :class:`~lightning_curate.rewards.AtomReward`) is
    negated too, so the exact learner's theory columns follow the wrapper.

    Example:
        >>> import torch
        >>> from lightning_curate.rewards import AtomReward
        >>> NegatedReward(AtomReward([1.0, 0.0], gamma=5.0))(torch.tensor([[0.0], [1.0]])).tolist()
        [-5.0, -0.0]
    """

    def __init__(self, reward: nn.Module):
        super().__init__()
        if not isinstance(reward, nn.Module):
            raise TypeError(f"reward must be an nn.Module returning one reward per sample, "
                            f"got {type(reward).__name__}")
        self.reward = reward

    @property
    def values(self) -> Optional[Tensor]:
        """The negated per-atom rewards of the wrapped reward, if it has a table."""
        inner = getattr(self.reward, "values", None)
        return -inner if isinstance(inner, Tensor) else None

    def prepare(self) -> None:
        """Let the wrapped reward make its local artifacts (a classifier checkpoint), once."""
        prepare = getattr(self.reward, "prepare", None)
        if callable(prepare):
            prepare()

    def forward(self, x: Tensor) -> Tensor:
        """``-reward(x)``, ``[N]``."""
        return -self.reward(x)
