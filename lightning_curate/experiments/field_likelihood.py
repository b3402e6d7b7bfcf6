"""The reproduction of likelihood-ranked selection in a self-consuming loop: which share of a minority survives.

The self-consuming diffusion work with likelihood-ranked selection (2026) ranks a pool of the
model's own samples by the model's own likelihood (an ELBO-style score for a diffusion model) and
keeps the top-k, a random k or the bottom-k, on imbalanced 2D mixtures; the claim checked here is
the ordering of what survives of the minority after one generation: bottom-k keeps the most,
random-k about its share, top-k the least (a minority lives where the model's density is low).

Here the model is one of the package's generators with an exact log-likelihood
(:meth:`~lightning_curate.models.Generator.log_prob`): a ``KDELearner`` (closed form) and a small
``FlowMatching`` (the ODE's change of variables, :mod:`lightning_curate.models.likelihood`, the
flow counterpart of a diffusion model's ELBO). One generation: fit the model on real data, draw a
pool from it, keep half the pool by each rule, refit a fresh model on the kept half, and measure the
refitted model's minority mass. The top and bottom rules are the loop's own
(:func:`~lightning_curate.loop.selection.kept_mask`, what ``PoolFraction`` keeps: ties go to the
lower index), so the reproduction exercises the package's rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from lightning_curate.experiments.field_common import FieldResult, median, one_thread, quartiles
from lightning_curate.loop.selection import kept_mask
from lightning_curate.models import FlowMatching, Generator, KDELearner, MLPVelocity
from lightning_curate.plots import save_figure
from lightning_curate.plots.common import new_figure
from lightning_curate.utils.seeding import derive_seed

__all__ = ["LS_CLAIM", "LS_PAPER", "RULES", "LikelihoodSetting", "likelihood_selection", "minority_retention",
           "mixture_sample", "select_by_log_prob"]

LS_PAPER = ("self-consuming diffusion with likelihood-ranked selection (2026); we could not find the paper "
            "itself, so its figures are not beside ours")
LS_CLAIM = ("after one generation, bottom-k selection by the model's own likelihood keeps the most minority "
            "mass, random-k the middle, top-k the least")
RULES = ("bottom", "random", "top")


@dataclass
class LikelihoodSetting:
    """The imbalanced mixture, the pool and the learners of the likelihood-selection reproduction."""

    seeds: list[int]
    flow_seeds: list[int]  # the flow's seeds (it trains: fewer)
    minority: float = 0.1  # p_data's minority weight
    centre: float = 2.0  # the two modes at (-centre, 0) (majority) and (centre, 0) (minority)
    std: float = 0.5
    n_real: int = 1000
    pool: int = 2000
    keep: float = 0.5  # the share of the pool kept
    measure: int = 20000  # samples of a refitted model to measure its minority mass
    bandwidth: float = 0.3  # the KDE's kernel (fixed: Scott's would widen with the kept set's spread)
    flow_steps: int = 1500  # optimizer steps of a flow's fit
    learners: tuple[str, ...] = field(default=("kde", "flow"))


def mixture_sample(n: int, setting: LikelihoodSetting, generator: torch.Generator) -> Tensor:
    """``n`` points of ``p_data``: the majority mode at ``(-centre, 0)``, the minority at ``(centre, 0)``."""
    minority = torch.rand(n, generator=generator) < setting.minority
    centres = torch.where(minority, setting.centre, -setting.centre)
    x = torch.randn(n, 2, generator=generator) * setting.std
    x[:, 0] += centres
    return x


def select_by_log_prob(log_prob: Tensor, k: int, rule: str, generator: torch.Generator) -> Tensor:
    """The indices of the ``k`` kept points: the highest (``top``), lowest (``bottom``) or a random ``k``.

    ``top`` and ``bottom`` keep the set :class:`~lightning_curate.loop.PoolFraction` keeps
    (:func:`~lightning_curate.loop.selection.kept_mask`: ties go to the lower index), returned in rank
    order (best first, the order the refit is fed). ``random`` is a uniform ``k``-subset by ``generator``.

    Example:
        >>> select_by_log_prob(torch.tensor([0.0, 3.0, 1.0, 2.0]), 2, "top", torch.Generator()).tolist()
        [1, 3]
    """
    if rule == "random":
        return torch.randperm(log_prob.numel(), generator=generator)[:k]
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    kept = kept_mask(log_prob, k, rule).nonzero().flatten()
    return kept[torch.sort(log_prob[kept], descending=rule == "top", stable=True).indices]


def _fit(learner: str, x: Tensor, setting: LikelihoodSetting, seed: int) -> Generator:
    """A fresh model of kind ``learner`` fitted on ``x``: the KDE in closed form, the flow by Adam steps."""
    if learner == "kde":
        kde = KDELearner(dim=2, bandwidth=setting.bandwidth)
        kde.fit(x)
        return kde
    torch.manual_seed(seed)  # the flow's initial weights and its training draws (loss uses the global RNG)
    flow = FlowMatching(MLPVelocity(dim=2, hidden=64, depth=2), [2], solver="rk4", steps=8, ema_decay=0.0)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, setting.flow_steps)
    for _ in range(setting.flow_steps):
        batch = x[torch.randint(0, x.shape[0], (256,))]
        opt.zero_grad()
        flow.loss(batch).backward()
        opt.step()
        sched.step()
    return flow.eval()


def _minority_mass(model: Generator, setting: LikelihoodSetting, seed: int) -> float:
    """The model's mass on the minority's side (``x_0 > 0``), from ``measure`` samples."""
    x = model.sample(setting.measure, generator=torch.Generator().manual_seed(seed))
    return float((x[:, 0] > 0).double().mean())


def minority_retention(learner: str, setting: LikelihoodSetting, seed: int) -> dict[str, float]:
    """One generation per rule from one fitted model: the refitted model's minority mass over ``p_data``'s.

    Returns ``{"model": the first model's retention, rule: the refitted model's retention}``: 1 keeps the
    minority's share of ``p_data``, 0 loses it.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "likelihood", learner))
    real = mixture_sample(setting.n_real, setting, gen)
    model = _fit(learner, real, setting, derive_seed(seed, "fit", 0))
    out = {"model": _minority_mass(model, setting, derive_seed(seed, "measure", 0)) / setting.minority}
    pool = model.sample(setting.pool, generator=torch.Generator().manual_seed(derive_seed(seed, "pool", 0)))
    log_prob = model.log_prob(pool)
    k = round(setting.keep * setting.pool)
    for i, rule in enumerate(RULES):
        kept = pool[select_by_log_prob(log_prob, k, rule, torch.Generator().manual_seed(derive_seed(seed, rule)))]
        refit = _fit(learner, kept, setting, derive_seed(seed, "fit", i + 1))
        out[rule] = _minority_mass(refit, setting, derive_seed(seed, "measure", i + 1)) / setting.minority
    return out


def _plot(measured: dict[str, list[dict[str, float]]], setting: LikelihoodSetting, path: Path) -> Path:
    """Per learner, the retention of each rule: the median over seeds, its quartiles, and every seed."""
    fig = new_figure(4.2 * len(measured), 3.4)
    colors = {"bottom": "#2ca02c", "random": "#7f7f7f", "top": "#d62728"}
    for i, (learner, runs) in enumerate(measured.items()):
        ax = fig.add_subplot(1, len(measured), i + 1)
        for j, rule in enumerate(RULES):
            values = [run[rule] for run in runs]
            lo, hi = quartiles(values)
            ax.bar(j, median(values), color=colors[rule], alpha=0.6, width=0.6)
            ax.errorbar(j, median(values), yerr=[[median(values) - lo], [hi - median(values)]], color="k",
                        capsize=4, lw=1)
            ax.plot([j] * len(values), values, "k.", ms=3, alpha=0.5)
        ax.axhline(1.0, color="k", lw=0.8, ls="--", label="p_data's share")
        ax.set_xticks(range(len(RULES)), [f"{r}-k" for r in RULES])
        ax.set_ylabel("minority retention (mass / p_data's)")
        title = "KDE (fixed bandwidth)" if learner == "kde" else "flow matching (exact divergence)"
        ax.set_title(f"{title}, {len(runs)} seeds", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(f"Likelihood-ranked selection: keep {setting.keep:.0%} of a pool of {setting.pool}, minority "
                 f"{setting.minority:.0%}", fontsize=10)
    return save_figure(fig, path)


def likelihood_selection(out: Path, *, quick: bool = False, seeds: Optional[list[int]] = None,
                         setting: Optional[LikelihoodSetting] = None) -> FieldResult:
    """Minority retention after one generation under bottom-, random- and top-k by the model's log-likelihood.

    One row per learner: the ordering claim, decided on the medians over seeds (and every seed's count
    beside it). Writes ``out/likelihood_selection.png``.
    """
    if setting is None:
        chosen = seeds or list(range(10 if quick else 20))
        setting = LikelihoodSetting(seeds=chosen, flow_seeds=chosen[: 2 if quick else 5])
    result = FieldResult("likelihood_selection", "Likelihood-ranked selection: the minority's retention", LS_PAPER,
                         f"p_data = {1 - setting.minority:.0%} N((-{setting.centre}, 0), {setting.std}^2 I) + "
                         f"{setting.minority:.0%} N(({setting.centre}, 0), {setting.std}^2 I), {setting.n_real} real "
                         f"points, a pool of {setting.pool} of the model's samples, {setting.keep:.0%} kept by "
                         f"log_prob, a fresh model refitted on them; KDE bandwidth {setting.bandwidth} (seeds "
                         f"{setting.seeds}), flow matching MLP 2x64 with rk4 8 steps and the exact divergence "
                         f"(seeds {setting.flow_seeds})")
    measured: dict[str, list[dict[str, float]]] = {}
    with one_thread():
        for learner in setting.learners:
            learner_seeds = setting.seeds if learner == "kde" else setting.flow_seeds
            measured[learner] = [minority_retention(learner, setting, s) for s in learner_seeds]
    for learner, runs in measured.items():
        med = {rule: median([run[rule] for run in runs]) for rule in ("model", *RULES)}
        ordered = sum(run["bottom"] > run["random"] > run["top"] for run in runs)
        result.add(f"{learner}: bottom-k > random-k > top-k in minority retention [paper: {LS_CLAIM}; no published "
                   "value found]", med["bottom"] > med["random"] > med["top"],
                   f"median retention bottom {med['bottom']:.2f}, random {med['random']:.2f}, top {med['top']:.2f} "
                   f"(the fitted model before selection {med['model']:.2f}); ordered in {ordered}/{len(runs)} seeds")
    out.mkdir(parents=True, exist_ok=True)
    result.figures.append(_plot(measured, setting, out / "likelihood_selection.png"))
    return result
