"""Populations of curators: mixture laws, two-curator dynamics and adversarial curators.

A *population* is a list of :class:`AtomCurator` s; each slot is curated by one
curator drawn with probability ``pi_u`` (its normalised ``weight``). The kept
sample's law is the mixture of the per-curator curated laws::

    q = sum_u pi_u p H_u        (H_u: curator u's curation weights)

and an ideal learner with a fraction ``rho`` of real data iterates
``p_{t+1} = rho p_data + (1 - rho) q_t``. Each ``H_u`` comes from
:func:`lightning_curate.theory.curation_weights` (softmax), the best-of-K
order statistics (argmax) or ``1`` (uniform).

Two curators that each favour their own set (``A``, ``B``, disjoint) with a
two-level reward keep the law inside ``A``, ``B`` and the rest ``C``
proportional to ``p_data``, so the iteration reduces to a map of the two
shares ``(a, b)``: :func:`two_curator_map`, its fixed points
(:func:`two_curator_fixed_points`, closed form for ``K = 2`` in
:func:`two_curator_fixed_points_k2`), the invasion rates that decide
consensus against polarisation (:func:`invasion_rate`) and a classifier of a
trajectory's long run (:func:`classify_long_run`).

Example:
    >>> p = [0.5, 0.5]
    >>> crowd = [AtomCurator([1.0, 0.0], weight=1.0, num_candidates=2),
    ...          AtomCurator([0.0, 1.0], weight=1.0, num_candidates=2)]
    >>> population_curated_distribution(p, crowd).tolist()  # the two pulls cancel
    [0.5, 0.5]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from lightning_curate.theory.ideal_learner import empirical_curation_weights
from lightning_curate.theory.laws import curation_weights
from lightning_curate.utils.validation import check_beta, check_choice, check_float, check_int

__all__ = [
    "AtomCurator", "LONG_RUN", "adversarial_grid", "adversarial_population", "adversarial_threshold",
    "classify_long_run", "curator_weights", "empirical_population_weights", "invasion_rate",
    "population_curated_distribution", "population_trajectory", "two_curator_fixed_points",
    "two_curator_fixed_points_k2", "two_curator_map", "two_curator_population",
]

MODES = ("softmax", "argmax", "uniform")
LONG_RUN = ("consensus_a", "consensus_b", "polarised", "oscillation", "neither")


@dataclass(eq=False)
class AtomCurator:
    """One kind of curator: a reward per atom, a choice rule and a population weight.

    Args:
        rewards: reward of every atom of the finite support.
        beta: inverse temperature of the softmax choice.
        mode: ``"softmax"`` (Bradley-Terry), ``"argmax"`` (best-of-K) or ``"uniform"``.
        num_candidates: ``K``, candidates per slot.
        weight: unnormalised population weight (``pi_u = weight / sum of weights``).
        name: label for reports.

    Example:
        >>> AtomCurator([5.0, 0.0], beta=1.0, num_candidates=4, weight=0.9, name="honest").num_candidates
        4
    """

    rewards: Sequence[float] | Tensor
    beta: float = 1.0
    mode: str = "softmax"
    num_candidates: int = 4
    weight: float = 1.0
    name: str = ""
    _r: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        r = torch.as_tensor(self.rewards, dtype=torch.float64).flatten()
        if r.numel() == 0 or not torch.isfinite(r).all():
            raise ValueError(f"rewards must be a non-empty list of finite numbers, got {self.rewards!r}")
        self._r = r
        self.beta = check_beta(self.beta)
        self.mode = check_choice("mode", self.mode, MODES)
        self.num_candidates = check_int("num_candidates", self.num_candidates, minimum=1)
        self.weight = check_float("weight", self.weight, minimum=0.0)

    @property
    def r(self) -> Tensor:
        """The rewards as a float64 tensor."""
        return self._r


def _law(p, name: str = "p") -> Tensor:
    p = torch.as_tensor(p, dtype=torch.float64).flatten()
    if p.numel() == 0 or (p < 0).any() or not torch.isfinite(p).all() or abs(float(p.sum()) - 1) > 1e-9:
        raise ValueError(f"{name} must be a probability vector (non-negative, summing to 1)")
    return p


def _weights_of(curators: Sequence[AtomCurator], n: int) -> Tensor:
    if not curators:
        raise ValueError("curators must list at least one AtomCurator")
    for i, c in enumerate(curators):
        if not isinstance(c, AtomCurator):
            raise TypeError(f"curators[{i}] must be a AtomCurator, got {type(c).__name__}")
        if c.r.numel() != n:
            raise ValueError(f"curators[{i}] has {c.r.numel()} rewards but the law has {n} atoms")
    pi = torch.tensor([c.weight for c in curators], dtype=torch.float64)
    if float(pi.sum()) <= 0:
        raise ValueError("the curators' weights must not all be 0")
    return pi / pi.sum()


def curator_weights(p, curator: AtomCurator) -> Tensor:
    """``H_u``: the factor by which ``curator`` reweights each atom of ``p`` (``q_u = p H_u``).

    Example:
        >>> [round(h, 6) for h in curator_weights([0.5, 0.5], AtomCurator([1.0, 0.0], mode="argmax",
        ...                                                           num_candidates=2)).tolist()]
        [1.5, 0.5]
    """
    p = _law(p)
    if curator.mode == "uniform" or curator.num_candidates == 1:
        return torch.ones_like(p)
    if curator.mode == "argmax":
        return empirical_curation_weights(curator.r, curator.num_candidates, weights=p, mode="argmax")
    return curation_weights(p, curator.r, curator.num_candidates, curator.beta)


def population_curated_distribution(p, curators: Sequence[AtomCurator]) -> Tensor:
    """The population's curated law ``q = sum_u pi_u p H_u`` (float64, sums to 1)."""
    p = _law(p)
    pi = _weights_of(curators, p.numel())
    q = sum(float(w) * p * curator_weights(p, c) for w, c in zip(pi, curators) if w > 0)
    return q / q.sum()


def empirical_population_weights(rewards: Tensor, curators: Sequence[AtomCurator], weights=None) -> Tensor:
    """``sum_u pi_u H_u`` at every point of an empirical law, e.g. a round's ``N x K`` candidates.

    ``rewards [U, M]``: curator ``u``'s reward of each of the ``M`` points (the curators'
    own ``rewards`` vectors are not used, only their ``beta``, ``mode``, ``K`` and weight);
    ``weights``: the points' masses (default uniform). ``q = weights * H`` is the population's
    curated law of the round, the ideal learner's next model before real data is mixed in.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float64)
    if rewards.dim() != 2 or rewards.shape[0] != len(curators):
        raise ValueError(f"rewards must have shape [U, M] with U = {len(curators)} curators, "
                         f"got {tuple(rewards.shape)}")
    pi = _weights_of([AtomCurator(r, c.beta, c.mode, c.num_candidates, c.weight) for r, c in zip(rewards, curators)],
                     rewards.shape[1])
    total = sum(float(w) * empirical_curation_weights(r, c.num_candidates, c.beta, weights=weights, mode=c.mode)
                for w, r, c in zip(pi, rewards, curators) if w > 0)
    if not isinstance(total, Tensor):  # sum() of no terms is the int 0
        raise ValueError("no curator has a positive normalised weight")
    return total


def population_trajectory(p_data, curators: Sequence[AtomCurator], real_fraction: float = 0.0, rounds: int = 10,
                          p_init=None) -> Tensor:
    """Ideal learner ``p_{t+1} = rho p_data + (1 - rho) q_t`` for a population: ``[rounds + 1, n]``.

    Row 0 is ``p_init`` (default ``p_data``, the model after round 0).

    Example:
        >>> crowd = [AtomCurator([5.0] + [0.0] * 9, num_candidates=4)]
        >>> round(float(population_trajectory([0.1] * 10, crowd, rounds=1)[1, 0]), 3)
        0.338
    """
    rho = check_float("real_fraction", real_fraction, minimum=0.0, maximum=1.0)
    rounds = check_int("rounds", rounds, minimum=0)
    p_data = _law(p_data, "p_data")
    p = p_data if p_init is None else _law(p_init, "p_init")
    traj = [p]
    for _ in range(rounds):
        p = rho * p_data + (1 - rho) * population_curated_distribution(p, curators)
        traj.append(p)
    return torch.stack(traj)


# -- two curators with disjoint favourite sets ------------------------------------------------

def two_curator_population(weight_a: float, beta_a: float, beta_b: float, num_candidates: int = 4,
                           mode: str = "softmax", gap_a: float = 1.0, gap_b: float = 1.0) -> list[AtomCurator]:
    """The reduced two-curator population on the three atoms ``(A, B, C)``.

    AtomCurator ``a`` (weight ``weight_a``) gives ``gap_a`` to ``A`` and 0 elsewhere;
    curator ``b`` (weight ``1 - weight_a``) gives ``gap_b`` to ``B``.
    """
    w = check_float("weight_a", weight_a, minimum=0.0, maximum=1.0)
    return [AtomCurator([gap_a, 0.0, 0.0], beta_a, mode, num_candidates, w, "a"),
            AtomCurator([0.0, gap_b, 0.0], beta_b, mode, num_candidates, 1.0 - w, "b")]


def two_curator_map(a: float, b: float, curators: Sequence[AtomCurator], real_fraction: float = 0.0,
                    data_a: float = 0.0, data_b: float = 0.0) -> tuple[float, float]:
    """One ideal-learner step of the shares ``(a, b)`` of the two favoured sets.

    Within ``A``, ``B`` and ``C`` every atom has the same rewards for both curators,
    so curation scales each set as a whole and the full iteration is this map on
    the 3-atom law ``(a, b, 1 - a - b)`` (``curators`` from :func:`two_curator_population`).
    """
    c = 1.0 - a - b
    if a < 0 or b < 0 or c < -1e-12:
        raise ValueError(f"shares must satisfy a, b >= 0 and a + b <= 1, got a={a}, b={b}")
    q = population_curated_distribution([a, b, max(c, 0.0)], curators)
    rho = real_fraction
    return rho * data_a + (1 - rho) * float(q[0]), rho * data_b + (1 - rho) * float(q[1])


def _jacobian(f: Callable[[float, float], tuple[float, float]], a: float, b: float, h: float = 1e-6) -> Tensor:
    """Jacobian of ``f`` at ``(a, b)`` by one-sided differences.

    The two directions stay in the triangle (at a corner the coordinate axes may leave it).
    """
    def inside(x: float, y: float) -> bool:
        return x >= 0 and y >= 0 and x + y <= 1
    dirs = [(h, 0.0), (-h, 0.0), (0.0, h), (0.0, -h), (h, -h), (-h, h)]
    ok = [d for d in dirs if inside(a + d[0], b + d[1])]
    d1 = ok[0]
    d2 = next(d for d in ok[1:] if abs(d1[0] * d[1] - d1[1] * d[0]) > 0)
    f0 = torch.tensor(f(a, b), dtype=torch.float64)
    cols = [(torch.tensor(f(a + d[0], b + d[1]), dtype=torch.float64) - f0) for d in (d1, d2)]
    steps = torch.tensor([d1, d2], dtype=torch.float64).T
    return torch.stack(cols, dim=1) @ torch.linalg.inv(steps)


def two_curator_fixed_points(curators: Sequence[AtomCurator], real_fraction: float = 0.0, data_a: float = 0.0,
                             data_b: float = 0.0, grid: int = 6, tol: float = 1e-10) -> list[dict]:
    """Fixed points ``(a, b)`` of :func:`two_curator_map` on the triangle, found numerically.

    Newton's method from a grid of starts (and the corners), deduplicated. Each
    point is a dict ``{"a", "b", "spectral_radius", "stable"}``: ``stable`` when the
    map's Jacobian there has spectral radius below 1.
    """
    f = lambda x, y: two_curator_map(x, y, curators, real_fraction, data_a, data_b)  # noqa: E731
    starts = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)]
    starts += [(i / grid, j / grid) for i in range(1, grid) for j in range(1, grid) if i + j <= grid]
    found: list[tuple[float, float]] = []
    for a, b in starts:
        for _ in range(60):
            fa, fb = f(a, b)
            res = torch.tensor([fa - a, fb - b], dtype=torch.float64)
            if float(res.abs().max()) < tol:
                break
            jac = _jacobian(f, a, b) - torch.eye(2, dtype=torch.float64)
            try:
                step = torch.linalg.solve(jac, res)
            except RuntimeError:
                step = -res
            a, b = min(max(a - float(step[0]), 0.0), 1.0), min(max(b - float(step[1]), 0.0), 1.0)
            if a + b > 1:
                a, b = a / (a + b), b / (a + b)
        fa, fb = f(a, b)
        if max(abs(fa - a), abs(fb - b)) < 1e-8 and all(abs(a - x) + abs(b - y) > 1e-6 for x, y in found):
            found.append((a, b))
    points = []
    for a, b in sorted(found):
        radius = float(torch.linalg.eigvals(_jacobian(f, a, b)).abs().max())
        points.append({"a": a, "b": b, "spectral_radius": radius, "stable": radius < 1 - 1e-9})
    return points


def two_curator_fixed_points_k2(weight_a: float, delta_a: float, delta_b: float) -> dict:
    """Fixed points of the two-curator map in closed form for ``K = 2`` and no real data.

    The map is ``a' = a (1 + alpha (1 - a) - beta' b)``, ``b' = b (1 + beta' (1 - b) - alpha a)``
    with ``alpha = pi_a delta_a``, ``beta' = pi_b delta_b`` and ``delta = tanh(beta gap / 2)``
    (softmax), 1 (argmax) or 0 (uniform).

    Fixed points: ``(0, 0)``, ``(1, 0)``, ``(0, 1)``, and the whole segment ``a + b = 1`` when
    ``alpha = beta'``. ``(1, 0)`` is stable iff ``alpha > beta'``: the larger ``pi delta`` takes all.

    Example:
        >>> two_curator_fixed_points_k2(0.6, 0.5, 0.5)["winner"]
        'a'
    """
    alpha, beta_ = weight_a * delta_a, (1 - weight_a) * delta_b
    winner = "a" if alpha > beta_ else "b" if beta_ > alpha else "tie"
    return {"alpha": alpha, "beta": beta_, "winner": winner,
            "points": [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)],
            "stable": {(1.0, 0.0): alpha > beta_, (0.0, 1.0): beta_ > alpha, (0.0, 0.0): False}}


def invasion_rate(curators: Sequence[AtomCurator], invader: int) -> float:
    """Growth factor per round of a rare favourite set (no real data).

    The set favoured by ``curators[invader]`` (of 2) is rare and the other curator's
    set holds all the mass.

    ``lambda = pi_inv K w_inv / (w_inv + K - 1) + pi_res K / (1 + (K - 1) w_res)`` for softmax
    (``w = exp(beta gap)``; argmax: ``pi_inv K``). Consensus on the resident's set is
    stable iff ``lambda < 1``; when both rates exceed 1 the loop polarises.
    """
    check_int("invader", invader, minimum=0, maximum=1)
    res = 1 - invader
    a, b = (1.0, 0.0) if res == 0 else (0.0, 1.0)
    # H at the rare set's atoms when the resident set holds everything: the curated law's
    # weights at the boundary (a rare atom of mass 0 still gets its H from the race form).
    p = torch.tensor([a, b, 0.0], dtype=torch.float64)
    pi = _weights_of(curators, 3)
    rate = 0.0
    for w, c in zip(pi, curators):
        if c.mode == "argmax" and c.num_candidates > 1:  # the rare atom wins iff it beats the resident
            diff = float(c.r[invader] - c.r[res])
            h = float(c.num_candidates) if diff > 0 else 1.0 if diff == 0 else 0.0
        else:
            h = float(curator_weights(p, c)[invader])
        rate += float(w) * h
    return rate


def classify_long_run(trajectory: Tensor, floor_a: float = 0.0, floor_b: float = 0.0, tol: float = 1e-3) -> str:
    """Long-run behaviour of a trajectory ``[T, 2]`` of the shares ``(a, b)``.

    ``oscillation``: the last steps alternate (``|x_T - x_{T-2}| < tol`` but
    ``|x_T - x_{T-1}| > tol``); ``consensus_a`` / ``consensus_b``: one set keeps mass
    and the other is at its real-data floor (within ``tol``); ``polarised``: both keep
    mass; ``neither``: both at their floor.
    """
    traj = torch.as_tensor(trajectory, dtype=torch.float64)
    if traj.dim() != 2 or traj.shape[1] != 2 or traj.shape[0] < 3:
        raise ValueError(f"trajectory must have shape [T >= 3, 2], got {tuple(traj.shape)}")
    last, prev, prev2 = traj[-1], traj[-2], traj[-3]
    if float((last - prev2).abs().max()) < tol < float((last - prev).abs().max()):
        return "oscillation"
    keep_a, keep_b = float(last[0]) > floor_a + tol, float(last[1]) > floor_b + tol
    return {(True, True): "polarised", (True, False): "consensus_a", (False, True): "consensus_b",
            (False, False): "neither"}[(keep_a, keep_b)]


# -- adversarial curators ----------------------------------------------------------------------

def adversarial_population(honest: Sequence[float], epsilon: float, kind: str = "target",
                           target: Optional[Sequence[float]] = None, **choice) -> list[AtomCurator]:
    """Honest curators (weight ``1 - epsilon``) and adversaries (weight ``epsilon``).

    ``kind="negated"``: the adversaries' reward is ``-honest``; ``kind="target"``: it is
    ``target`` (a reward favouring a mode the honest curators do not want). ``choice``
    (``beta``, ``mode``, ``num_candidates``) is shared by both.
    """
    eps = check_float("epsilon", epsilon, minimum=0.0, maximum=1.0)
    check_choice("kind", kind, ("negated", "target"))
    r = torch.as_tensor(honest, dtype=torch.float64)
    if kind == "target":
        if target is None:
            raise ValueError("kind='target' needs the adversaries' reward vector target")
        adv = torch.as_tensor(target, dtype=torch.float64)
    else:
        adv = -r
    return [AtomCurator(r, weight=1 - eps, name="honest", **choice),
            AtomCurator(adv, weight=eps, name="adversary", **choice)]


def adversarial_grid(p_data, honest: Sequence[float], epsilons: Sequence[float], real_fractions: Sequence[float],
                     rounds: int = 10, kind: str = "target", target: Optional[Sequence[float]] = None,
                     **choice) -> dict[str, Tensor]:
    """Ideal learner after ``rounds`` rounds on an ``(epsilon, rho)`` grid.

    Returns ``honest_reward`` and ``adversary_reward`` (``E_{p_T}`` of each reward, ``[E, R]``)
    and ``law`` (``p_T``, ``[E, R, n]``).
    """
    p_data = _law(p_data, "p_data")
    adv_r = -torch.as_tensor(honest, dtype=torch.float64) if kind == "negated" else target
    laws = torch.stack([torch.stack([
        population_trajectory(p_data, adversarial_population(honest, e, kind, target, **choice), rho, rounds)[-1]
        for rho in real_fractions]) for e in epsilons])
    hr = torch.as_tensor(honest, dtype=torch.float64)
    ar = torch.as_tensor(adv_r, dtype=torch.float64)
    return {"honest_reward": laws @ hr, "adversary_reward": laws @ ar, "law": laws}


def adversarial_threshold(p_data, honest: Sequence[float], grows: Callable[[Tensor, Tensor], bool],
                          real_fraction: float = 0.0, rounds: int = 10, kind: str = "target",
                          target: Optional[Sequence[float]] = None, tol: float = 1e-4, **choice) -> float:
    """Smallest ``epsilon`` at which ``grows(p_T, p_data)`` holds, by bisection on ``[0, 1]``.

    ``grows`` is the adversaries' success test, e.g. ``lambda pT, p0: pT[4] > p0[4]`` (the
    targeted mode's share grew). Assumes success is monotone in ``epsilon`` (checked at both
    ends); returns ``math.inf`` when even ``epsilon = 1`` fails.
    """
    p_data = _law(p_data, "p_data")

    def success(eps: float) -> bool:
        crowd = adversarial_population(honest, eps, kind, target, **choice)
        return bool(grows(population_trajectory(p_data, crowd, real_fraction, rounds)[-1], p_data))

    if success(0.0):
        return 0.0
    if not success(1.0):
        return math.inf
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if success(mid) else (mid, hi)
    return hi
