"""Predicted vs. observed: what an ideal learner would make of one round's candidates.

At the end of round ``t`` the loop holds ``N x K`` candidates, i.i.d. samples of
the current model ``p_t``, and their rewards. docs/THEORY.md section 2 says that the
kept samples follow ``q_t = p_t * H_t`` with a weight ``H_t(x)`` that depends on
``x`` only through ``w(x) = exp(beta r(x))``. Applied to the *empirical* law of
the candidates, that gives a weight per candidate, hence what an ideal learner
(one that fits its training set exactly) would produce next:

    p_{t+1} = rho p_data + (1 - rho) q_t

and so the predicted next-round reward mean, class shares and ``E[exp(beta r)]``.
Comparing them with what the retrained model actually produced at round
``t + 1`` shows how faithfully the generator follows the curated law.

Everything here is pure torch (float64, CPU), no Lightning:

* :func:`empirical_curation_weights`: ``H_t`` on a weighted empirical law, by the
  one-dimensional exponential-race form (softmax choice, any number of winners),
  the order-statistics form (``argmax``), or ``1`` (``uniform``);
* :func:`predict_round`: the dict of predictions for ``rounds.csv``;
* :func:`improvement_violated`, :func:`check_improvement`: docs/THEORY.md 4.2's
  monotone-improvement bound against the next round's observed value.

Cost: the race integral is evaluated on a log-spaced quadrature grid of ``T``
nodes (``T ~ 20 * (28 + beta * (r_max - r_min))``), once for the law
(``O(T * support)``) and once per distinct reward value (``O(T * values)``),
in bounded chunks. Rewards that take more than ``max_support`` distinct values
(continuous rewards) are compressed to ``max_support`` groups of equal mass for
the law, and ``H`` is evaluated on ``max_support`` nodes and interpolated;
:func:`predict_round` reports the support used as ``prediction_support``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

from lightning_curate.theory.laws import rlhf_coefficient
from lightning_curate.utils.validation import MODES, check_beta, check_choice, check_float, check_int

__all__ = [
    "empirical_curation_weights",
    "predict_round",
    "improvement_violated",
    "check_improvement",
    "DEFAULT_MAX_SUPPORT",
]

DEFAULT_MAX_SUPPORT = 4096
# Quadrature of the race integral in u = log s (the integrand is analytic in a strip
# |Im u| < pi/2, so the trapezoid rule converges geometrically: du = 0.05 is far
# below float64 error). w is normalised to max 1; [S_LO, S_HI_FACTOR / w_min] holds
# everything but a relative 1e-12 at the low end (added back analytically) and
# exp(-S_HI_FACTOR) at the high end.
_DU = 0.05
_S_LO = 1e-12
_S_HI_FACTOR = 50.0
_LOG_W_FLOOR = -700.0  # exp(-700) ~ 1e-304: weights below it count as this small
_CHUNK = 1 << 20  # elements per [rows, T] block


def _f64(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach().to("cpu", torch.float64).reshape(-1)
    else:  # a list of Python floats: straight to float64, never through float32
        t = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def _check_choice(K: int, num_winners: int, mode: str, beta: float) -> float:
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
    r = _f64(rewards, "rewards")
    K, m = num_candidates, num_winners
    beta = _check_choice(K, m, mode, beta)
    check_int("max_support", max_support, minimum=2)
    if weights is None:
        pi = torch.full_like(r, 1.0 / r.numel())
    else:
        pi = _f64(weights, "weights")
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


def _shares(labels: Tensor, weights: Tensor, n_classes: int) -> Tensor:
    out = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, labels, weights)
    return out / weights.sum()


def _labels(x, n: int, n_classes: int, name: str) -> Tensor:
    lab = torch.as_tensor(x).detach().to("cpu").reshape(-1).long()
    if lab.numel() != n:
        raise ValueError(f"{name} must hold one label per sample ({n}), got {lab.numel()}")
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
        raise ValueError(f"{name} must be in 0..{n_classes - 1}, got values in {int(lab.min())}..{int(lab.max())}")
    return lab


def predict_round(rewards, beta: float = 1.0, *, labels=None, class_names: Optional[Sequence[str]] = None,
                  num_winners: int = 1, mode: str = "softmax", real_fraction: float = 0.0,
                  real_rewards=None, real_labels=None, reward_max: Optional[float] = None,
                  round_idx: Optional[int] = None, max_support: int = DEFAULT_MAX_SUPPORT) -> dict[str, float]:
    """What an ideal learner would produce after this round, from the round's candidates.

    Args:
        rewards: ``[N, K]`` rewards of every candidate of the round (i.i.d. samples of ``p_t``).
        beta: the choice's inverse temperature.
        labels: optional ``[N, K]`` class (mode) of every candidate, for the shares.
        class_names: names of the classes (default ``"0", "1", ...``); their number sets
            the number of classes.
        num_winners, mode: the curation op's settings (as in ``kchoice``).
        real_fraction: ``rho``, the real data's fraction of the next round's training set.
        real_rewards: rewards of the real training data (needed when ``rho > 0``).
        real_labels: labels of the real training data (needed when ``rho > 0`` and labels are given).
        reward_max: ``r*`` of the improvement bound (default: the largest reward seen).
        round_idx: ``t``, to report the RLHF coefficient ``1 / (t beta)`` of ``p_t``.
        max_support: see :func:`empirical_curation_weights`.

    Returns a dict of floats:

    * ``predicted_reward_mean``: ``E_{p_{t+1}}[r]`` of the ideal learner
      (``rho E_data[r] + (1 - rho) E_{q_t}[r]``); ``predicted_curated_reward_mean``: ``E_{q_t}[r]``;
    * ``predicted_share_<name>``, ``predicted_curated_share_<name>``: the same for class shares;
    * ``tilt_reward_mean``, ``tilt_share_<name>``: the ``K -> inf`` prediction (weights
      ``w / mean w``), mixed with the real data likewise;
    * ``exp_reward_mean``: ``E_{p_t}[exp(beta r)]`` of the candidates, ``exp_reward_stderr``
      its standard error; ``predicted_exp_reward_mean``: ``E_{p_{t+1}}[exp(beta r)]`` of the
      ideal learner; ``exp_reward_lower_bound``: docs/THEORY.md 4.2's lower bound on it,
      ``E[w] + ((K-1)/K) Var[w] / exp(beta r*)`` (mixed as
      ``rho E_data[w] + (1 - rho) * bound`` when ``rho > 0``; NaN unless the choice is
      softmax with one winner, the bound's setting), ``exp_reward_lower_bound_stderr`` the
      standard error of that estimate;
    * ``rlhf_coefficient``: ``1 / (t beta)`` (when ``round_idx`` is given; ``inf`` at ``t = 0``);
    * ``prediction_support``: distinct reward values the law of ``p_t`` was represented
      with (``max_support`` when compressed).

    The predictions are for the ``replace`` policy; under ``accumulate`` the synthetic
    part is the average of the rounds' curated laws, i.e. of their ``predicted_curated_*``.
    """
    r_nk = rewards.detach().to("cpu", torch.float64) if isinstance(rewards, Tensor) \
        else torch.as_tensor(rewards, dtype=torch.float64)
    if r_nk.dim() != 2 or r_nk.shape[0] < 1 or r_nk.shape[1] < 1:
        raise ValueError(f"rewards must have shape [N, K], got {tuple(r_nk.shape)}")
    N, K = r_nk.shape
    r = _f64(r_nk, "rewards")
    beta = _check_choice(K, num_winners, mode, beta)
    rho = check_float("real_fraction", real_fraction, minimum=0.0, maximum=1.0)
    if rho > 0 and real_rewards is None:
        raise ValueError("real_fraction > 0: pass real_rewards (the rewards of the real training data) "
                         "to mix the prediction with the real data")
    H = empirical_curation_weights(r, K, beta, num_winners=num_winners, mode=mode, max_support=max_support)
    uniform = torch.full_like(r, 1.0 / r.numel())
    q = uniform * H  # the curated law on the candidates, sums to 1
    r_shift = r.max() if reward_max is None else torch.tensor(float(reward_max), dtype=torch.float64)
    tilt = torch.exp(beta * (r - r.max()))
    tilt = tilt / tilt.sum()
    w = torch.exp(beta * r)

    real_r = _f64(real_rewards, "real_rewards") if real_rewards is not None else None
    real_w_mean = float(torch.exp(beta * real_r).mean()) if real_r is not None else math.nan

    def mix(real_value: float, synthetic: float) -> float:
        return synthetic if rho == 0.0 else rho * real_value + (1 - rho) * synthetic

    real_r_mean = float(real_r.mean()) if real_r is not None else math.nan
    curated_r = float((q * r).sum())
    out: dict[str, float] = {
        "predicted_reward_mean": mix(real_r_mean, curated_r),
        "predicted_curated_reward_mean": curated_r,
        "tilt_reward_mean": mix(real_r_mean, float((tilt * r).sum())),
        "exp_reward_mean": float(w.mean()),
        "exp_reward_stderr": float(w.std(unbiased=True) / math.sqrt(w.numel())) if w.numel() > 1 else math.nan,
        "predicted_exp_reward_mean": mix(real_w_mean, float((q * w).sum())),
    }
    if mode == "softmax" and num_winners == 1:
        # bound = mean_i g_i with g_i = w_i + c (w_i - mean w)^2: its standard error is std(g) / sqrt(M)
        # (to first order), the noise of estimating the bound from this round's candidates.
        c = (K - 1) / K / math.exp(beta * float(r_shift))
        g = w + c * (w - w.mean()) ** 2
        out["exp_reward_lower_bound"] = mix(real_w_mean, float(g.mean()))
        se = float(g.std(unbiased=True) / math.sqrt(g.numel())) if g.numel() > 1 else math.nan
        out["exp_reward_lower_bound_stderr"] = (1 - rho) * se
    else:
        out["exp_reward_lower_bound"] = math.nan
        out["exp_reward_lower_bound_stderr"] = math.nan
    if round_idx is not None:
        out["rlhf_coefficient"] = rlhf_coefficient(round_idx, beta)
    out["prediction_support"] = float(min(torch.unique(r).numel(), max_support)) if mode == "softmax" \
        else float(torch.unique(r).numel())

    if labels is not None:
        if class_names is None:
            lab_all = torch.as_tensor(labels).reshape(-1).long()
            class_names = [str(i) for i in range(int(lab_all.max()) + 1 if lab_all.numel() else 0)]
        names = list(class_names)
        C = len(names)
        lab = _labels(labels, r.numel(), C, "labels")
        if rho > 0:
            if real_labels is None:
                raise ValueError("real_fraction > 0 with labels: pass real_labels (the labels of the real "
                                 "training data) to mix the predicted shares with the real data")
            real_lab = _labels(real_labels, torch.as_tensor(real_labels).numel(), C, "real_labels")
            real_shares = torch.bincount(real_lab, minlength=C).double() / max(1, real_lab.numel())
        else:
            real_shares = torch.zeros(C, dtype=torch.float64)
        curated_shares = _shares(lab, q, C)
        tilt_shares = _shares(lab, tilt, C)
        for c, name in enumerate(names):
            out[f"predicted_share_{name}"] = mix(float(real_shares[c]), float(curated_shares[c]))
        for c, name in enumerate(names):
            out[f"predicted_curated_share_{name}"] = float(curated_shares[c])
        for c, name in enumerate(names):
            out[f"tilt_share_{name}"] = mix(float(real_shares[c]), float(tilt_shares[c]))
    return out


def improvement_violated(observed: float, lower_bound: float, *, stderr: float = 0.0, z: float = 3.0) -> bool:
    """Whether the next round's observed ``E[exp(beta r)]`` falls below the improvement bound.

    It must fall below docs/THEORY.md 4.2's bound by more than ``z`` standard errors
    (``stderr``: of the difference) to count. NaNs never flag.
    """
    if not (math.isfinite(observed) and math.isfinite(lower_bound)):
        return False
    se = stderr if math.isfinite(stderr) else 0.0
    return observed + z * se < lower_bound


def check_improvement(previous: Mapping[str, float], current: Mapping[str, float], *,
                      z: float = 3.0) -> dict[str, float]:
    """Compare round ``t + 1``'s ``exp_reward_mean`` with the bound that round ``t`` predicted.

    ``current`` is round ``t + 1``'s :func:`predict_round` dict or ``rounds.csv`` row;
    ``previous`` a dict with ``exp_reward_lower_bound`` and ``exp_reward_lower_bound_stderr``.

    Returns ``improvement_margin`` (observed minus bound, in standard errors of the
    difference: both are sample estimates) and ``improvement_violation`` (1.0 when the
    margin is below ``-z``, else 0.0). A violation means the retrained model did not
    reach what an ideal learner provably reaches: usually an under-trained generator.
    """
    def get(row, key):
        try:
            return float(row.get(key, math.nan))
        except (TypeError, ValueError):
            return math.nan

    bound, obs = get(previous, "exp_reward_lower_bound"), get(current, "exp_reward_mean")
    se = math.hypot(*(v if math.isfinite(v) else 0.0 for v in (get(previous, "exp_reward_lower_bound_stderr"),
                                                                 get(current, "exp_reward_stderr"))))
    if not (math.isfinite(bound) and math.isfinite(obs)):
        return {"improvement_margin": math.nan, "improvement_violation": math.nan}
    margin = (obs - bound) / se if se > 0 else (math.inf if obs >= bound else -math.inf)
    return {"improvement_margin": margin,
            "improvement_violation": float(improvement_violated(obs, bound, stderr=se, z=z))}
