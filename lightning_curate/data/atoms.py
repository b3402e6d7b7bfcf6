"""Real data on a finite set of atoms: the data source of the exact learner.

:class:`Atoms` draws atom indices from ``p_data`` with exactly proportional
counts (:func:`proportional_counts`), labelled by atom, so the ``share_<name>``
columns of a run are the atom shares.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_curate import theory
from lightning_curate.data.source import DataSource, RealData
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator
from lightning_curate.utils.validation import atom_indices, check_int

__all__ = ["Atoms", "proportional_counts"]


def proportional_counts(probs: Sequence[float] | Tensor, n: int) -> Tensor:
    """Counts ``[len(probs)]`` summing to ``n``, as close to ``n * probs`` as integers allow.

    Largest-remainder rounding (ties to the lower index): exact whenever
    ``n * probs`` are whole numbers.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    exact = p * n
    counts = torch.floor(exact + 1e-9).long()
    left = n - int(counts.sum())
    if left > 0:
        remainder = exact - counts.double()
        order = sorted(range(len(p)), key=lambda i: (-float(remainder[i]), i))
        for i in order[:left]:
            counts[i] += 1
    elif left < 0:  # floating error only
        for i in sorted(range(len(p)), key=lambda i: -int(counts[i]))[: -left]:
            counts[i] -= 1
    return counts


class Atoms(DataSource):
    """Real data on a finite set of atoms: ``p_data = probs``.

    The training set holds exactly proportional counts of every atom (see
    :func:`proportional_counts`), in a seeded random order, so the model of
    round 0 is ``p_data`` itself whenever ``num_train * probs`` are whole
    numbers. ``label(x)`` is the atom index; ``class_names`` (``names``, default
    ``atom0, atom1, ...``) name the ``share_<name>`` columns.

    Args:
        probs: ``p_data``, non-negative, summing to 1.
        num_train: real training samples.
        num_heldout: held-out samples (the same proportions, another order).
        seed: seeds the order of the samples.
        names: one name per atom.
    """

    def __init__(self, probs: list[float], num_train: int = 20000, num_heldout: int = 2000, seed: int = 0,
                 names: Optional[list[str]] = None) -> None:
        super().__init__()
        try:
            p = torch.as_tensor([float(v) for v in probs], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"probs must be a list of numbers, got {probs!r}") from err
        if p.numel() == 0:
            raise ValueError("probs must not be empty")
        if not torch.isfinite(p).all() or (p < 0).any():
            raise ValueError(f"probs must be finite and >= 0, got {probs!r}")
        if abs(float(p.sum()) - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {float(p.sum())}")
        self.num_train = check_int("num_train", num_train, minimum=1)
        self.num_heldout = check_int("num_heldout", num_heldout, minimum=1)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != p.numel():
                raise ValueError(f"names must give one name per atom ({p.numel()}), got {len(names)}")
            if len(set(names)) != len(names):
                raise ValueError(f"names must be distinct, got {names}")
        self.p_data = p / p.sum()
        self.seed = seed
        self.class_names = names if names is not None else [f"atom{i}" for i in range(p.numel())]

    @property
    def num_atoms(self) -> int:
        """Number of atoms ``n`` (samples are indices ``0..n-1``)."""
        return self.p_data.numel()

    def _draw(self, n: int, tag: str) -> tuple[Tensor, Tensor]:
        counts = proportional_counts(self.p_data, n)
        idx = torch.repeat_interleave(torch.arange(self.num_atoms), counts)
        idx = idx[torch.randperm(n, generator=make_generator(derive_seed(self.seed, "atoms", tag)))]
        return idx.float().unsqueeze(1), idx

    def load(self) -> RealData:
        """Train and held-out atom indices ``[n, 1]`` in the exact proportions of ``p_data``, shuffled."""
        x, y = self._draw(self.num_train, "train")
        hx, hy = self._draw(self.num_heldout, "heldout")
        return RealData(train=x, heldout=hx, train_labels=y, heldout_labels=hy)

    def label(self, x: Tensor) -> Tensor:
        """The atom index of each sample: a sample's class is its atom."""
        return atom_indices(x, self.num_atoms, type(self).__name__)

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """KL and total variation from the empirical law of ``samples`` to ``p_data``."""
        idx = self.label(samples).cpu()
        if idx.numel() == 0:
            return {}
        p_hat = torch.bincount(idx, minlength=self.num_atoms).double() / idx.numel()
        return {"kl_to_data": theory.kl_divergence(p_hat, self.p_data),
                "tv_to_data": 0.5 * float((p_hat - self.p_data).abs().sum())}
