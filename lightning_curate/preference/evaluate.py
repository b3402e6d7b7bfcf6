"""How well a fitted Bradley-Terry reward recovers the curators' reward.

* :func:`spearman`: rank correlation with the true reward (average ranks for ties);
* :func:`recovered_scale`: the least-squares line ``fitted ~ slope * true + intercept``.
  For Bradley-Terry choices with inverse temperature ``beta`` the fit estimates
  ``beta r + c``: the slope is the recovered ``beta``, the intercept is arbitrary;
* :func:`population_choice_law` and :func:`best_bt_scores`: on a finite support,
  the exact choice law of a population of curators and the per-atom scores of
  the best Bradley-Terry approximation of it (the limit of the MLE with
  :class:`~lightning_curate.preference.AtomScores` as the number of slots grows).
  A population's choices are not Bradley-Terry in general, and these scores are
  not the population-weighted average of ``beta_u r_u``.

Example:
    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 20.0, 40.0])), 4)
    0.9487
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from torch import Tensor

from lightning_curate.theory.population import AtomCurator, _law, _weights_of

__all__ = ["best_bt_scores", "population_choice_law", "rankdata", "recovered_scale", "spearman"]


def _vec(x, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).flatten()
    if t.numel() < 2 or not torch.isfinite(t).all():
        raise ValueError(f"{name} must hold at least 2 finite numbers, got {t.numel()}")
    return t


def rankdata(x) -> Tensor:
    """Ranks ``1..n`` of ``x`` (float64), ties sharing their average rank."""
    x = _vec(x, "x")
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    _, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks = torch.empty_like(x)
    ranks[order] = avg[inverse]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation of two equally long vectors (``nan`` if one is constant)."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.numel() != ry.numel():
        raise ValueError(f"x and y must have the same length, got {rx.numel()} and {ry.numel()}")
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else float("nan")


def recovered_scale(fitted, true) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``fitted ~ slope * true + intercept``.

    The slope estimates ``beta``: Bradley-Terry identifies ``beta * r`` up to a constant.
    """
    f, t = _vec(fitted, "fitted"), _vec(true, "true")
    if f.numel() != t.numel():
        raise ValueError(f"fitted and true must have the same length, got {f.numel()} and {t.numel()}")
    tc = t - t.mean()
    var = float((tc * tc).sum())
    if var == 0:
        raise ValueError("true is constant: the scale is not identifiable")
    slope = float((tc * (f - f.mean())).sum()) / var
    return slope, float(f.mean()) - slope * float(t.mean())


def _curator_choice(c: AtomCurator, tuples: Tensor) -> Tensor:
    """``P(position k kept | tuple)`` for one curator: ``[T, K]``."""
    r = c.r[tuples]
    if c.mode == "uniform":
        return torch.full_like(r, 1.0 / r.shape[1])
    if c.mode == "argmax":  # the lowest index among the maxima, as kchoice does
        first = (r == r.max(dim=1, keepdim=True).values).double().cumsum(1) == 1
        return (first & (r == r.max(dim=1, keepdim=True).values)).double()
    return torch.softmax(c.beta * r, dim=1)


def population_choice_law(p, curators: Sequence[AtomCurator], num_candidates: int) -> tuple[Tensor, Tensor, Tensor]:
    """Every ordered tuple of ``K`` atoms, its probability under ``p^K`` and the population's choice law.

    Returns ``(tuples [T, K], prob [T], choice [T, K])`` with
    ``choice[t, k] = sum_u pi_u P_u(k | tuple t)``; ``T = n^K`` (small supports only).
    """
    p = _law(p)
    pi = _weights_of(curators, p.numel())
    n, K = p.numel(), int(num_candidates)
    if K < 1 or n**K > 2_000_000:
        raise ValueError(f"num_candidates must be >= 1 with n^K <= 2e6 tuples, got n={n}, K={num_candidates}")
    tuples = torch.tensor(list(itertools.product(range(n), repeat=K)), dtype=torch.long).reshape(-1, K)
    prob = p[tuples].prod(dim=1)
    choice = sum(float(w) * _curator_choice(c, tuples) for w, c in zip(pi, curators))
    assert isinstance(choice, Tensor)  # _weights_of rejects an empty list, so the sum has terms
    return tuples, prob, choice


def best_bt_scores(p, curators: Sequence[AtomCurator], num_candidates: int, iters: int = 100) -> dict[str, Tensor]:
    """Per-atom scores ``s`` maximising the expected BT log-likelihood of the population's choices.

    ``s`` is the KL projection of the population's choice law onto Bradley-Terry laws,
    the limit of the per-atom MLE. Gauge: mean-zero scores over atoms of positive mass
    (atoms of mass 0 are never shown: their score is ``nan``). Also returns ``covariance``
    (``[n, n]``, per slot): the MLE from ``N`` slots has covariance ``covariance / N``,
    the sandwich ``A^+ B A^+`` (``A``: expected Hessian, ``B``: variance of the score),
    valid although a population's choices are not Bradley-Terry.
    """
    p = _law(p)
    tuples, prob, choice = population_choice_law(p, curators, num_candidates)
    keep = prob > 0
    tuples, prob, choice = tuples[keep], prob[keep], choice[keep]
    shown = p > 0
    s = torch.zeros(p.numel(), dtype=torch.float64, requires_grad=True)

    def objective() -> Tensor:
        logp = torch.log_softmax(s[tuples], dim=1)
        return -(prob[:, None] * choice * logp).sum()

    opt = torch.optim.LBFGS([s], lr=1.0, max_iter=iters, tolerance_grad=1e-13, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    s = s.detach()
    s = torch.where(shown, s - s[shown].mean(), torch.full_like(s, float("nan")))
    # Per slot: A = E[sum_k P(k) (e_k - P)(e_k - P)^T] (the Hessian does not depend on the choice),
    # B = E[sum_k choice(k) (e_k - P)(e_k - P)^T], in atom coordinates.
    soft = torch.softmax(torch.nan_to_num(s)[tuples], dim=1)
    onehot = torch.nn.functional.one_hot(tuples, p.numel()).double()  # [T, K, n]
    grad = onehot - (soft[:, :, None] * onehot).sum(1, keepdim=True)  # e_k - P, [T, K, n]
    A = torch.einsum("t,tk,tki,tkj->ij", prob, soft, grad, grad)
    B = torch.einsum("t,tk,tki,tkj->ij", prob, choice, grad, grad)
    # A is singular along the gauge (constant shifts) and along never-shown atoms; their eigenvalues are
    # round-off (~1e-15 of the largest, BLAS-dependent), so they are cut at an explicit relative tolerance
    # rather than pinv's default one (eps * n), which a round-off eigenvalue can pass.
    A_inv = torch.linalg.pinv(A, hermitian=True, rtol=1e-10)
    return {"scores": s, "covariance": A_inv @ B @ A_inv}
