"""Reward models: ``nn.Module``s mapping a batch ``[N, ...]`` to float32 rewards ``[N]``.

The curation step (docs/THEORY.md section 1) only ever calls ``reward(x)``, so any
``nn.Module`` whose forward returns one number per sample is a reward model. A
config names one by class path, e.g.::

    reward:
      class_path: my_package.MyReward      # any nn.Module returning [N]
      init_args: {gamma: 5.0}

:class:`RewardModel` is a convenience base: subclasses implement ``score`` and
inherit the ``gamma`` scale (the paper's ``r = gamma * q(x)``). Constants are
registered as buffers, so rewards follow ``.to(device)`` and run under
``torch.inference_mode``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_curate.utils.validation import check_float

__all__ = ["RewardModel"]


class RewardModel(nn.Module):
    """Base reward: ``forward(x) = gamma * score(x)``, float32 ``[N]`` (docs/byo/reward.md).

    Subclasses implement :meth:`score`. Not required: any ``nn.Module`` whose forward maps a batch
    ``[N, *data_shape]`` to ``N`` finite float rewards works wherever a reward is expected. The loop
    freezes it (``requires_grad_(False)``, ``eval()``), scores under ``torch.inference_mode`` on the
    module's device (keep constants in buffers), and calls ``prepare()`` once before fit if it has
    one. The fit-start check (:mod:`lightning_curate.loop.component_check`) scores a few of the
    generator's samples before any training and names the reward when it breaks this contract.

    Args:
        gamma: the reward's scale (the paper's ``r = gamma * q(x)``).

    Example:
        >>> import torch
        >>> class NearOrigin(RewardModel):
        ...     def score(self, x):
        ...         return -x.norm(dim=1)
        >>> NearOrigin(gamma=2.0)(torch.tensor([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [-10.0, -0.0]
    """

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = check_float("gamma", gamma)

    def score(self, x: Tensor) -> Tensor:
        """Unscaled reward ``[N]`` of a batch ``x`` ``[N, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(x) -> [N]")

    def forward(self, x: Tensor) -> Tensor:
        """``gamma * score(x)`` as float32 ``[N]``: the reward the curation sees."""
        return (self.gamma * self.score(x)).to(torch.float32)

    def extra_repr(self) -> str:
        """``gamma``, for ``print(reward)``."""
        return f"gamma={self.gamma}"
