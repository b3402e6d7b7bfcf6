"""Shared by the kchoice tests: backends, sample sizes, the chi-square p-value and float64 references."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from lightning_curate import theory
from lightning_curate.ops.kchoice import KChoice

__all__ = ["BACKENDS", "N_STAT", "P_MIN", "assert_same", "chi2_pvalue", "kchoice_torch_module", "kchoice_triton",
           "needs_triton", "pair_counts", "pl_pair_law", "reference_log_probs"]

# The torch path's module (tests patch its chunk sizes).
kchoice_torch_module = importlib.import_module("lightning_curate.ops.kchoice_torch")

try:
    from lightning_curate.kernels.kchoice_triton import kchoice_triton
except ImportError as err:  # triton missing, or the package is not installed
    kchoice_triton = None
    _TRITON_SKIP = f"lightning_curate.kernels.kchoice_triton does not import: {err}"
else:
    _TRITON_SKIP = ""

needs_triton = pytest.mark.skipif(kchoice_triton is None, reason=_TRITON_SKIP)
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
# Sample sizes for statistical tests: the interpreter is slow, torch is not.
N_STAT = {"torch": 100_000, "triton": 4_000}
P_MIN = 1e-6  # a correct sampler passes; the wrong laws below score far under it


def chi2_pvalue(counts: torch.Tensor, probs) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``.

    Cells of probability 0 must be empty (else the p-value is 0) and carry no
    degree of freedom.
    """
    counts = counts.to(torch.float64).flatten()
    probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
    assert counts.shape == probs.shape
    if (counts[probs == 0] > 0).any():
        return 0.0
    keep = probs > 0
    n = counts.sum()
    expected = n * probs[keep] / probs[keep].sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def pair_counts(index: torch.Tensor, k: int) -> torch.Tensor:
    """Counts of ordered pairs ``(i, j)`` in an ``[N, 2]`` index, as a ``[k * k]`` vector."""
    return torch.bincount(index[:, 0] * k + index[:, 1], minlength=k * k)


def pl_pair_law(scores, k: int) -> torch.Tensor:
    law = torch.zeros(k * k, dtype=torch.float64)
    for (i, j), prob in theory.plackett_luce_law(scores, 2).items():
        law[i * k + j] = prob
    return law


def reference_log_probs(rewards: torch.Tensor, beta: float, index: torch.Tensor):
    """float64 ``logsumexp(beta * r)`` and the cumulative Plackett-Luce log-probs of ``index``."""
    r = rewards.to(torch.float64)
    s = torch.where(r == -math.inf, torch.full_like(r, -math.inf), r * beta)
    lse = torch.logsumexp(s, dim=1)
    idx = index if index.dim() == 2 else index[:, None]
    remaining, steps = s.clone(), []
    for j in range(idx.shape[1]):
        col = idx[:, j : j + 1]
        steps.append(remaining.gather(1, col)[:, 0] - torch.logsumexp(remaining, dim=1))
        remaining.scatter_(1, col, -math.inf)
    lp = torch.stack(steps, dim=1).cumsum(dim=1)
    return lse, lp if index.dim() == 2 else lp[:, 0]


def assert_same(a: KChoice, b: KChoice) -> None:
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.log_prob, b.log_prob)
    assert torch.equal(a.logsumexp, b.logsumexp)
    assert (a.chosen is None) == (b.chosen is None)
    if a.chosen is not None:
        assert torch.equal(a.chosen, b.chosen)
