"""Exact laws of curated retraining for discrete distributions (docs/THEORY.md sections 2-4).

These are the oracles the tests check ``kchoice`` and the loop against, and the
reference a user compares a run with: what an ideal learner would do.

Everything here is float64 NumPy-free torch, on the CPU.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from lightning_curate.utils.validation import check_beta, check_float, check_int, is_int

__all__ = [
    "curated_distribution",
    "curation_weights",
    "tilted_distribution",
    "plackett_luce_law",
    "retraining_trajectory",
    "rlhf_coefficient",
    "improvement_lower_bound",
    "expected_exp_reward",
    "kl_divergence",
    "rlhf_optimum",
    "curated_share_map",
    "two_level_band",
]

# Largest number of multisets of K - 1 atoms enumerated exactly; beyond it the
# one-dimensional integral form is integrated numerically.
_MAX_EXACT_TERMS = 200_000


def _as_f64(x, name: str) -> Tensor:
    t = torch.as_tensor(x, dtype=torch.float64).flatten()
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    return t


def _check_law(p: Tensor, r: Tensor, beta: float) -> float:
    """Check a law ``p`` with rewards ``r`` (same length, ``p`` a probability vector); returns ``beta``."""
    if p.shape != r.shape:
        raise ValueError(f"p and r must have the same length, got {p.numel()} and {r.numel()}")
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("p must be finite and non-negative")
    if abs(float(p.sum()) - 1.0) > 1e-9:
        raise ValueError(f"p must sum to 1, got {float(p.sum())}")
    if not torch.isfinite(r).all():
        raise ValueError("r must be finite")
    return check_beta(beta)


def curation_weights(p, r, K, beta: float = 1.0) -> Tensor:
    """``H(x)`` of docs/THEORY.md section 2: the factor by which curation reweights each atom.

    ``q = p * H``. ``K`` may be ``math.inf`` (then ``H = w / E_p[w]``).
    """
    p, r = _as_f64(p, "p"), _as_f64(r, "r")
    beta = _check_law(p, r, beta)
    # Shift rewards by their max: H is invariant to a common factor in w.
    w = torch.exp(beta * (r - r.max()))
    if K == math.inf:
        return w / (p * w).sum()
    if not (is_int(K) and K >= 1):  # math.inf (the tilt limit) returned above
        raise ValueError(f"K must be an int >= 1 or math.inf, got {K!r}")
    if K == 1:
        return torch.ones_like(p)
    support = torch.nonzero(p > 0).flatten()
    n_terms = math.comb(K - 1 + support.numel() - 1, K - 1)
    if n_terms <= _MAX_EXACT_TERMS:
        return _weights_exact(p, w, K, support)
    return _weights_integral(p, w, K)


def _weights_exact(p: Tensor, w: Tensor, K: int, support: Tensor) -> Tensor:
    """Exact expectation over the multisets of the K - 1 other candidates."""
    ps, ws = p[support].tolist(), w[support].tolist()
    log_fact = [math.lgamma(i + 1) for i in range(K)]
    H = torch.zeros_like(p)
    for combo in itertools.combinations_with_replacement(range(len(ps)), K - 1):
        counts: dict[int, int] = {}
        for i in combo:
            counts[i] = counts.get(i, 0) + 1
        log_prob = log_fact[K - 1] + sum(c * math.log(ps[i]) - log_fact[c] for i, c in counts.items())
        others = sum(ws[i] for i in combo)
        H += math.exp(log_prob) * K * w / (w + others)
    return H


def _weights_integral(p: Tensor, w: Tensor, K: int, panel_width: float = 0.5, order: int = 16) -> Tensor:
    """``H(x) = K w(x) int_0^inf exp(-w(x) s) G(s)^(K-1) ds`` with ``G(s) = sum_i p_i exp(-w_i s)``.

    This is the exponential-race form of docs/THEORY.md (``x`` wins when its
    ``Exp(w(x))`` clock rings first among the ``K``); ``t = exp(-w(x) s)`` turns
    it into ``K int_0^1 (sum_i p_i t^(w_i / w(x)))^(K-1) dt``. That ``t`` form is
    hard to integrate: a cusp at ``t = 0`` and, for small ``w(x) / w_max`` and
    large ``K``, a spike of width ``~ w(x) / (K E_p[w])`` at ``t = 1``, below
    double precision's resolution there for extreme weights.

    Here the integral is taken in ``v = log s``: the integrand
    ``K w(x) exp(v - w(x) s + (K - 1) log G(s))`` is smooth (entire) in ``v``, with
    features of width ~1 wherever they sit (``s ~ 1 / (K w_max) .. 1 / (K w_min)``),
    so composite Gauss-Legendre on panels of width ``panel_width`` in ``v`` over
    ``[s_lo, s_hi]`` converges fast for any ``K`` and spread of weights.
    ``s_lo = 1e-20 / (K w_max)``: the piece below it is ``K w(x) s_lo`` to relative
    ``1e-20``, added exactly. ``s_hi``: ``G(s)^(K-1) <= exp(-(K-1) w_min s) = e^-800``
    beyond it. ``log G`` is computed as ``log1p(-sum_i p_i (1 - exp(-w_i s)))``
    where ``G`` is near 1 and by ``logsumexp`` where it is small, so it keeps
    full relative precision at both ends. Vectorised over atoms and nodes.
    """
    support = p > 0
    ps, ws = p[support], w[support]
    w_hi = float(w.max())  # every atom, also those of mass 0, gets its H
    w_lo = max(float(ws.min()), 1e-300)
    s_lo = 1e-20 / (K * w_hi)
    s_hi = 800.0 / (max(K - 1, 1) * w_lo)
    v_lo, v_hi = math.log(s_lo), math.log(s_hi)
    panels = max(1, math.ceil((v_hi - v_lo) / panel_width))
    nodes, weights = _gauss_legendre(order)
    edges = torch.linspace(v_lo, v_hi, panels + 1, dtype=torch.float64)
    a, b = edges[:-1, None], edges[1:, None]
    v = (a + (b - a) * (nodes[None, :] + 1) / 2).flatten()
    dv = ((b - a) / 2 * weights[None, :]).flatten()
    s = torch.exp(v)

    ws_s = ws[:, None] * s[None, :]  # [atoms in support, nodes]
    lost = (ps[:, None] * -torch.expm1(-ws_s)).sum(dim=0)  # 1 - G(s), accurate for small s
    log_g_big = torch.log1p(-lost.clamp_max(0.5))
    log_g_small = torch.logsumexp(torch.log(ps)[:, None] - ws_s, dim=0)
    log_g = torch.where(lost < 0.5, log_g_big, log_g_small)

    log_kw = torch.log(K * w)  # -inf for an atom of weight 0 (H = 0)
    log_f = log_kw[:, None] + v[None, :] - w[:, None] * s[None, :] + (K - 1) * log_g[None, :]
    return (torch.exp(log_f) * dv[None, :]).sum(dim=1) + K * w * s_lo


def _gauss_legendre(order: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights on [-1, 1] (Golub-Welsch)."""
    i = torch.arange(1, order, dtype=torch.float64)
    off = i / torch.sqrt(4 * i**2 - 1)
    jac = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vecs = torch.linalg.eigh(jac)
    return nodes, 2 * vecs[0] ** 2


def curated_distribution(p, r, K, beta: float = 1.0) -> Tensor:
    """Law of the kept sample when one of ``K`` i.i.d. draws from ``p`` is chosen by Bradley-Terry.

    The choice weights are ``w = exp(beta * r)`` (docs/THEORY.md section 2).

    ``p``: probabilities of the atoms; ``r``: their rewards; ``K``: candidates per
    slot (an int >= 1, or ``math.inf`` for the exponential-tilt limit).
    Returns a float64 tensor that sums to 1.
    """
    p = _as_f64(p, "p")
    q = p * curation_weights(p, r, K, beta)
    return q / q.sum()


def tilted_distribution(p, r, beta: float = 1.0) -> Tensor:
    """``p * exp(beta r) / E_p[exp(beta r)]``: the ``K -> inf`` limit and the RLHF optimum."""
    return curated_distribution(p, r, math.inf, beta)


def plackett_luce_law(scores, num_winners: int) -> dict[tuple[int, ...], float]:
    """Probability of every ordered choice of ``num_winners`` among candidates, for small cases.

    ``scores`` are ``beta * r``; a ``-inf`` score never wins.
    """
    s = _as_f64(scores, "scores")
    check_int("num_winners", num_winners, minimum=1, maximum=s.numel())
    w = torch.exp(s - s.max()).tolist()
    law = {}
    for order in itertools.permutations(range(len(w)), num_winners):
        prob, left = 1.0, sum(w)
        for i in order:
            prob *= w[i] / left if left > 0 else 0.0
            left -= w[i]
        law[order] = prob
    return law


def retraining_trajectory(p_data, r, K, beta: float = 1.0, real_fraction: float = 0.0,
                          rounds: int = 10) -> Tensor:
    """Ideal-learner iteration ``p_{t+1} = rho p_data + (1 - rho) q_t`` (docs/THEORY.md section 3).

    Returns ``[rounds + 1, n]``: row 0 is ``p_data`` (the model after round 0).
    """
    real_fraction = check_float("real_fraction", real_fraction, minimum=0.0, maximum=1.0)
    check_int("rounds", rounds, minimum=0)
    p_data = _as_f64(p_data, "p_data")
    traj = [p_data]
    p = p_data
    for _ in range(rounds):
        p = real_fraction * p_data + (1 - real_fraction) * curated_distribution(p, r, K, beta)
        traj.append(p)
    return torch.stack(traj)


def rlhf_coefficient(rounds: int, beta: float) -> float:
    """KL-regularisation coefficient that ``t`` rounds of curation match in the tilt limit.

    ``p_t`` maximises ``E_p[r] - (1 / (t beta)) KL(p || p_0)`` (docs/THEORY.md section 4.1).
    """
    if rounds <= 0 or beta <= 0:
        return math.inf
    return 1.0 / (rounds * beta)


def improvement_lower_bound(p, r, K, beta: float = 1.0) -> float:
    """Paper's lower bound on ``E_{p_{t+1}}[w]`` for an ideal curated-only learner.

    ``E_p[w] + ((K-1)/K) Var_p[w] / exp(beta r*)`` (docs/THEORY.md section 4.2).
    """
    p, r = _as_f64(p, "p"), _as_f64(r, "r")
    beta = _check_law(p, r, beta)
    check_int("K", K, minimum=1)
    w = torch.exp(beta * r)
    mean = float((p * w).sum())
    var = float((p * (w - mean) ** 2).sum())
    return mean + (K - 1) / K * var / math.exp(beta * float(r.max()))


def expected_exp_reward(p, r, beta: float = 1.0) -> float:
    """``E_p[exp(beta r)]``, the quantity that curated retraining increases."""
    p, r = _as_f64(p, "p"), _as_f64(r, "r")
    return float((p * torch.exp(beta * r)).sum())


def kl_divergence(p, q) -> float:
    """``KL(p || q)`` of two discrete laws, in nats (``inf`` where ``p`` has mass that ``q`` lacks)."""
    p, q = _as_f64(p, "p"), _as_f64(q, "q")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same length, got {p.numel()} and {q.numel()}")
    mask = p > 0
    if (q[mask] <= 0).any():
        return math.inf
    return float((p[mask] * (p[mask].log() - q[mask].log())).sum())


def rlhf_optimum(p0, r, beta: float = 1.0, rounds: int = 1) -> Tensor:
    """The optimum of ``max_p E_p[r] - (1 / (rounds beta)) KL(p || p0)``: ``p0 exp(rounds beta r) / Z``.

    docs/THEORY.md 4.1: ``rounds`` rounds of curation with ``K -> inf`` reach it exactly;
    ``rounds = 0`` gives ``p0``.
    """
    check_int("rounds", rounds, minimum=0)
    p0 = _as_f64(p0, "p0")
    if rounds == 0:
        _check_law(p0, _as_f64(r, "r"), beta)
        return p0.clone()
    return tilted_distribution(p0, r, rounds * beta)


def curated_share_map(share: float, reward_top: float, reward_rest: float, K, beta: float = 1.0,
                      real_fraction: float = 0.0, data_share: float = 0.0) -> float:
    """One step of the ideal iteration for a two-level reward, as a map of the top level's share.

    When the reward takes two values (``reward_top`` on a set of mass ``share``,
    ``reward_rest`` elsewhere), the curated law of the top set depends on ``share``
    only: this returns ``rho * data_share + (1 - rho) * q(top)``. docs/THEORY.md's second
    worked example (class 0 of ten, ``r = 5 * 1{class 0}``) is this map iterated.
    """
    check_float("share", share, minimum=0.0, maximum=1.0)
    q = curated_distribution([share, 1.0 - share], [reward_top, reward_rest], K, beta)
    return real_fraction * data_share + (1.0 - real_fraction) * float(q[0])


def two_level_band(top_share: float, reward_top: float, reward_rest: float, num_candidates: int,
                   beta: float = 1.0, real_fraction: float = 0.0, rounds: int = 10,
                   num_slots: int = 20000) -> tuple[list[float], list[float]]:
    """The ideal learner's trajectory of a top level's share, and a run's sampling noise around it.

    The trajectory is docs/THEORY.md section 2's; the noise says how far a run of the exact
    learner may stray from it by sampling alone.

    For a reward with two values (``reward_top`` on a set of ``p_data`` mass ``top_share``),
    the share ``s_t`` of the top set follows ``s_{t+1} = rho top_share + (1 - rho) q(s_t)``
    (:func:`curated_share_map`). A run with ``num_slots`` slots keeps
    ``N`` winners, a binomial draw of ``q(s_t)``, and its ``share_<top>`` column counts
    ``N K`` candidates of ``s_t``. Returns ``(ideal, se)``, one value per round ``0..rounds``:
    the ideal shares and the standard error of a run's ``share_<top>`` around them, with
    the winners' noise of every earlier round propagated through the map (to first order).
    """
    K, rho, n = num_candidates, real_fraction, num_slots
    ideal, var = [top_share], [0.0]
    s, v = top_share, 0.0
    for _ in range(rounds):
        h = 1e-6
        lo, hi = max(s - h, 0.0), min(s + h, 1.0)
        step = lambda x: curated_share_map(x, reward_top, reward_rest, K, beta, rho, top_share)  # noqa: E731
        slope = (step(hi) - step(lo)) / (hi - lo)
        q = curated_share_map(s, reward_top, reward_rest, K, beta)
        v = slope**2 * v + (1 - rho) ** 2 * q * (1 - q) / n
        s = step(s)
        ideal.append(s)
        var.append(v)
    se = [math.sqrt(vt + st * (1 - st) / (n * K)) for st, vt in zip(ideal, var)]
    return ideal, se
