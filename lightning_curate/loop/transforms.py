"""Transforms between selection and storage: a correction or a verifier acting on the kept samples.

``CurationModule(transform=...)`` applies an ``nn.Module`` ``x -> x'`` (same shape) to each
chunk's kept samples before they are stored, as in the self-correcting loops of Gillman et al.
(ICML 2024), where an expert nudges each synthetic sample toward the data before retraining. The
store then holds ``x'`` and its rewards and labels, re-scored; the round's ``curated_*`` columns
still describe the selection, and ``stored_reward_mean`` the transformed samples.

:class:`ManifoldProjection` is the example on the 2D sets: each sample moves a fraction
``strength`` of the way to its nearest point of the data (a reference sample of real points, or
the mixtures' mode centres).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from lightning_curate.data.toy2d import make_2d, mode_centers
from lightning_curate.utils.validation import check_choice, check_float, check_int

__all__ = ["ManifoldProjection", "TARGETS", "transform_part"]

TARGETS = ("data", "centers")


class ManifoldProjection(nn.Module):
    """Move each 2D sample a fraction ``strength`` toward its nearest point of the data manifold.

    ``x' = x + strength * (nearest(x) - x)``: 0 leaves the samples alone, 1 puts each on its nearest
    reference point. The reference is rebuilt from its arguments (never checkpointed), like
    :class:`~lightning_curate.data.toy2d.ModeAssigner`'s.

    Args:
        dataset: a :class:`~lightning_curate.data.Toy2D` set name (``mog8``, ``grid25``, ``moons``, ...).
        strength: the fraction of the way moved, in ``[0, 1]``.
        target: ``data``: the nearest of ``num_reference`` real points drawn from ``seed``;
            ``centers``: the nearest mode centre (the mixtures and the moons).
        num_reference: real points of the ``data`` reference.
        seed: their seed (another than the training set's, so the reference is not the training data).
        chunk_size: samples projected at a time (memory: ``chunk_size x num_reference`` distances).

    Example:
        >>> proj = ManifoldProjection("mog8", strength=0.5, target="centers")
        >>> proj(torch.tensor([[0.0, 0.0]])).shape
        torch.Size([1, 2])
    """

    reference: Tensor

    def __init__(self, dataset: str = "mog8", strength: float = 0.5, target: str = "data",
                 num_reference: int = 4096, seed: int = 12345, chunk_size: int = 2048) -> None:
        super().__init__()
        self.dataset = dataset
        self.strength = check_float("strength", strength, minimum=0.0, maximum=1.0)
        self.target = check_choice("target", target, TARGETS)
        self.num_reference = check_int("num_reference", num_reference, minimum=1)
        self.seed = seed
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        reference = mode_centers(dataset) if target == "centers" else make_2d(dataset, num_reference, seed)[0]
        self.register_buffer("reference", reference.to(torch.float32), persistent=False)

    def nearest(self, x: Tensor) -> Tensor:
        """The nearest reference point of each sample, ``[N, 2]``."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ManifoldProjection expects 2D samples of shape [N, 2], got {shape}")
        reference = self.reference.to(x.device)
        sq_norm = reference.square().sum(dim=1)
        out = torch.empty(x.shape[0], 2, dtype=reference.dtype, device=x.device)
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = x[start:start + self.chunk_size].to(reference.dtype)
            # argmin_j |x - r_j|^2 = argmin_j (|r_j|^2 - 2 x.r_j)
            out[start:start + chunk.shape[0]] = reference[torch.addmm(sq_norm, chunk, reference.T,
                                                                      alpha=-2.0).argmin(dim=1)]
        return out

    def forward(self, x: Tensor) -> Tensor:
        """``x + strength * (nearest(x) - x)``, in ``x``'s dtype."""
        return (x + self.strength * (self.nearest(x).to(x.dtype) - x)).to(x.dtype)

    def extra_repr(self) -> str:
        """Its settings, for ``print(module)``."""
        return f"dataset={self.dataset!r}, strength={self.strength}, target={self.target!r}"


def transform_part(module: Any, part: dict[str, Tensor], label_fn: Optional[Callable[[Tensor], Optional[Tensor]]],
                   round_idx: int) -> dict[str, Tensor]:
    """A chunk's kept samples after ``module.transform``, re-scored (and relabelled with ``label_fn``).

    The transformed samples are checked: same shape as the kept ones, finite. Their rewards feed
    the round's ``stored_reward_mean``.
    """
    x = part["x"]
    if x.shape[0] == 0:
        return part
    with torch.inference_mode():
        y = module.transform(x.to(module.device))
    name = type(module.transform).__name__
    if not isinstance(y, Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"round {round_idx}: the transform {name} returned shape {shape} for samples of shape "
                         f"{tuple(x.shape)}; it must return samples of the same shape")
    bad = int((~torch.isfinite(y)).sum())
    if bad:
        raise ValueError(f"round {round_idx}: the transform {name} returned {bad} non-finite values")
    out = dict(part)
    out["x"] = y.to(x.dtype).cpu()
    rewards = module.score(y, round_idx)
    module.stored_reward.update(rewards)
    out["rewards"] = rewards.cpu()
    if "labels" in part and label_fn is not None:
        labels = label_fn(y)
        if labels is not None:
            out["labels"] = labels.cpu()
    return out
