"""Labelled 2D toy datasets of docs/THEORY.md section 5, generated from a seed.

Nothing is downloaded: every set is drawn from a seeded generator, so the same
``(name, n, seed, noise)`` gives the same points on every machine. Labels are
mode ids (mixture component, moon, circle): the loop reports per-mode shares
from them, and :class:`ModeAssigner` gives generated points the same labels.
Each mode gets exactly its share of ``n`` (``n // M``, the remainder spread over
the first modes), so round-0 shares are exact rather than noisy.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_curate.data.source import DataSource, RealData
from lightning_curate.utils.validation import check_float, check_int

__all__ = ["DATASETS", "ModeAssigner", "Toy2D", "make_2d", "mode_centers", "mode_names", "num_modes"]

DATASETS = ("mog8", "grid25", "moons", "circles")

# Mixtures: ring of 8 (radius 4) and 5x5 grid (spacing 2), both centred at the origin.
_RING_RADIUS = 4.0
_GRID_SPACING = 2.0
# Moons / circles are drawn in sklearn's units, then mapped to the mixtures' scale.
_MOONS_SHIFT = (0.5, 0.25)  # centres sklearn's moons at the origin
_MOONS_SCALE = 2.0
_CIRCLES_SCALE = 3.0  # outer radius 3, inner 1.5 (factor 0.5)
_CIRCLES_FACTOR = 0.5
# Default noise: the std of the Gaussian noise, in output coordinates.
_DEFAULT_NOISE = {"mog8": 0.3, "grid25": 0.15, "moons": 0.2, "circles": 0.15}
_NUM_MODES = {"mog8": 8, "grid25": 25, "moons": 2, "circles": 2}


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown 2D dataset {name!r}; valid names are {', '.join(DATASETS)}")
    return name


def num_modes(name: str) -> int:
    """Number of labelled modes of dataset ``name``."""
    return _NUM_MODES[_check_name(name)]


def mode_names(name: str) -> list[str]:
    """Human-readable mode names, index = label (used for ``share_<name>`` columns)."""
    _check_name(name)
    if name == "moons":
        return ["moon0", "moon1"]
    if name == "circles":
        return ["inner", "outer"]
    return [f"mode{i}" for i in range(_NUM_MODES[name])]


def mode_centers(name: str) -> Tensor:
    """``[M, 2]`` float32 reference point of each mode, used as reward targets.

    Mixtures: the component means. Moons: the middle of each moon's arc (a point
    on the data, so a reward around it has data in its top level set). Circles
    have no such point (both are centred at the origin): a ValueError says so.
    """
    _check_name(name)
    if name == "mog8":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
        centers = _RING_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    elif name == "grid25":
        ticks = (torch.arange(5, dtype=torch.float64) - 2) * _GRID_SPACING
        gx, gy = torch.meshgrid(ticks, ticks, indexing="ij")
        centers = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # mode = 5 * ix + iy
    elif name == "moons":
        # sklearn's arcs: (cos t, sin t) and (1 - cos t, 0.5 - sin t), t in [0, pi]; middles at t = pi/2.
        arc_middles = torch.tensor([[0.0, 1.0], [1.0, -0.5]], dtype=torch.float64)
        centers = (arc_middles - torch.tensor(_MOONS_SHIFT, dtype=torch.float64)) * _MOONS_SCALE
    else:
        raise ValueError("'circles' has no mode centres (both circles are centred at the origin); "
                         "give the reward explicit centres instead")
    return centers.to(torch.float32)


def _mode_counts(n: int, m: int) -> list[int]:
    """Exact share per mode: ``n // m`` each, the remainder on the first modes."""
    return [n // m + (1 if i < n % m else 0) for i in range(m)]


def make_2d(name: str, n: int, seed: int, noise: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """Draw ``n`` labelled points of dataset ``name``: float32 ``[n, 2]`` and int64 ``[n]``.

    ``noise`` is the Gaussian noise std in output coordinates (mixtures: the
    component std); ``None`` takes the dataset's default. Points are shuffled,
    so any prefix is a fair sample.
    """
    _check_name(name)
    n, seed = check_int("n", n, minimum=1), check_int("seed", seed)
    noise = _DEFAULT_NOISE[name] if noise is None else check_float("noise", noise, minimum=0.0)

    counts = _mode_counts(n, _NUM_MODES[name])
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    gen = torch.Generator().manual_seed(seed)
    if name in ("mog8", "grid25"):
        means = mode_centers(name)[labels]
        points = means + noise * torch.randn(n, 2, generator=gen)
    else:
        # scikit-learn loads only for the sets drawn with it (0.3 s of every start otherwise).
        from sklearn.datasets import make_circles, make_moons

        random_state = np.random.RandomState(seed % (1 << 32))
        if name == "moons":
            xy, y = make_moons(n_samples=(counts[0], counts[1]), noise=noise / _MOONS_SCALE,
                               shuffle=False, random_state=random_state)
            xy = (xy - np.asarray(_MOONS_SHIFT)) * _MOONS_SCALE
        else:
            # sklearn takes (outer, inner) counts and labels outer 0, inner 1; ours is inner 0, outer 1.
            xy, y = make_circles(n_samples=(counts[1], counts[0]), noise=noise / _CIRCLES_SCALE,
                                 factor=_CIRCLES_FACTOR, shuffle=False, random_state=random_state)
            xy = xy * _CIRCLES_SCALE
            y = 1 - y
        points = torch.as_tensor(xy, dtype=torch.float32)
        labels = torch.as_tensor(y, dtype=torch.int64)
    order = torch.randperm(n, generator=gen)
    return points[order].to(torch.float32).contiguous(), labels[order].to(torch.int64).contiguous()


class ModeAssigner(nn.Module):
    """Label any 2D point with the mode it belongs to.

    The mixtures (``mog8``, ``grid25``) know their modes: a point gets its
    nearest centre, the Bayes rule of an equal-weight isotropic mixture, at 8
    or 25 distances a point. The moons and circles have no centres: a point
    gets the mode of its nearest labelled real point (1-NN) in a reference
    sample of ``num_reference`` points drawn from a fixed seed. Both are
    rebuilt, not checkpointed. Queries are processed in chunks of
    ``chunk_size`` rows so memory stays at ``chunk_size`` x references
    distances, whatever the number of points.
    """

    reference: Tensor
    reference_labels: Tensor

    def __init__(self, name: str, num_reference: int = 4096, seed: int = 12345,
                 noise: Optional[float] = None, chunk_size: int = 2048):
        super().__init__()
        _check_name(name)
        self.chunk_size = check_int("chunk_size", chunk_size, minimum=1)
        self.name = name
        self.num_modes = _NUM_MODES[name]
        self.names = mode_names(name)
        if name in ("mog8", "grid25"):
            reference, reference_labels = mode_centers(name), torch.arange(self.num_modes)
        else:
            reference, reference_labels = make_2d(name, num_reference, seed, noise)
        self.register_buffer("reference", reference, persistent=False)
        self.register_buffer("reference_labels", reference_labels, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """int64 ``[N]`` mode labels of points ``x`` of shape ``[N, 2]`` (on ``x``'s device)."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"ModeAssigner expects points of shape [N, 2], got {shape}")
        reference = self.reference.to(x.device)
        reference_labels = self.reference_labels.to(x.device)
        # argmin_j |x - r_j|^2 = argmin_j (|r_j|^2 - 2 x.r_j): one matmul per chunk, no [c, R, 2] tensor.
        reference_sq_norm = reference.square().sum(dim=1)
        out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
        for start in range(0, x.shape[0], self.chunk_size):
            chunk = x[start:start + self.chunk_size].to(torch.float32)
            score = torch.addmm(reference_sq_norm, chunk, reference.T, alpha=-2.0)
            out[start:start + chunk.shape[0]] = reference_labels[score.argmin(dim=1)]
        return out


class Toy2D(DataSource):
    """A labelled 2D dataset generated from a seed (``mog8``, ``grid25``, ``moons``, ``circles``).

    Generated samples are labelled by :class:`ModeAssigner` (nearest centre for the mixtures).
    """

    def __init__(self, name: str = "mog8", num_train: int = 20000, num_heldout: int = 5000,
                 seed: int = 0, noise: Optional[float] = None):
        super().__init__()
        self.name = _check_name(name)
        self.num_train = check_int("num_train", num_train, minimum=1)
        self.num_heldout = check_int("num_heldout", num_heldout, minimum=1)
        self.seed, self.noise = check_int("seed", seed), noise
        self.class_names = mode_names(name)
        self.assigner = ModeAssigner(name, seed=seed + 7919, noise=noise)

    def load(self) -> RealData:
        """Train and held-out points with their mode labels, from ``seed`` and ``seed + 1``."""
        x, y = make_2d(self.name, self.num_train, self.seed, self.noise)
        hx, hy = make_2d(self.name, self.num_heldout, self.seed + 1, self.noise)
        return RealData(train=x, heldout=hx, train_labels=y, heldout_labels=hy)

    @torch.no_grad()
    def label(self, x: Tensor) -> Tensor:
        """The mode of each point: that of its nearest reference point."""
        return self.assigner(x.reshape(x.shape[0], -1).float())
