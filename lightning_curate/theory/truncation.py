"""Pool selection in law: keeping the top, bottom or a random fraction of the model's samples.

A pool-fraction selection (:class:`~lightning_curate.loop.selection.PoolFraction`) keeps a
fraction ``f`` of a round's whole pool of candidates, ranked by a score. As the pool grows,
keeping its top ``f`` by reward ``r`` keeps ``p_t`` *truncated to its top ``f`` quantile*:

    q_t(x) = p_t(x) 1[r(x) > r_f] / f   (+ the share of the boundary level ``r = r_f``
                                         that makes the mass exactly ``f``),

and the ideal learner, which fits its training set exactly, moves to
``p_{t+1} = rho p_data + (1 - rho) q_t``. On a finite support (the exact categorical
learner's atoms) this is exact; on a round's probe candidates it is the empirical
prediction, as :func:`~lightning_curate.theory.predict_round` is for the K-choice. The
bottom fraction is the same with ``-r``; a random fraction keeps ``p_t`` unchanged. Ranked by
the model's own likelihood, the score is ``p_t`` itself: the top fraction keeps the model's most
probable region, and on a finite support that too is exact.

Example:
    >>> import torch
    >>> truncate(torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.0, 1.0, 2.0]), 0.5, "top").tolist()
    [0.0, 0.5, 0.5]
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_curate.utils.columns import PREDICTED_CURATED_SHARE, PREDICTED_SHARE, Col
from lightning_curate.utils.validation import check_choice, check_float

__all__ = ["POOL_RULES", "predict_pool_round", "truncate", "truncation_trajectory"]

POOL_RULES = ("top", "bottom", "random")


def truncate(p: Tensor, r: Tensor, fraction: float, rule: str) -> Tensor:
    """The law kept by a pool selection from law ``p`` over points with scores ``r``, normalised.

    ``top``: the points with the highest scores up to mass ``fraction``; a level of tied scores at
    the boundary keeps the same share of each of its points (a tie has no order in law).
    ``bottom``: the lowest. ``random``: ``p`` itself.

    Args:
        p: masses ``[M]`` (any non-negative weights; normalised here).
        r: scores ``[M]``.
        fraction: the kept fraction ``f`` in ``(0, 1]``.
        rule: ``top``, ``bottom`` or ``random``.
    """
    check_choice("rule", rule, POOL_RULES)
    f = check_float("fraction", fraction, minimum=0.0, maximum=1.0, strict_minimum=True)
    p = p.detach().to("cpu", torch.float64).reshape(-1)
    r = r.detach().to("cpu", torch.float64).reshape(-1)
    if p.numel() != r.numel() or p.numel() == 0:
        raise ValueError(f"p and r must hold one value per point, got {p.numel()} and {r.numel()}")
    p = p / p.sum()
    if rule == "random":
        return p
    levels, inverse = torch.unique(r if rule == "bottom" else -r, sorted=True, return_inverse=True)
    mass = torch.zeros(levels.numel(), dtype=torch.float64).index_add_(0, inverse, p)
    before = torch.cumsum(mass, 0) - mass  # the mass of the better levels
    kept = ((f - before).clamp(min=0.0) / mass.clamp(min=1e-300)).clamp(max=1.0)  # share of each level kept
    q = p * kept[inverse]
    return q / q.sum()


def truncation_trajectory(p_data: Tensor, r: Optional[Tensor], fraction: float, rule: str, real_fraction: float,
                          rounds: int) -> list[Tensor]:
    """``[p_0, ..., p_rounds]`` of the ideal learner under a pool selection on a finite support.

    ``p_{t+1} = rho p_data + (1 - rho) truncate(p_t)``, from ``p_0 = p_data``, ranked by the scores
    ``r`` of the atoms, or with ``r = None`` by the model's own likelihood ``p_t`` (a selection by
    likelihood: the score moves with the model, round by round).

    Example:
        >>> import torch
        >>> laws = truncation_trajectory(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), 0.5, "top", 0.0, 1)
        >>> laws[-1].tolist()
        [0.0, 1.0]
        >>> truncation_trajectory(torch.tensor([0.6, 0.4]), None, 0.5, "top", 0.0, 1)[-1].tolist()
        [1.0, 0.0]
    """
    rho = check_float("real_fraction", real_fraction, minimum=0.0, maximum=1.0)
    p0 = p_data.detach().to("cpu", torch.float64).reshape(-1)
    laws = [p0 / p0.sum()]
    for _ in range(rounds):
        p = laws[-1]
        laws.append(rho * laws[0] + (1 - rho) * truncate(p, p if r is None else r, fraction, rule))
    return laws


def predict_pool_round(rewards: Tensor, fraction: float, rule: str, *, labels: Optional[Tensor] = None,
                       class_names: Optional[Sequence[str]] = None, real_fraction: float = 0.0,
                       real_rewards: Optional[Tensor] = None, real_labels: Optional[Tensor] = None) -> dict[str, float]:
    """The ideal learner's next round under a pool selection by reward, from a round's probe candidates.

    The candidates' empirical law truncated by :func:`truncate`: ``predicted_curated_reward_mean``,
    ``predicted_reward_mean`` (mixed with the real data's, ``rho``), and with ``labels`` the
    ``predicted_curated_share_<name>`` and ``predicted_share_<name>``; with ``top``/``bottom``
    also ``selection_reward_sd = 0`` (the kept set is no draw given the pool). The same column
    names as :func:`~lightning_curate.theory.predict_round`, so the loop's fidelity reads them alike.

    Args:
        rewards: rewards of the candidates, any shape (``[N, K]`` from the loop).
        fraction, rule: the selection's.
        labels: optional class of every candidate (same number of entries as ``rewards``).
        class_names: the classes' names (their number sets the number of classes).
        real_fraction: ``rho``; ``real_rewards`` (and ``real_labels`` with labels) are needed when ``rho > 0``.

    Example:
        >>> import torch
        >>> predict_pool_round(torch.tensor([[0.0, 1.0], [2.0, 3.0]]), 0.5, "top")["predicted_reward_mean"]
        2.5
    """
    r = rewards.detach().to("cpu", torch.float64).reshape(-1)
    rho = check_float("real_fraction", real_fraction, minimum=0.0, maximum=1.0)
    if rho > 0 and real_rewards is None:
        raise ValueError("real_fraction > 0: pass real_rewards (the rewards of the real training data)")
    q = truncate(torch.ones_like(r), r, fraction, rule)

    def mix(real: float, synthetic: float) -> float:
        return synthetic if rho == 0.0 else rho * real + (1 - rho) * synthetic

    real_mean = float(real_rewards.double().mean()) if real_rewards is not None else math.nan
    curated = float((q * r).sum())
    out = {Col.PREDICTED_REWARD_MEAN: mix(real_mean, curated), Col.PREDICTED_CURATED_REWARD_MEAN: curated}
    if rule != "random":
        out[Col.SELECTION_REWARD_SD] = 0.0
    if labels is not None:
        lab = labels.detach().to("cpu").reshape(-1).long()
        if lab.numel() != r.numel():
            raise ValueError(f"labels must hold one label per candidate ({r.numel()}), got {lab.numel()}")
        names = list(class_names) if class_names else [str(i) for i in range(int(lab.max()) + 1)]
        c = len(names)
        shares = torch.zeros(c, dtype=torch.float64).index_add_(0, lab, q)
        real_shares = torch.zeros(c, dtype=torch.float64)
        if rho > 0:
            if real_labels is None:
                raise ValueError("real_fraction > 0 with labels: pass real_labels (the real training data's)")
            real_lab = real_labels.detach().to("cpu").reshape(-1).long()
            real_shares = torch.bincount(real_lab, minlength=c).double()[:c] / max(1, real_lab.numel())
        for i, name in enumerate(names):
            out[PREDICTED_SHARE(name)] = mix(float(real_shares[i]), float(shares[i]))
        for i, name in enumerate(names):
            out[PREDICTED_CURATED_SHARE(name)] = float(shares[i])
    return out
