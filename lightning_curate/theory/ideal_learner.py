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

* :func:`predict_round`: the dict of predictions for ``rounds.csv``, from ``H_t``
  on the candidates' empirical law
  (:func:`~lightning_curate.theory.empirical.empirical_curation_weights`);
* :func:`improvement_violated`, :func:`check_improvement`: docs/THEORY.md 4.2's
  monotone-improvement bound against the next round's observed value.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor

# empirical_curation_weights and DEFAULT_MAX_SUPPORT lived here first and still import from here.
from lightning_curate.theory.empirical import (
    DEFAULT_MAX_SUPPORT,
    check_curation,
    empirical_curation_weights,
    float64_vector,
)
from lightning_curate.theory.laws import rlhf_coefficient
from lightning_curate.utils.columns import PREDICTED_CURATED_SHARE, PREDICTED_SHARE, SELECTION_SHARE_SD, TILT_SHARE
from lightning_curate.utils.validation import check_float

__all__ = ["check_improvement", "improvement_violated", "predict_round", "run_level_z", "selection_probabilities"]



_MAX_EXP_ARG = 700.0  # exp(700) ~ 1e304, inside float64's range

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


def selection_probabilities(rewards: Tensor, beta: float, mode: str) -> Tensor:
    """``[N, K]``: the chance that each of a slot's ``K`` candidates is its one winner.

    ``softmax``: ``softmax(beta r)`` over the slot; ``argmax``: the best, the lowest index among
    ties, as ``kchoice`` picks it (no draw at all); ``uniform``: ``1 / K``.

    Example:
        >>> selection_probabilities(torch.tensor([[0.0, 1.0, 1.0]]), 1.0, "argmax").tolist()
        [[0.0, 1.0, 0.0]]
    """
    r = rewards.double()
    if mode == "softmax":
        return torch.softmax(beta * r, dim=1)
    if mode == "argmax":
        return torch.zeros_like(r).scatter_(1, r.argmax(dim=1, keepdim=True), 1.0)
    return torch.full_like(r, 1.0 / r.shape[1])


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
      with (``max_support`` when compressed);
    * with one winner a slot, ``selection_reward_sd``: how much a slot's winner's reward still
      varies given its candidates (the root mean over slots of its variance), and
      ``selection_share_sd_<name>`` the same for membership in each class: the curated set
      is a draw, whose mean misses the curated law's by this over ``sqrt(slots)``.

    The predictions are for the ``replace`` policy; under ``accumulate`` the synthetic
    part is the average of the rounds' curated laws, i.e. of their ``predicted_curated_*``.
    """
    r_nk = rewards.detach().to("cpu", torch.float64) if isinstance(rewards, Tensor) \
        else torch.as_tensor(rewards, dtype=torch.float64)
    if r_nk.dim() != 2 or r_nk.shape[0] < 1 or r_nk.shape[1] < 1:
        raise ValueError(f"rewards must have shape [N, K], got {tuple(r_nk.shape)}")
    N, K = r_nk.shape
    r = float64_vector(r_nk, "rewards")
    beta = check_curation(K, num_winners, mode, beta)
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

    real_r = float64_vector(real_rewards, "real_rewards") if real_rewards is not None else None
    real_w_mean = float(torch.exp(beta * real_r).mean()) if real_r is not None else math.nan
    # E[exp(beta r)] is on an absolute scale: past exp's float64 range it has no value (NaN columns).
    top = max([float(r.max()), float(r_shift)] + ([float(real_r.max())] if real_r is not None else []))
    exp_ok = beta * top <= _MAX_EXP_ARG and beta * float(r_shift) >= -_MAX_EXP_ARG

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
    if not exp_ok:
        for key in ("exp_reward_mean", "exp_reward_stderr", "predicted_exp_reward_mean"):
            out[key] = math.nan
    if mode == "softmax" and num_winners == 1 and exp_ok:
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
    pick = selection_probabilities(r_nk, beta, mode) if num_winners == 1 else None
    if pick is not None:
        # Given these candidates, a slot's one winner is still a draw: its reward varies by Var_s.
        # The curated set's mean over n slots then misses the law's by sqrt(mean_s Var_s / n).
        var_s = (pick * r_nk**2).sum(dim=1) - (pick * r_nk).sum(dim=1) ** 2
        out["selection_reward_sd"] = math.sqrt(max(float(var_s.mean()), 0.0))
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
            out[PREDICTED_SHARE(name)] = mix(float(real_shares[c]), float(curated_shares[c]))
        for c, name in enumerate(names):
            out[PREDICTED_CURATED_SHARE(name)] = float(curated_shares[c])
        for c, name in enumerate(names):
            out[TILT_SHARE(name)] = mix(float(real_shares[c]), float(tilt_shares[c]))
        if pick is not None:  # a winner's membership in each class, per slot: Bernoulli(p_s(c))
            p_class = torch.zeros(N, C, dtype=torch.float64).scatter_add_(1, lab.reshape(N, K), pick)
            sd = (p_class * (1 - p_class)).clamp(min=0.0).mean(dim=0).sqrt()
            for c, name in enumerate(names):
                out[SELECTION_SHARE_SD(name)] = float(sd[c])
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


def run_level_z(rounds: int, z: float = 3.0) -> float:
    """The per-round threshold that keeps a whole run's false-alarm rate at one round's ``z``.

    A run checks the bound once per round: at ``z`` each, a learner exactly at the bound would be
    flagged somewhere about ``rounds`` times as often as in one round. Splitting the one-sided tail
    over the rounds (Bonferroni) keeps the run's rate at ``z``'s.

    Example:
        >>> round(run_level_z(1), 2), round(run_level_z(10), 2)
        (3.0, 3.64)
    """
    tail = (1.0 - NormalDist().cdf(z)) / max(1, rounds)
    return NormalDist().inv_cdf(1.0 - tail)


def check_improvement(previous: Mapping[str, float], current: Mapping[str, float], *,
                      z: float = 3.0, learner_noise: float = 0.0) -> dict[str, float]:
    """Compare round ``t + 1``'s ``exp_reward_mean`` with the bound that round ``t`` predicted.

    ``current`` is round ``t + 1``'s :func:`predict_round` dict or ``rounds.csv`` row;
    ``previous`` a dict with ``exp_reward_lower_bound`` and ``exp_reward_lower_bound_stderr``.

    Returns ``improvement_margin`` (observed minus bound, in standard errors of the
    difference: both are sample estimates) and ``improvement_violation`` (1.0 when the
    margin is below ``-z``, else 0.0). A violation means the retrained model did not
    reach what an ideal learner provably reaches: usually an under-trained generator.
    ``learner_noise`` counts the learner's refit jitter (a multiple of the observed mean's
    standard error) as noise, as the fidelity rule does.
    """
    def get(row, key):
        try:
            return float(row.get(key, math.nan))
        except (TypeError, ValueError):
            return math.nan

    bound, obs = get(previous, "exp_reward_lower_bound"), get(current, "exp_reward_mean")
    se_bound, se_obs = (v if math.isfinite(v) else 0.0 for v in (get(previous, "exp_reward_lower_bound_stderr"),
                                                                   get(current, "exp_reward_stderr")))
    se = math.hypot(se_bound, se_obs, learner_noise * se_obs)
    if not (math.isfinite(bound) and math.isfinite(obs)):
        return {"improvement_margin": math.nan, "improvement_violation": math.nan}
    margin = (obs - bound) / se if se > 0 else (math.inf if obs >= bound else -math.inf)
    return {"improvement_margin": margin,
            "improvement_violation": float(improvement_violated(obs, bound, stderr=se, z=z))}
