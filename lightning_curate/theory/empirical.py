"""Curation weights on an empirical law: ``H`` for a round's candidates, exactly, for any ``K``.

docs/THEORY.md section 2: the kept sample of a K-choice follows ``q = p * H`` with a
weight ``H(x)`` that depends on ``x`` only through ``w(x) = exp(beta r(x))``. Here ``p``
is a (weighted) empirical law, e.g. all ``N x K`` candidates of a round, and ``H`` is
computed by the one-dimensional exponential-race form (softmax choice, any number of
winners), the order-statistics form (``argmax``), or is ``1`` (``uniform``).
:mod:`lightning_curate.theory.ideal_learner` turns it into next-round predictions.

Cost: the race integral is evaluated on a log-spaced quadrature grid of ``T``
nodes (``T ~ 5 * (32 + beta * (r_max - r_min))``), once for the law
(``O(T * support)``) and once per distinct reward value (``O(T * values)``),
in bounded chunks. Rewards that take more than ``max_support`` distinct values
(continuous rewards) are compressed to ``max_support`` groups of equal mass for
the law, and ``H`` is evaluated on ``max_support`` nodes and interpolated.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lightning_curate.utils.validation import MODES, check_beta, check_choice, check_int

__all__ = ["DEFAULT_MAX_SUPPORT", "check_curation", "empirical_curation_weights", "float64_vector"]

DEFAULT_MAX_SUPPORT = 4096
# Quadrature of the race integral in u = log s (the integrand is analytic in a strip
# |Im u| < pi/2, so the trapezoid rule converges geometrically, with a relative error
# about exp(-pi^2 / du): 5e-22 at du = 0.2, below float64 rounding; measured against
# du = 0.05, H agrees to 4e-15 for continuous, wide, m > 1 and atomic laws, 4-5x faster).
# w is normalised to max 1; [S_LO, S_HI_FACTOR / w_min] holds everything but a
# relative 1e-12 at the low end (added back analytically) and exp(-S_HI_FACTOR) at
# the high end.
_DU = 0.2
_S_LO = 1e-12
_S_HI_FACTOR = 50.0
_LOG_W_FLOOR = -700.0  # exp(-700) ~ 1e-304: weights below it count as this small
_CHUNK = 1 << 20  # elements per [rows, T] block


def float64_vector(x, name: str) -> Tensor:
    """``x`` flattened to a float64 CPU tensor, checked non-empty and finite (``name`` in the error)."""
    if isinstance(x, Tensor):
        t = x.detach().to("cpu", torch.float64).reshape(-1)
    else:  # a list of Python floats: straight to float64, never through float32
        t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def check_curation(K: int, num_winners: int, mode: str, beta: float) -> float:
    """Check the curation op's settings as ``kchoice`` does; returns ``beta`` as a float."""
    check_int("num_candidates", K, minimum=1)
    check_int("num_winners", num_winners, minimum=1, maximum=K)
    check_choice("mode", mode, MODES)
    return check_beta(beta)


def empirical_curation_weights(rewards, num_candidates: int, beta: float = 1.0, *, weights=None,
                               num_winners: int = 1, mode: str = "softmax",
                               max_support: int = DEFAULT_MAX_SUPPORT) -> Tensor:
    """``H(x)`` for every point of a (weighted) empirical law of rewards: ``q = weights * H``.

    Args:
        rewards: rewards of the support points, any shape (flattened), e.g. all
            ``N x K`` candidates of a round (then the law is their empirical law).
        num_candidates: ``K``, candidates per slot.
        beta: inverse temperature (``w = exp(beta r)``).
        weights: masses of the points (default: uniform); normalised to sum 1.
        num_winners: ``m``, samples kept per slot; ``q`` is the law of a kept sample
            picked at random among the ``m``.
        mode: ``softmax`` (Bradley-Terry / Plackett-Luce), ``argmax`` (best-of-K,
            top-m), ``uniform`` (``H = 1``).
        max_support: above this many distinct reward values the law is compressed
            (see the module docstring).

    Returns float64 ``H`` of the flattened shape, with ``sum(weights * H) = 1``.
    For ``softmax``, ``m = 1``:
    ``H(x) = K w(x) int_0^inf exp(-w(x) s) (sum_j pi_j exp(-w_j s))^(K-1) ds``
    (docs/THEORY.md section 2); for ``m`` winners the integrand's last factor becomes
    ``P(Binomial(K-1, 1 - phi(s)) < m) / m`` (the first ``m`` finishers of the race win).
    """
    r = float64_vector(rewards, "rewards")
    K, m = num_candidates, num_winners
    beta = check_curation(K, m, mode, beta)
    check_int("max_support", max_support, minimum=2)
    if weights is None:
        pi = torch.full_like(r, 1.0 / r.numel())
    else:
        pi = float64_vector(weights, "weights")
        if pi.shape != r.shape:
            raise ValueError(f"weights must have one mass per reward ({r.numel()}), got {pi.numel()}")
        if (pi < 0).any() or float(pi.sum()) <= 0:
            raise ValueError("weights must be >= 0 with a positive sum")
        pi = pi / pi.sum()
    if mode == "uniform" or m == K or (mode == "softmax" and beta == 0.0):
        return torch.ones_like(r)
    # H depends on x through r(x) only: work on the distinct values.
    values, inverse = torch.unique(r, sorted=True, return_inverse=True)
    mass = torch.zeros_like(values).index_add_(0, inverse, pi)
    if mode == "argmax":
        h_values = _argmax_weights(mass, K, m)
    else:
        h_values = _race_weights(values, mass, K, m, beta, max_support)
    H = h_values[inverse]
    return H / (pi * H).sum()


def _argmax_weights(mass: Tensor, K: int, m: int) -> Tensor:
    """Top-``m`` of ``K`` by reward (ties in any order), on levels sorted by increasing reward.

    ``q(level) = E[#kept at level] / m`` with (above, at) ~ Multinomial(K; 1 - F, mass, F_prev).
    """
    F = mass.cumsum(0).clamp(max=1.0)
    above = (1.0 - F).clamp(min=0.0)
    below = (F - mass).clamp(min=0.0)
    kept = torch.zeros_like(mass)
    lg = [math.lgamma(i + 1) for i in range(K + 1)]
    for a in range(m):
        for c in range(1, K - a + 1):
            b = K - a - c
            log_p = (lg[K] - lg[a] - lg[c] - lg[b] + torch.xlogy(torch.tensor(float(a)), above)
                     + torch.xlogy(torch.tensor(float(c)), mass) + torch.xlogy(torch.tensor(float(b)), below))
            kept += torch.exp(log_p) * min(c, m - a)
    q = kept / m
    return torch.where(mass > 0, q / mass.clamp(min=1e-300), torch.zeros_like(mass))


def _race_grid(log_w_min: float) -> tuple[Tensor, Tensor, Tensor]:
    """Nodes ``u`` (= log s), ``s`` and trapezoid weights in ``u`` of the race integral."""
    u_lo = math.log(_S_LO)
    u_hi = math.log(_S_HI_FACTOR) - log_w_min
    n = max(2, int(math.ceil((u_hi - u_lo) / _DU)) + 1)
    u = torch.linspace(u_lo, u_hi, n, dtype=torch.float64)
    du = (u_hi - u_lo) / (n - 1)
    trap = torch.full((n,), du, dtype=torch.float64)
    trap[0] = trap[-1] = du / 2
    return u, torch.exp(u), trap


def _race_weights(values: Tensor, mass: Tensor, K: int, m: int, beta: float, max_support: int) -> Tensor:
    """``H`` at each distinct reward value (sorted) for the softmax choice, by the race integral."""
    log_w = (beta * (values - values.max())).clamp(min=_LOG_W_FLOOR)
    # The law's support, compressed to max_support groups of equal mass when needed.
    if values.numel() > max_support:
        cum = mass.cumsum(0) - mass / 2
        group = (cum * max_support).long().clamp(0, max_support - 1)
        g_mass = torch.zeros(max_support, dtype=torch.float64).index_add_(0, group, mass)
        g_w = torch.zeros(max_support, dtype=torch.float64).index_add_(0, group, mass * log_w.exp())
        keep = g_mass > 0
        sup_mass = g_mass[keep]
        sup_log_w = torch.log(g_w[keep] / sup_mass).clamp(min=_LOG_W_FLOOR)
        # Evaluate H on a grid of log w and interpolate (H is smooth in log w).
        eval_log_w = torch.linspace(float(log_w.min()), float(log_w.max()), max_support, dtype=torch.float64)
    else:
        sup_mass, sup_log_w, eval_log_w = mass, log_w, log_w
    u, s, trap = _race_grid(float(log_w.min()))
    T = s.numel()
    log_mass = torch.log(sup_mass.clamp(min=1e-300))
    sup_w = sup_log_w.exp()
    # log phi(s) = log sum_j pi_j exp(-w_j s); 1 - phi(s) = sum_j pi_j (1 - exp(-w_j s)).
    log_phi = torch.empty(T, dtype=torch.float64)
    log_1mphi = torch.empty(T, dtype=torch.float64)
    rows = max(1, _CHUNK // max(1, sup_w.numel()))
    for start in range(0, T, rows):
        ss = s[start:start + rows, None]
        ws = sup_w[None, :] * ss
        log_phi[start:start + rows] = torch.logsumexp(log_mass[None, :] - ws, dim=1)
        if m > 1:
            one_minus = (sup_mass[None, :] * -torch.expm1(-ws)).sum(dim=1)
            log_1mphi[start:start + rows] = torch.log(one_minus.clamp(min=1e-300))
    # B(s) = log sum_{j < m} C(K-1, j) (1 - phi)^j phi^(K-1-j): the chance that fewer
    # than m of the K - 1 other candidates finished before time s.
    terms = [math.log(math.comb(K - 1, j)) + j * log_1mphi + (K - 1 - j) * log_phi if j else (K - 1) * log_phi
             for j in range(m)]
    log_B = torch.logsumexp(torch.stack(terms), dim=0)
    base = math.log(K / m) + u + log_B + torch.log(trap)  # [T]
    H = torch.empty_like(eval_log_w)
    rows = max(1, _CHUNK // T)
    for start in range(0, eval_log_w.numel(), rows):
        lw = eval_log_w[start:start + rows, None]
        integrand = torch.exp(base[None, :] + lw - lw.exp() * s[None, :])
        # The piece [0, S_LO], where exp(-w s) B(s) = 1 to a relative 1e-12.
        H[start:start + rows] = integrand.sum(dim=1) + (K / m) * lw[:, 0].exp() * _S_LO
    if values.numel() > max_support:
        H = _interp(log_w, eval_log_w, H)
    return H


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x`` (``xp`` increasing)."""
    if xp.numel() == 1 or float(xp[-1] - xp[0]) == 0.0:
        return fp[:1].expand_as(x).clone()
    idx = torch.searchsorted(xp, x).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return fp[idx - 1] + t * (fp[idx] - fp[idx - 1])
