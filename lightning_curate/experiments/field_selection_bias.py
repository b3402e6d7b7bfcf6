"""The reproduction of "When sample selection bias precipitates model collapse" (Qiao et al., ICML 2026).

The paper's setting: each generation a model is refitted on its own selected samples, and the
selection's verifier judges samples against a *local* reference, a small biased slice of the real
data (one silo's). Its claim, in its abstract: such selection "preferentially retains samples aligned
with the local manifold while pruning globally relevant tail modes", accelerating collapse, and
"local-reference selection fails on skewed distributions".

Here: ``p_data`` is a skewed 2D Gaussian mixture; the verifier is a ``GaussianLearner`` fitted on a
few real points of the majority mode only (the silo), and keeps the top share of each generation's
candidates by its log-density (top-alpha selection under Gaussian modelling, as the paper's theory);
without selection, a random subset of the same size is kept. The model is a ``KDELearner`` (Scott's
bandwidth) or a ``GaussianLearner``, refitted each generation in closed form under

* ``replace``: the generation's kept samples only;
* ``accumulate``: the real data and every generation's kept samples so far.

The measure is the dispersion ratio ``tr(cov(model)) / tr(cov(p_data))`` after the last
generation (1: the data's spread; towards 0: collapse; exactly 0 once the kept samples are one point
to float32 precision and no covariance can be fitted), and the minority mode's mass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from lightning_curate.experiments.field_common import FieldResult, median, one_thread, quartiles
from lightning_curate.models import GaussianLearner, Generator, KDELearner, gaussian_moments
from lightning_curate.plots import save_figure
from lightning_curate.plots.common import new_figure
from lightning_curate.utils.seeding import derive_seed

__all__ = ["SB_CLAIM", "SB_LEARNERS", "SB_PAPER", "SB_VARIANTS", "SelectionBiasSetting", "dispersion_run",
           "model_moments", "selection_bias", "skewed_mixture"]

SB_PAPER = ('Qiao, Du, Liu, Zhang, Mai, Zhang, Pang, "When Sample Selection Bias Precipitates Model Collapse", '
            "ICML 2026 (arXiv:2606.13732)")
SB_CLAIM = ('"siloed selection accelerates collapse and induces power-law diversity decay"; "local-reference '
            'selection fails on skewed distributions" (abstract; we found no dispersion value of theirs to set '
            "beside ours)")
SB_LEARNERS = ("kde", "gaussian")
# (workflow, selection) pairs, in the figure's order
SB_VARIANTS = (("replace", False), ("replace", True), ("accumulate", False), ("accumulate", True))


@dataclass
class SelectionBiasSetting:
    """The skewed mixture, the silo, the selection and the run's size."""

    seeds: list[int]
    generations: int
    weights: tuple[float, ...] = (0.6, 0.3, 0.1)  # the modes' weights (skewed; the last is the tail mode)
    centres: tuple[tuple[float, float], ...] = ((0.0, 0.0), (3.0, 0.0), (0.0, 3.0))
    std: float = 0.5
    n: int = 500  # real points, and kept samples a generation
    keep: float = 0.5  # the share of each generation's candidates kept (n / keep candidates are drawn)
    silo: int = 32  # real points of the majority mode that the verifier sees


def skewed_mixture(n: int, setting: SelectionBiasSetting, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` points of ``p_data`` and their modes' indices."""
    mode = torch.multinomial(torch.tensor(setting.weights), n, replacement=True, generator=generator)
    x = torch.tensor(setting.centres)[mode] + setting.std * torch.randn(n, 2, generator=generator)
    return x, mode


def model_moments(model: Generator) -> tuple[Tensor, Tensor]:
    """The exact mean and covariance of a fitted ``GaussianLearner`` or ``KDELearner`` (float64)."""
    if isinstance(model, GaussianLearner):
        return model.mean, model.cov
    if isinstance(model, KDELearner):
        mean, cov = gaussian_moments(model.points)
        return mean, cov + model.kernel_cov
    raise TypeError(f"model_moments: a GaussianLearner or KDELearner, got {type(model).__name__}")


def _new(learner: str) -> Generator:
    return KDELearner(dim=2, bandwidth="scott") if learner == "kde" else GaussianLearner(dim=2)


def dispersion_run(learner: str, workflow: str, selection: bool, setting: SelectionBiasSetting,
                   seed: int) -> dict[str, list[float]]:
    """One run: ``ratio`` (dispersion ratio) and ``tail`` (the tail mode's mass, from samples) per generation.

    Generation 0 is the model fitted on the real data. The real data, the silo and every draw come
    from ``seed``; the runs with and without selection share the real data and the silo.
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "selection_bias"))
    real, mode = skewed_mixture(setting.n, setting, gen)
    silo = real[mode == 0][: setting.silo]
    verifier = GaussianLearner(dim=2)
    verifier.fit(silo)
    _, data_cov = skewed_mixture_moments(setting)
    centres = torch.tensor(setting.centres)
    train = real
    model = _new(learner)
    out: dict[str, list[float]] = {"ratio": [], "tail": []}
    draws = torch.Generator().manual_seed(derive_seed(seed, "draws", learner, workflow, int(selection)))
    for t in range(setting.generations + 1):
        try:
            model.fit(train)
        except ValueError as err:
            if "singular" not in str(err):
                raise
            # The kept samples are one point to float32 precision: collapsed, for every later generation too.
            out["ratio"] += [0.0] * (setting.generations + 1 - t)
            out["tail"] += [0.0] * (setting.generations + 1 - t)
            break
        _, cov = model_moments(model)
        out["ratio"].append(float(cov.trace() / data_cov.trace()))
        probe = model.sample(2000, generator=draws)
        nearest = torch.cdist(probe, centres).argmin(1)
        out["tail"].append(float((nearest == len(setting.centres) - 1).double().mean()) / setting.weights[-1])
        if t == setting.generations:
            break
        candidates = model.sample(math.ceil(setting.n / setting.keep), generator=draws)
        if selection:
            kept = candidates[torch.topk(verifier.log_prob(candidates), setting.n).indices]
        else:
            kept = candidates[torch.randperm(candidates.shape[0], generator=draws)[: setting.n]]
        train = kept if workflow == "replace" else torch.cat([train, kept])
    return out


def skewed_mixture_moments(setting: SelectionBiasSetting) -> tuple[Tensor, Tensor]:
    """The exact mean and covariance of ``p_data`` (float64).

    Example:
        >>> s = SelectionBiasSetting(seeds=[0], generations=1, weights=(0.5, 0.5), centres=((0.0, 0.0), (2.0, 0.0)))
        >>> [round(v, 6) for v in skewed_mixture_moments(s)[1].diagonal().tolist()]
        [1.25, 0.25]
    """
    w = torch.tensor(setting.weights, dtype=torch.float64)
    c = torch.tensor(setting.centres, dtype=torch.float64)
    mean = w @ c
    d = c - mean
    cov = (d * w[:, None]).T @ d + setting.std ** 2 * torch.eye(2, dtype=torch.float64)
    return mean, cov


def _power_law_exponent(ratios: list[float]) -> float:
    """The slope of ``log ratio`` on ``log t`` over generations ``1..T`` (least squares)."""
    t = torch.arange(1, len(ratios), dtype=torch.float64).log()
    r = torch.tensor(ratios[1:], dtype=torch.float64).clamp_min(1e-300).log()
    tc = t - t.mean()
    return float((tc * (r - r.mean())).sum() / (tc * tc).sum())


def _plot(measured: dict, setting: SelectionBiasSetting, path: Path) -> Path:
    fig = new_figure(4.4 * len(measured), 3.6)
    colors = {("replace", False): "#ff9896", ("replace", True): "#d62728", ("accumulate", False): "#aec7e8",
              ("accumulate", True): "#1f77b4"}
    gens = list(range(setting.generations + 1))
    for i, (learner, by_variant) in enumerate(measured.items()):
        ax = fig.add_subplot(1, len(measured), i + 1)
        for (workflow, selection), runs in by_variant.items():
            per_t = [[run["ratio"][t] for run in runs] for t in gens]
            label = f"{workflow}, {'local-reference selection' if selection else 'random subset'}"
            ax.plot(gens, [median(v) for v in per_t], color=colors[(workflow, selection)], lw=1.5, label=label,
                    ls="-" if selection else "--")
            ax.fill_between(gens, [quartiles(v)[0] for v in per_t], [quartiles(v)[1] for v in per_t],
                            color=colors[(workflow, selection)], alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel("generation")
        ax.set_ylabel("dispersion ratio tr(cov model) / tr(cov p_data)")
        ax.set_title("KDE (Scott)" if learner == "kde" else "Gaussian MLE", fontsize=9)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Sample-selection bias: median and quartiles over {len(setting.seeds)} seeds (below about "
                 "1e-15, float32 rounding: one point)", fontsize=10)
    return save_figure(fig, path)


def selection_bias(out: Path, *, quick: bool = False, seeds: Optional[list[int]] = None,
                   setting: Optional[SelectionBiasSetting] = None) -> FieldResult:
    """Dispersion ratios under replace / accumulate, with and without local-reference selection, per learner.

    Writes ``out/selection_bias.png``.
    """
    setting = setting or SelectionBiasSetting(seeds=seeds or list(range(10 if quick else 20)),
                                              generations=30 if quick else 60)
    result = FieldResult("selection_bias", "Sample-selection bias: dispersion under replace and accumulate", SB_PAPER,
                         f"p_data = 2D mixture, weights {setting.weights}, centres {setting.centres}, std "
                         f"{setting.std}; {setting.n} real points; each generation {setting.n} of "
                         f"{math.ceil(setting.n / setting.keep)} candidates kept, by the top log-density of a Gaussian "
                         f"fitted on {setting.silo} real points of the majority mode (the silo) or at random; "
                         f"{setting.generations} generations, seeds {setting.seeds[0]}..{setting.seeds[-1]}")
    with one_thread():
        measured = {learner: {(w, s): [dispersion_run(learner, w, s, setting, seed) for seed in setting.seeds]
                              for w, s in SB_VARIANTS} for learner in SB_LEARNERS}
    T = setting.generations
    for learner, by_variant in measured.items():
        final = {v: median([run["ratio"][T] for run in runs]) for v, runs in by_variant.items()}
        tail = {v: median([run["tail"][T] for run in runs]) for v, runs in by_variant.items()}
        shown = "; ".join(f"{w}{' + selection' if s else ''}: {final[(w, s)]:.3g} (tail mode {tail[(w, s)]:.2f})"
                          for w, s in SB_VARIANTS)
        for workflow in ("replace", "accumulate"):
            result.add(f"{learner}, {workflow}: selection lowers the dispersion ratio at generation {T} "
                       f"[paper: {SB_CLAIM}]", final[(workflow, True)] < final[(workflow, False)],
                       f"with selection {final[(workflow, True)]:.3g}, without {final[(workflow, False)]:.3g}")
        result.add(f"{learner}: with selection, replace collapses below half the data's dispersion and accumulate "
                   f"keeps more [paper: selection precipitates collapse; accumulating real data slows it]",
                   final[("replace", True)] < 0.5 and final[("replace", True)] < final[("accumulate", True)],
                   shown)
        exponent = median([_power_law_exponent(run["ratio"]) for run in by_variant[("accumulate", True)]])
        result.add(f"{learner}, accumulate + selection: the fitted exponent of ratio ~ t^a [paper: power-law "
                   "diversity decay]", None, f"a = {exponent:.3f} (median over seeds)")
    out.mkdir(parents=True, exist_ok=True)
    result.figures.append(_plot(measured, setting, out / "selection_bias.png"))
    return result
