"""The ideal learner's prediction of the next round, in the loop, for one curator or a population.

One curator: :func:`~lightning_curate.theory.predict_round` on the round's probe. A population
(:mod:`lightning_curate.loop.curators`) keeps the mixture ``q = sum_u pi_u p H_u``
(:mod:`lightning_curate.theory.population`): :func:`population_columns` turns a round's
candidates into that prediction, :func:`ideal_columns` runs the ideal learner from the real
data for as many rounds, and :func:`exact_metrics` gives an exact learner's exact quantities
under it. What a population's predictions keep between rounds is a :class:`PopulationForecast`'s.

Per selection rule (:mod:`lightning_curate.loop.selection`): the K-choice as above; a pool fraction
by reward (``top``, ``bottom``) truncates the law to its top (bottom) quantile
(:mod:`lightning_curate.theory.truncation`), exactly on the exact learner's atoms; a ``random``
fraction predicts no move (so no fidelity ratio: the move is within noise). A pool fraction by
likelihood gets no probe prediction (the probe holds rewards, not likelihoods), only the exact
learner's exact trajectory; any run with a ``transform`` gets none: no ``predicted_*`` columns, and
the fidelity columns are then left out (not applicable), not filled with numbers of another law.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, cast

import torch
from torch import Tensor, nn

from lightning_curate import theory
from lightning_curate.loop.curators import members
from lightning_curate.loop.selection import PoolFraction
from lightning_curate.theory.empirical import empirical_curation_weights
from lightning_curate.theory.ideal_learner import predict_round
from lightning_curate.theory.population import AtomCurator
from lightning_curate.theory.truncation import predict_pool_round, truncation_trajectory
from lightning_curate.utils.columns import (
    EXACT_SHARE,
    IDEAL_REWARD_MEAN_OF,
    IDEAL_SHARE,
    ONE_CURATOR_PREDICTIONS,
    PREDICTED_CURATED_REWARD_MEAN_OF,
    PREDICTED_CURATED_SHARE,
    PREDICTED_REWARD_MEAN_OF,
    PREDICTED_SHARE,
    Col,
    stderr,
)

__all__ = ["PopulationForecast", "exact_metrics", "exact_population", "exact_truncation_metrics", "ideal_columns",
           "mixture_weights",
           "population_columns", "predict_next", "predicts"]


def predicts(module: Any) -> bool:
    """Whether the ideal learner predicts ``module``'s next round from its probe (``predicted_*``): not
    under a ``transform`` (a correction outside the theory), nor under a pool fraction ranked by
    likelihood (the probe holds rewards, not likelihoods; the exact learner's exact trajectory is
    :func:`exact_truncation_metrics`')."""
    if getattr(module, "transform", None) is not None:
        return False
    selection = getattr(module, "selection", None)
    return not (isinstance(selection, PoolFraction) and selection.score == "likelihood" and selection.rule != "random")


def mixture_weights(rewards: Tensor, curators: nn.ModuleList, pi: Tensor, num_candidates: int,
                    num_winners: int = 1, weights: Optional[Tensor] = None) -> Tensor:
    """``H = sum_u pi_u H_u`` on the law of ``M`` points (``rewards [U, M]``, masses ``weights``, default
    uniform): the curated law is ``q = weights * H``.

    Each ``H_u`` is :func:`~lightning_curate.theory.empirical_curation_weights` of curator ``u``'s
    rewards with its ``beta`` and mode (for one winner, equal to
    :func:`~lightning_curate.theory.population.empirical_population_weights`).
    """
    total = torch.zeros(rewards.shape[1], dtype=torch.float64)
    for w, r, c in zip(pi.tolist(), rewards, members(curators)):
        if w > 0:
            total += w * empirical_curation_weights(r, num_candidates, c.beta, weights=weights,
                                                    num_winners=num_winners, mode=c.mode)
    return total


def population_columns(base: dict[str, float], probe: dict[str, Tensor], curators: nn.ModuleList, pi: Tensor,
                       names: Sequence[str], *, num_winners: int, real_fraction: float, real_rewards: Tensor,
                       real_curator_rewards: Tensor, class_names: Optional[Sequence[str]] = None,
                       real_labels: Optional[Tensor] = None) -> dict[str, float]:
    """The ideal learner's next round under the population's mixture law ``q = sum_u pi_u p H_u``.

    ``base`` is :func:`~lightning_curate.theory.predict_round`'s one-curator dict; its predictions are
    replaced (``predicted_*``), its ``tilt_*`` and improvement bound dropped (a mixture has neither),
    and ``predicted_reward_mean_<name>`` added per curator. ``probe`` holds ``probe_rewards [n, K]``
    (reference reward), ``probe_curator_rewards [n, K, U]`` and optionally ``probe_labels [n, K]``;
    ``real_curator_rewards [n_real, U]``.
    """
    r_ref = probe["probe_rewards"].double()
    n, k = r_ref.shape
    r_cur = probe["probe_curator_rewards"].double().reshape(n * k, -1).T  # [U, M]
    q = mixture_weights(r_cur, curators, pi, k, num_winners) / (n * k)
    rho = real_fraction

    def mix(real: float, synthetic: float) -> float:
        return synthetic if rho == 0.0 else rho * real + (1 - rho) * synthetic

    # A slot's winner depends on its curator too: the one-curator selection spreads do not apply.
    out = {key: v for key, v in base.items() if not any(f.owns(key) for f in ONE_CURATOR_PREDICTIONS)}
    out[Col.EXP_REWARD_LOWER_BOUND] = out[stderr(Col.EXP_REWARD_LOWER_BOUND)] = math.nan
    real_ref = real_rewards.double().flatten()
    curated = float((q * r_ref.flatten()).sum())
    out[Col.PREDICTED_REWARD_MEAN] = mix(float(real_ref.mean()), curated)
    out[Col.PREDICTED_CURATED_REWARD_MEAN] = curated
    for u, name in enumerate(names):
        cur = float((q * r_cur[u]).sum())
        out[PREDICTED_REWARD_MEAN_OF(name)] = mix(float(real_curator_rewards[:, u].double().mean()), cur)
        out[PREDICTED_CURATED_REWARD_MEAN_OF(name)] = cur
    labels = probe.get("probe_labels")
    if labels is not None and class_names:
        c = len(class_names)
        shares = torch.zeros(c, dtype=torch.float64).index_add_(0, labels.reshape(-1).long(), q)
        real_shares = torch.zeros(c, dtype=torch.float64)
        if real_labels is not None and rho > 0:
            real_shares = torch.bincount(real_labels.reshape(-1).long(), minlength=c).double() / real_labels.numel()
        for i, cname in enumerate(class_names):
            out[PREDICTED_SHARE(cname)] = mix(float(real_shares[i]), float(shares[i]))
        for i, cname in enumerate(class_names):
            out[PREDICTED_CURATED_SHARE(cname)] = float(shares[i])
    return out


class PopulationForecast:
    """What a population's predictions keep from round to round (the analysis owns it, rank 0):
    the curators' rewards of the real training data, scored once, and the ideal learner's laws
    on those points, one per round so far (:func:`ideal_columns`).
    """

    def __init__(self) -> None:
        self.real_curator_rewards: Optional[Tensor] = None  # [n_real, U]
        self.laws: list[Tensor] = []

    def curator_rewards(self, module: Any, real: Tensor, round_idx: int) -> Tensor:
        """``[n_real, U]``: every curator's reward of the real data ``real`` (on the module's device),
        scored on the first call and kept."""
        if self.real_curator_rewards is None:
            self.real_curator_rewards = torch.stack([module.score(real, round_idx, c.reward).cpu()
                                                     for c in members(module.curators)], dim=1)
        return self.real_curator_rewards


def predict_next(module: Any, probe: dict[str, Tensor], *, class_names: Optional[Sequence[str]], real_fraction: float,
                 real_rewards: Optional[Tensor], real_labels: Optional[Tensor], real_samples: Tensor,
                 round_idx: int, forecast: Optional[PopulationForecast] = None) -> dict[str, float]:
    """The ideal learner's next round from a round's probe, for a :class:`CurationModule` ``module``.

    One curator: :func:`~lightning_curate.theory.predict_round`; a population: its mixture law
    (:func:`population_columns`), with what ``forecast`` keeps between rounds (the curators'
    rewards of the real data, the ideal learner's laws; a fresh one recomputes them).
    """
    labels = probe.get("probe_labels")
    names = list(class_names) if labels is not None and class_names else None
    if not predicts(module):
        return {}
    selection = getattr(module, "selection", None)
    if isinstance(selection, PoolFraction):
        return predict_pool_round(probe["probe_rewards"], selection.fraction, selection.rule, labels=labels,
                                  class_names=names, real_fraction=real_fraction, real_rewards=real_rewards,
                                  real_labels=real_labels if labels is not None else None)
    base = predict_round(probe["probe_rewards"], module.beta, labels=labels, class_names=names,
                         num_winners=module.num_winners, mode=module.mode, real_fraction=real_fraction,
                         real_rewards=real_rewards, real_labels=real_labels if labels is not None else None,
                         round_idx=round_idx)
    if module.curators is None:
        return base
    forecast = forecast if forecast is not None else PopulationForecast()
    real = real_samples.to(module.device)
    if real_rewards is None:
        real_rewards = module.score(real, round_idx).cpu()
    real_curator_rewards = forecast.curator_rewards(module, real, round_idx)
    columns = population_columns(base, probe, module.curators, module.curator_shares, module.curator_names,
                                 num_winners=module.num_winners, real_fraction=real_fraction,
                                 real_rewards=real_rewards, real_curator_rewards=real_curator_rewards,
                                 class_names=names, real_labels=real_labels)
    columns.update(ideal_columns(module, round_idx, real_fraction, real_rewards, forecast))
    return columns


def ideal_columns(module: Any, round_idx: int, real_fraction: float, real_rewards: Tensor,
                  forecast: PopulationForecast) -> dict[str, float]:
    """The ideal learner's model after ``round_idx`` rounds, run from ``p_data`` on the real data's points.

    ``p_{t+1} = rho p_data + (1 - rho) p_t H_t`` with the population's ``H_t`` on the law of the real
    training data (the ideal learner never leaves ``p_data``'s support): ``ideal_reward_mean`` (the
    reference reward) and ``ideal_reward_mean_<name>``, the T-round prediction a sweep draws beside
    the runs. The laws are kept in ``forecast``, one more per round (its ``curator_rewards`` scored).
    """
    if forecast.real_curator_rewards is None:
        raise ValueError("ideal_columns: the forecast has no curator rewards of the real data yet; "
                         "call forecast.curator_rewards(module, real, round_idx) first")
    r_cur = forecast.real_curator_rewards.double().T  # [U, M]
    m = r_cur.shape[1]
    laws = forecast.laws
    if not laws:
        laws.append(torch.full((m,), 1.0 / m, dtype=torch.float64))
    while len(laws) <= round_idx:
        p = laws[-1]
        q = p * mixture_weights(r_cur, module.curators, module.curator_shares, module.num_candidates,
                                module.num_winners, weights=p)
        laws.append(real_fraction / m + (1 - real_fraction) * q / q.sum())
    p = laws[round_idx]
    out = {Col.IDEAL_REWARD_MEAN: float((p * real_rewards.double().flatten()).sum())}
    for u, name in enumerate(module.curator_names):
        out[IDEAL_REWARD_MEAN_OF(name)] = float((p * r_cur[u]).sum())
    return out


def exact_population(curators: nn.ModuleList, pi: Tensor, num_candidates: int) -> Optional[list[AtomCurator]]:
    """The population on a finite support (each reward's per-atom ``values``), or ``None`` without tables."""
    tables = [getattr(c.reward, "values", None) for c in members(curators)]
    if not all(isinstance(t, Tensor) for t in tables):
        return None
    return [AtomCurator(cast(Tensor, t).detach().cpu().double(), c.beta, c.mode, num_candidates, float(w), c.name)
            for t, c, w in zip(tables, members(curators), pi.tolist())]


def exact_metrics(module: Any, source: nn.Module, real_fraction: float, round_idx: int) -> dict[str, float]:
    """The generator's exact round quantities (``round_metrics``, the exact learner's), under the population
    or the pool selection (:func:`exact_truncation_metrics`); none under a ``transform``."""
    if getattr(module, "transform", None) is not None:
        return {}
    if isinstance(getattr(module, "selection", None), PoolFraction):
        return exact_truncation_metrics(module, source, real_fraction, round_idx)
    extra: dict[str, Any] = {}
    if module.curators is not None:
        population = exact_population(module.curators, module.curator_shares, module.num_candidates)
        if population is None:  # a curator's reward has no per-atom table: no exact theory
            return {}
        extra["population"] = population
    return module.generator.round_metrics(module.reward, source, beta=module.beta,
                                          num_candidates=module.num_candidates, real_fraction=real_fraction,
                                          round_idx=round_idx, **extra)


def exact_truncation_metrics(module: Any, source: nn.Module, real_fraction: float, round_idx: int) -> dict[str, float]:
    """An exact categorical learner's quantities under a pool fraction: its law ``p_t`` against the ideal
    learner's :func:`~lightning_curate.theory.truncation.truncation_trajectory` from ``p_data``, ranked by
    the reward's per-atom table or, for ``score: likelihood``, by the model's own ``p_t``.

    ``{}`` unless the generator has ``probs`` (e.g. ``ExactCategorical``), the reward a per-atom table
    (``values``) and the source a ``p_data``, all over the same atoms. Otherwise ``kl_to_ideal``,
    ``exact_reward_mean``, ``exact_share_<name>`` and ``ideal_share_<name>``.
    """
    selection = module.selection
    probs, values = getattr(module.generator, "probs", None), getattr(module.reward, "values", None)
    p_data = getattr(source, "p_data", None)
    if not all(isinstance(t, Tensor) for t in (probs, values, p_data)):
        return {}
    p_t, r, p0 = (cast(Tensor, t).detach().cpu().double() for t in (probs, values, p_data))
    if not p_t.numel() == r.numel() == p0.numel():
        return {}
    scores = None if selection.score == "likelihood" else r
    ideal = truncation_trajectory(p0, scores, selection.fraction, selection.rule, real_fraction,
                                  rounds=round_idx)[-1]
    row = {"kl_to_ideal": theory.kl_divergence(p_t, ideal), "exact_reward_mean": float((p_t * r).sum())}
    names = getattr(source, "class_names", None) or [f"atom{i}" for i in range(p_t.numel())]
    for name, pe, pi in zip(names, p_t.tolist(), ideal.tolist()):
        row[EXACT_SHARE(name)] = pe
        row[IDEAL_SHARE(name)] = pi
    return row
