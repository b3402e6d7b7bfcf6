"""The reproduction of two-reward curation (Falahati, Mohammadi Amiri, Larson, Golab, ICML 2026).

Each slot is curated by reward ``r1`` with probability ``q`` and by ``r2`` otherwise; the paper proves
that, "under certain conditions", retraining converges to a stable mixture over both rewards'
high-reward regions that "satisfies a weighted Nash bargaining solution" (its abstract). We could
read only the abstract, so the bargaining problem compared against is the one we derive here.

**The weighted Nash bargaining limit.** With a Bradley-Terry choice among ``K`` candidates, as
``K -> infinity`` the curated law of a reward ``r`` is ``p e^{beta r} / Z_r(p)`` with
``Z_r(p) = E_p[e^{beta r}]`` (Ferbach et al., 2024), so the two-reward iteration is
``p' = q p e^{beta r1} / Z_1(p) + (1 - q) p e^{beta r2} / Z_2(p)``. Its fixed points with support ``S``
satisfy ``q e^{beta r1(x)} / Z_1 + (1 - q) e^{beta r2(x)} / Z_2 = 1`` on ``S``: exactly the KKT conditions
of the weighted Nash bargaining problem

    maximise  q log Z_1(p) + (1 - q) log Z_2(p)  over the simplex,

(the multiplier is 1, since the left side averages to ``q + (1 - q)`` under ``p``; off ``S`` the left
side is at most 1 at the maximum). The objective depends on ``p`` only through the point
``(Z_1, Z_2)``, which ranges over the convex hull of the atoms' points ``(e^{beta r1(x)}, e^{beta r2(x)})``;
the maximum lies on an edge of that hull, so :func:`weighted_nash_bargaining` solves it exactly,
edge by edge in closed form. For ``r1 = g 1_A``, ``r2 = g 1_B`` it is the mass
``a* = (q E - (1 - q)) / (E - 1)`` on ``A`` (``E = e^{beta g}``): interior, a mixture, only when
``E > max(q / (1 - q), (1 - q) / q)``, which we take for the paper's "certain conditions".

With a finite ``K`` the curated law differs (:func:`lightning_curate.theory.curation_weights`), and
so does the limit: :func:`lightning_curate.theory.population.population_trajectory` iterates the exact
finite-``K`` map, which the loop follows. The rows set the loop's limit (the package's
``CurationModule`` with two ``Curator``\\ s on the exact categorical learner) beside both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from lightning_curate.data import Atoms, BlendingDataModule
from lightning_curate.experiments.field_common import FieldResult, MemoryStore, one_thread
from lightning_curate.loop import CurationModule, Curator
from lightning_curate.models import ExactCategorical
from lightning_curate.plots import save_figure
from lightning_curate.plots.common import new_figure
from lightning_curate.rewards import AtomReward
from lightning_curate.theory.population import AtomCurator, population_trajectory
from lightning_curate.utils.seeding import derive_seed

__all__ = ["TR_CLAIM", "TR_PAPER", "TwoRewardSetting", "exact_limit", "loop_run", "nash_bargaining_map",
           "nash_objective", "two_rewards", "weighted_nash_bargaining"]

TR_PAPER = ('Falahati, Mohammadi Amiri, Larson, Golab, "Curated Synthetic Data Doesn\'t Have to Collapse: A '
            'Theoretical Study of Generative Retraining with Pluralistic Preferences", ICML 2026 (arXiv:2605.07724)')
TR_CLAIM = ('"the model converges to a stable distribution that allocates probability mass across competing '
            'high-reward regions" and "satisfies a weighted Nash bargaining solution" (abstract; the bargaining '
            "problem is our derivation, see the module)")


def nash_objective(p: Tensor, u: Tensor, v: Tensor, q: float) -> Tensor:
    """``q log(p . u) + (1 - q) log(p . v)`` for laws ``p`` ``[..., n]`` (float64)."""
    return q * torch.log(p @ u) + (1 - q) * torch.log(p @ v)


def weighted_nash_bargaining(rewards_1: Sequence[float], rewards_2: Sequence[float], beta: float, q: float,
                             p_data: Optional[Sequence[float]] = None) -> Tensor:
    """The law over the atoms maximising ``q log E_p[e^{beta r1}] + (1 - q) log E_p[e^{beta r2}]``, exactly.

    The maximum over the simplex is the maximum over the hull's edges ``(i, j)``, each in closed form
    (a concave function of the mass ``a`` on ``i``, its root clipped to ``[0, 1]``). Atoms with the same
    pair of rewards are one point: their mass is split in proportion to ``p_data`` (default uniform), as
    the iteration from ``p_data`` splits it.

    Example:
        >>> p = weighted_nash_bargaining([3.0, 0.0], [0.0, 3.0], beta=1.0, q=0.7)
        >>> e = math.exp(3.0)
        >>> round(float(p[0]), 9) == round((0.7 * e - 0.3) / (e - 1), 9)
        True
    """
    r1 = torch.as_tensor(rewards_1, dtype=torch.float64)
    r2 = torch.as_tensor(rewards_2, dtype=torch.float64)
    if r1.shape != r2.shape or r1.dim() != 1 or r1.numel() == 0:
        raise ValueError(f"rewards_1 and rewards_2 must be two vectors of one length, got {tuple(r1.shape)} and "
                         f"{tuple(r2.shape)}")
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    prior = torch.full_like(r1, 1.0 / r1.numel()) if p_data is None else torch.as_tensor(p_data, dtype=torch.float64)
    points = sorted({(float(a), float(b)) for a, b in zip(r1, r2)})
    u = [math.exp(beta * a) for a, _ in points]
    v = [math.exp(beta * b) for _, b in points]
    best = (-math.inf, 0, 0, 1.0)
    for i in range(len(points)):
        for j in range(len(points)):
            du, dv = u[i] - u[j], v[i] - v[j]
            a = 1.0 if du * dv == 0 else min(1.0, max(0.0, -(q * du * v[j] + (1 - q) * dv * u[j]) / (du * dv)))
            value = q * math.log(u[j] + a * du) + (1 - q) * math.log(v[j] + a * dv)
            if value > best[0]:
                best = (value, i, j, a)
    _, i, j, a = best
    p = torch.zeros_like(r1)
    for point, mass in ((points[i], a), (points[j], 1.0 - a)):
        members = (r1 == point[0]) & (r2 == point[1])
        p[members] += mass * prior[members] / prior[members].sum()
    return p


def nash_bargaining_map(p: Tensor, rewards_1: Tensor, rewards_2: Tensor, beta: float, q: float) -> Tensor:
    """One step of the ``K -> infinity`` two-reward iteration, ``q p e^{beta r1} / Z_1 + (1 - q) p e^{beta r2} / Z_2``.

    Example:
        >>> nash_bargaining_map(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.0]),
        ...                     torch.tensor([0.0, 1.0]), beta=0.0, q=0.3).tolist()
        [0.5, 0.5]
    """
    w1 = p * torch.exp(beta * rewards_1.double())
    w2 = p * torch.exp(beta * rewards_2.double())
    return q * w1 / w1.sum() + (1 - q) * w2 / w2.sum()


@dataclass
class TwoRewardSetting:
    """The atoms, the two rewards, the curators' mix and the loop's size."""

    seeds: list[int]
    rounds: int
    ks: tuple[int, ...] = (4, 16)  # the candidates a slot, one loop run per value
    p_data: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    rewards_1: tuple[float, ...] = (1.0, 0.0, 0.5, 0.0)  # A: r1's favourite; C: a compromise; D: neither
    rewards_2: tuple[float, ...] = (0.0, 1.0, 0.5, 0.0)  # B: r2's favourite
    gamma: float = 3.0  # the rewards' scale (AtomReward's gamma)
    beta: float = 1.0
    q: float = 0.7  # the share of slots curated by r1
    num_slots: int = 4000


def _curators(setting: TwoRewardSetting, k: int) -> list[AtomCurator]:
    r1 = [setting.gamma * r for r in setting.rewards_1]
    r2 = [setting.gamma * r for r in setting.rewards_2]
    return [AtomCurator(r1, setting.beta, "softmax", k, setting.q, "r1"),
            AtomCurator(r2, setting.beta, "softmax", k, 1 - setting.q, "r2")]


def exact_limit(setting: TwoRewardSetting, k: int, rounds: Optional[int] = None) -> Tensor:
    """Our exact theory: the ideal learner's law after ``rounds`` (default the setting's) of the finite-``K`` map."""
    return population_trajectory(list(setting.p_data), _curators(setting, k), rounds=rounds or setting.rounds)


def loop_run(setting: TwoRewardSetting, k: int, seed: int) -> Tensor:
    """The package's loop, round by round without the trainer: ``[rounds + 1, atoms]`` model laws.

    ``Atoms`` (real data in exact proportions at round 0, none after), ``BlendingDataModule`` (replace),
    ``ExactCategorical`` fitted in closed form, and ``CurationModule`` with the two ``Curator``\\ s.
    """
    n, atoms = setting.num_slots, len(setting.p_data)
    source = Atoms(probs=list(setting.p_data), num_train=n, num_heldout=n, seed=seed)
    dm = BlendingDataModule(source, real_fraction=0.0, policy="replace", batch_size=n, seed=seed)
    store = MemoryStore()
    dm.attach(store, lambda epoch: epoch)  # type: ignore[arg-type]  # the data module only reads rounds
    curators = [Curator(AtomReward(list(setting.rewards_1), gamma=setting.gamma), beta=setting.beta,
                        weight=setting.q, name="r1"),
                Curator(AtomReward(list(setting.rewards_2), gamma=setting.gamma), beta=setting.beta,
                        weight=1 - setting.q, name="r2")]
    module = CurationModule(ExactCategorical(num_atoms=atoms), AtomReward(list(setting.rewards_1), gamma=setting.gamma),
                            num_slots=n, num_candidates=k, preview_size=0, backend="torch", curators=curators)
    laws = []
    for t in range(setting.rounds + 1):
        module.generator.fit(dm.dataset_for_round(t).tensors[0])
        laws.append(module.generator.probs.double().clone())
        if t < setting.rounds:
            store.rounds[t] = module.curate_round(t, seed=derive_seed(seed, "round", t)).tensors
    return torch.stack(laws)


def _plot(runs: dict[int, list[Tensor]], theory: dict[int, Tensor], nbs: Tensor, setting: TwoRewardSetting,
          path: Path) -> Path:
    fig = new_figure(4.2 * len(runs), 3.6)
    names = ["A (r1)", "B (r2)", "C (both 1/2)", "D (neither)"]
    colors = ["#d62728", "#1f77b4", "#2ca02c", "#7f7f7f"]
    rounds = list(range(setting.rounds + 1))
    for i, (k, laws) in enumerate(runs.items()):
        ax = fig.add_subplot(1, len(runs), i + 1)
        mean = torch.stack(laws).mean(0)
        for a in range(mean.shape[1]):
            ax.plot(rounds, mean[:, a].tolist(), "o", ms=3, color=colors[a], label=f"loop: {names[a]}")
            ax.plot(rounds, theory[k][:, a].tolist(), "-", lw=1, color=colors[a])
            ax.axhline(float(nbs[a]), color=colors[a], ls=":", lw=1.2)
        ax.set_xlabel("round")
        ax.set_ylabel("share of the atom")
        ax.set_title(f"K = {k}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Two-reward curation, q = {setting.q}: the loop (dots, mean of {len(setting.seeds)} seeds),\nour "
                 "exact theory (lines), the weighted Nash bargaining solution (dotted)", fontsize=9)
    return save_figure(fig, path)


def two_rewards(out: Path, *, quick: bool = False, seeds: Optional[list[int]] = None,
                setting: Optional[TwoRewardSetting] = None) -> FieldResult:
    """The loop's limit under two-reward curation beside the weighted Nash bargaining mixture and our theory.

    Writes ``out/two_rewards.png``.
    """
    setting = setting or TwoRewardSetting(seeds=seeds or list(range(5 if quick else 10)), rounds=25 if quick else 40)
    result = FieldResult("two_rewards", "Two-reward curation: the limit against weighted Nash bargaining", TR_PAPER,
                         f"atoms with p_data {setting.p_data}, r1 = {setting.gamma} x {setting.rewards_1}, r2 = "
                         f"{setting.gamma} x {setting.rewards_2}, beta {setting.beta}, q = {setting.q}, K in "
                         f"{setting.ks}, {setting.num_slots} slots a round, real_fraction 0, {setting.rounds} rounds, "
                         f"seeds {setting.seeds[0]}..{setting.seeds[-1]}; the package's CurationModule with two "
                         "Curators on ExactCategorical")
    r1 = torch.tensor(setting.rewards_1, dtype=torch.float64) * setting.gamma
    r2 = torch.tensor(setting.rewards_2, dtype=torch.float64) * setting.gamma
    nbs = weighted_nash_bargaining(r1.tolist(), r2.tolist(), setting.beta, setting.q, setting.p_data)
    with one_thread():
        runs = {k: [loop_run(setting, k, s) for s in setting.seeds] for k in setting.ks}
    long_run = {k: exact_limit(setting, k, rounds=max(100, setting.rounds)) for k in setting.ks}
    theory = {k: traj[: setting.rounds + 1] for k, traj in long_run.items()}
    limit = {k: traj[-1] for k, traj in long_run.items()}
    shown = lambda p: "(" + ", ".join(f"{x:.3f}" for x in p.tolist()) + ")"  # noqa: E731
    for k in setting.ks:
        final = torch.stack([law[-1] for law in runs[k]])
        # the standard error of the seeds' mean: their spread, and at least one round's sampling noise
        ideal = theory[k][-1]
        sampling = ideal * (1 - ideal) / (setting.num_slots * final.shape[0])
        spread = final.var(0) if final.shape[0] > 1 else torch.zeros_like(ideal)  # one seed: no spread to read
        se = (spread / final.shape[0] + sampling).sqrt()
        mean = final.mean(0)
        dev = ((mean - ideal).abs() / se.clamp_min(1e-12)).max()
        result.add(f"K={k}: the loop's law at round {setting.rounds} is our exact theory's, within 5 standard errors "
                   "of the seeds' mean [ours beside ours]", bool(dev <= 5.0),
                   f"loop {shown(mean)}, theory {shown(theory[k][-1])}, largest deviation {float(dev):.2f} se")
        mixed = bool(mean[0] >= 0.05 and mean[1] >= 0.05)
        result.add(f"K={k}: the limit is a mixture of both rewards' favourites (each keeps >= 5%) [paper: {TR_CLAIM}]",
                   mixed, f"A {float(mean[0]):.3f}, B {float(mean[1]):.3f}")
        gap = float((mean - nbs).abs().max())
        theory_gap = float((limit[k] - nbs).abs().max())
        result.add(f"K={k}: the loop's law against the weighted Nash bargaining solution (our derivation, K -> "
                   "infinity)", None, f"NBS {shown(nbs)}, largest gap {gap:.3f}; the exact theory's limit "
                   f"{shown(limit[k])} is {theory_gap:.3f} from it")
    k_max = max(setting.ks)
    final = torch.stack([law[-1] for law in runs[k_max]]).mean(0)
    result.add(f"K={k_max}: the loop's limit is within 0.03 of the weighted Nash bargaining solution (every atom) "
               f"[paper: {TR_CLAIM}]", float((final - nbs).abs().max()) <= 0.03,
               f"loop {shown(final)}, NBS {shown(nbs)}")
    gaps = [float((limit[k] - nbs).abs().max()) for k in sorted(setting.ks)]
    result.add("the exact theory's limit approaches the Nash bargaining solution as K grows (its largest gap falls)",
               all(b < a for a, b in zip(gaps, gaps[1:])),
               ", ".join(f"K={k}: {g:.3f}" for k, g in zip(sorted(setting.ks), gaps)))
    out.mkdir(parents=True, exist_ok=True)
    result.figures.append(_plot(runs, theory, nbs, setting, out / "two_rewards.png"))
    return result
