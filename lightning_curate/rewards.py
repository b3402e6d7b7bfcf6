"""Reward models: ``nn.Module``s mapping a batch ``[N, ...]`` to float32 rewards ``[N]``.

The curation step (THEORY.md section 1) only ever calls ``reward(x)``, so any
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

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn


def _finite_float(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return value


def _vector(values, what: str) -> Tensor:
    """A non-empty list of finite numbers as a float32 ``[D]`` tensor."""
    try:
        vec = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a list of numbers, got {values!r}") from err
    if vec.numel() == 0:
        raise ValueError(f"{what} must not be empty")
    if not torch.isfinite(vec).all():
        raise ValueError(f"{what} must be finite, got {values!r}")
    return vec


def _check_points(x: Tensor, dim: int, who: str) -> Tensor:
    """``x`` as float32 ``[N, dim]``; a clear error instead of a broadcasting surprise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape [N, {dim}], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{who} expects points of shape [N, {dim}] (its centres/direction are "
                         f"{dim}-dimensional), got shape {tuple(x.shape)}")
    return x.to(torch.float32)


class RewardModel(nn.Module):
    """Base reward: ``forward(x) = gamma * score(x)``, float32 ``[N]``.

    Subclasses implement :meth:`score`. Not required: any ``nn.Module`` that
    returns ``[N]`` rewards works wherever a reward is expected.
    """

    def __init__(self, gamma: float = 1.0):
        super().__init__()
        self.gamma = _finite_float(gamma, "gamma")

    def score(self, x: Tensor) -> Tensor:
        """Unscaled reward ``[N]`` of a batch ``x`` ``[N, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement score(x) -> [N]")

    def forward(self, x: Tensor) -> Tensor:
        return (self.gamma * self.score(x)).to(torch.float32)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


class ClippedDistanceReward(RewardModel):
    """The paper's 2D reward: ``r(x) = -gamma * max(min_c |x - c| - radius, 0)``.

    Clipping makes the whole ball of ``radius`` around every target centre the
    top level set ``{r = 0}``, so curated-only retraining collapses onto those
    modes (THEORY.md section 4, result 3) instead of onto single points.

    Name the centres either explicitly (``centers``) or as modes of a 2D
    dataset (``dataset`` + ``targets``, e.g. ``"mog8"``, ``[0, 1]``), not both.
    """

    def __init__(
        self,
        centers: Optional[list[list[float]]] = None,
        radius: float = 0.5,
        gamma: float = 1.0,
        dataset: Optional[str] = None,
        targets: Optional[list[int]] = None,
    ):
        super().__init__(gamma)
        if centers is not None and (dataset is not None or targets is not None):
            raise ValueError("give either centers or (dataset, targets), not both")
        if centers is None:
            if dataset is None or targets is None:
                raise ValueError("ClippedDistanceReward needs centers, or both dataset and targets "
                                 "(e.g. dataset='mog8', targets=[0, 1])")
            center_tensor = self._mode_centers(dataset, targets)
        else:
            if isinstance(centers, Tensor):
                centers = centers.tolist()
            if len(centers) == 0:
                raise ValueError("centers must list at least one centre")
            rows = [_vector(c, f"centers[{i}]") for i, c in enumerate(centers)]
            if len({r.numel() for r in rows}) != 1:
                raise ValueError(f"all centres must have the same dimension, got {[r.numel() for r in rows]}")
            center_tensor = torch.stack(rows)
        self.radius = _finite_float(radius, "radius")
        if self.radius < 0:
            raise ValueError(f"radius must be >= 0, got {self.radius}")
        self.register_buffer("centers", center_tensor, persistent=False)

    @staticmethod
    def _mode_centers(dataset: str, targets: Sequence[int]) -> Tensor:
        from lightning_curate.data2d import mode_centers

        all_centers = mode_centers(dataset)
        targets = list(targets)
        if not targets:
            raise ValueError("targets must list at least one mode")
        bad = [t for t in targets if isinstance(t, bool) or not isinstance(t, int)
               or not 0 <= t < all_centers.shape[0]]
        if bad:
            raise ValueError(f"targets must be mode indices in 0..{all_centers.shape[0] - 1} "
                             f"for {dataset!r}, got {bad}")
        return all_centers[torch.tensor(targets)].clone()

    @classmethod
    def from_modes(cls, dataset: str, targets: Sequence[int], radius: float = 0.5,
                   gamma: float = 1.0) -> "ClippedDistanceReward":
        """Target the modes ``targets`` of a 2D dataset (see ``data2d.mode_centers``)."""
        return cls(radius=radius, gamma=gamma, dataset=dataset, targets=list(targets))

    def score(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.centers.shape[1], type(self).__name__)
        # Exact differences ([N, C, D], C is a handful of targets): a point on a centre scores exactly 0.
        nearest = (x[:, None, :] - self.centers[None, :, :]).norm(dim=-1).amin(dim=1)
        return (self.radius - nearest).clamp_max(0.0)

    def extra_repr(self) -> str:
        return f"num_centers={self.centers.shape[0]}, radius={self.radius}, gamma={self.gamma}"


class LinearReward(RewardModel):
    """``r(x) = gamma * <x, u>`` with ``u = direction / |direction|``: unbounded, no top level set.

    Useful as the contrast to the clipped reward: curation keeps pushing mass
    along ``u`` round after round instead of settling.
    """

    def __init__(self, direction: list[float], gamma: float = 1.0):
        super().__init__(gamma)
        vec = _vector(direction, "direction")
        norm = vec.norm()
        if norm == 0:
            raise ValueError("direction must be non-zero")
        self.register_buffer("direction", vec / norm, persistent=False)

    def score(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.direction.shape[0], type(self).__name__)
        return x @ self.direction


class RadialReward(RewardModel):
    """``r(x) = -gamma * |x - center|``: a single peak, no flat top level set."""

    def __init__(self, center: Sequence[float] = (0.0, 0.0), gamma: float = 1.0):
        super().__init__(gamma)
        self.register_buffer("center", _vector(center, "center"), persistent=False)

    def score(self, x: Tensor) -> Tensor:
        x = _check_points(x, self.center.shape[0], type(self).__name__)
        return -(x - self.center).norm(dim=-1)
