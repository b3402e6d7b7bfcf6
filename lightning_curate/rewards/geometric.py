"""Geometric rewards of 2D points: the paper's clipped distance to target centres, linear, radial."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_curate.rewards.base import RewardModel
from lightning_curate.utils.validation import check_float, check_vector, is_int

__all__ = ["ClippedDistanceReward", "LinearReward", "RadialReward"]


def _check_points(x: Tensor, dim: int, who: str) -> Tensor:
    """``x`` as float32 ``[N, dim]``; a clear error instead of a broadcasting surprise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape [N, {dim}], got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"{who} expects points of shape [N, {dim}] (its centres/direction are "
                         f"{dim}-dimensional), got shape {tuple(x.shape)}")
    return x.to(torch.float32)


class ClippedDistanceReward(RewardModel):
    """The paper's 2D reward: ``r(x) = -gamma * max(min_c |x - c| - radius, 0)``.

    Clipping makes the whole ball of ``radius`` around every target centre the
    top level set ``{r = 0}``, so curated-only retraining collapses onto those
    modes (docs/THEORY.md section 4, result 3) instead of onto single points.

    Name the centres either explicitly (``centers``) or as modes of a 2D
    dataset (``dataset`` + ``targets``, e.g. ``"mog8"``, ``[0, 1]``), not both.
    """

    centers: Tensor

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
            rows = [check_vector(f"centers[{i}]", c) for i, c in enumerate(centers)]
            if len({r.numel() for r in rows}) != 1:
                raise ValueError(f"all centres must have the same dimension, got {[r.numel() for r in rows]}")
            center_tensor = torch.stack(rows)
        self.radius = check_float("radius", radius, minimum=0.0)
        self.register_buffer("centers", center_tensor, persistent=False)

    @staticmethod
    def _mode_centers(dataset: str, targets: Sequence[int]) -> Tensor:
        from lightning_curate.data.toy2d import mode_centers

        all_centers = mode_centers(dataset)
        targets = list(targets)
        if not targets:
            raise ValueError("targets must list at least one mode")
        bad = [t for t in targets if not (is_int(t) and 0 <= t < all_centers.shape[0])]
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
        """``min(radius - d, 0)``, ``d`` the distance to the nearest centre: 0 within ``radius`` of one."""
        x = _check_points(x, self.centers.shape[1], type(self).__name__)
        # Exact differences ([N, C, D], C is a handful of targets): a point on a centre scores exactly 0.
        nearest = (x[:, None, :] - self.centers[None, :, :]).norm(dim=-1).amin(dim=1)
        return (self.radius - nearest).clamp_max(0.0)

    def extra_repr(self) -> str:
        """The number of centres, the radius and ``gamma``, for ``print(reward)``."""
        return f"num_centers={self.centers.shape[0]}, radius={self.radius}, gamma={self.gamma}"


class LinearReward(RewardModel):
    """``r(x) = gamma * <x, u>`` with ``u = direction / |direction|``: unbounded, no top level set.

    Useful as the contrast to the clipped reward: curation keeps pushing mass
    along ``u`` round after round instead of settling.
    """

    direction: Tensor

    def __init__(self, direction: list[float], gamma: float = 1.0):
        super().__init__(gamma)
        vec = check_vector("direction", direction)
        norm = vec.norm()
        if norm == 0:
            raise ValueError("direction must be non-zero")
        self.register_buffer("direction", vec / norm, persistent=False)

    def score(self, x: Tensor) -> Tensor:
        """``<x, direction>`` for points ``x`` ``[N, D]``."""
        x = _check_points(x, self.direction.shape[0], type(self).__name__)
        return x @ self.direction


class RadialReward(RewardModel):
    """``r(x) = -gamma * |x - center|``: a single peak, no flat top level set."""

    center: Tensor

    def __init__(self, center: Sequence[float] = (0.0, 0.0), gamma: float = 1.0):
        super().__init__(gamma)
        self.register_buffer("center", check_vector("center", center), persistent=False)

    def score(self, x: Tensor) -> Tensor:
        """Minus the distance to ``center``."""
        x = _check_points(x, self.center.shape[0], type(self).__name__)
        return -(x - self.center).norm(dim=-1)
