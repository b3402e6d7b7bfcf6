"""A reward of your own: how close a point is to a target.

Any ``nn.Module`` whose forward maps ``[n, *data_shape]`` to one float per sample,
``[n]``, is a reward; :class:`lightning_curate.RewardModel` adds the ``gamma``
scale (docs/byo/reward.md). Configs name it as ``my_reward.NearTarget``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_curate import RewardModel

__all__ = ["NearTarget"]


class NearTarget(RewardModel):
    """``r(x) = -gamma * min(|x - target|, cap)``: the curators prefer points near ``target``.

    Args:
        target: the preferred point, one number per axis.
        cap: distances beyond it all score the same (a bounded reward).
        gamma: the reward's scale (the paper's ``r = gamma * q(x)``).
    """

    def __init__(self, target: list[float], cap: float = 3.0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.register_buffer("target", torch.tensor(target, dtype=torch.float32))  # follows .to(device)
        self.cap = cap

    def score(self, x: Tensor) -> Tensor:
        """``-min(|x - target|, cap)``, ``[n]``."""
        return -(x - self.target).norm(dim=1).clamp_max(self.cap)
