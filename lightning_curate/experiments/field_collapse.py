"""The reproduction of "Collapse or Thrive?" (Kazdan, Schaeffer et al., ICML 2025) on the exact learners.

The replace / accumulate / accumulate-subsample workflows on the exact discrete, Gaussian and KDE
learners, driven round by round through the package's data module, learners and ``curate_round``
without the trainer (``K = 1``, no real data after round 0). Replace collapses, accumulate stays
stable, accumulate-subsample degrades slowly: each claim a PASS/FAIL row per learner, decided on
medians over seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_curate.data import Atoms, BlendingDataModule
from lightning_curate.experiments.field_common import FieldResult, MemoryStore, TensorSource, median, one_thread
from lightning_curate.loop import CurationModule
from lightning_curate.models import ExactCategorical, GaussianLearner, KDELearner
from lightning_curate.plots import save_figure
from lightning_curate.plots.common import new_figure
from lightning_curate.rewards import AtomReward, LinearReward
from lightning_curate.utils.seeding import derive_seed

__all__ = ["COT_CLAIMS", "COT_LEARNERS", "COT_PAPER", "COT_POLICIES", "FieldSetting", "collapse_or_thrive",
           "field_checks", "field_measure", "field_run", "field_setting", "plot_field"]

COT_PAPER = ('Kazdan, Schaeffer et al., "Collapse or Thrive? Perils and Promises of Synthetic Data in a '
             'Self-Generating World", ICML 2025 (arXiv:2410.16713)')
# The paper's claims, quoted from its abstract (arXiv:2410.16713v4); it reports them as test-loss curves
# over model-fitting iterations, and its text gives no single number for them.
COT_CLAIMS = {
    "replace": "(a) replacing all real data by successive generations of purely synthetic data suffers model "
               "collapse in all task-settings studied",
    "accumulate": "(b) accumulating synthetic data alongside real data: models remain stable and their test "
                  "losses do not diverge",
    "accumulate_subsample": "(c) accumulate with fixed-size subsets each generation: slow and gradual rather than "
                            "explosive degradation of test loss",
}
COT_POLICIES = ("replace", "accumulate", "accumulate_subsample")
COT_LEARNERS = ("discrete", "gaussian", "kde")


@dataclass
class FieldSetting:
    """One Collapse-or-Thrive run's size: rounds, seeds, samples a round, and the rounds its test loss is read."""

    rounds: int
    seeds: list[int]
    n: dict[str, int]  # samples a round, by learner
    atoms: int = 4  # support of the discrete learner (uniform p_data)
    dim: int = 2  # dimension of the continuous learners' p_data = N(0, I)
    heldout: int = 256  # real test points for the continuous learners' negative log-likelihood
    # the checks' bounds: replace's degradation at the last round at least this (collapse); accumulate's rise over
    # the second half of the rounds at most this (stable: its test loss stops rising)
    collapse_at: dict[str, float] = field(default_factory=lambda: {"discrete": 0.5, "gaussian": 0.25, "kde": 0.25})
    stable_rise: float = 0.05


def _standard_normal_source(dim: int, n: int, heldout: int, seed: int) -> TensorSource:
    """``p_data = N(0, I_dim)``: ``n`` train and ``heldout`` test points from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return TensorSource(torch.randn(n, dim, generator=gen), torch.randn(heldout, dim, generator=gen))


def field_run(learner: str, policy: str, setting: FieldSetting, seed: int) -> dict[str, list[float]]:
    """One workflow on the package's path: its data module composes each round's set, the learner fits it in
    closed form, :meth:`CurationModule.curate_round` samples the next round (``K = 1``: no curation).

    Returns ``degradation`` per round (discrete: ``1 - H(model) / log atoms``; continuous: the held-out real
    data's negative log-likelihood minus round 0's, in nats; ``nan`` on rounds not read) and ``variance``
    (discrete: ``H / log atoms``; continuous: the model's generalised variance per coordinate,
    ``det(cov)^(1 / dim)``: it falls when any direction collapses).
    """
    n = setting.n[learner]
    source: Any
    if learner == "discrete":
        source = Atoms(probs=[1.0 / setting.atoms] * setting.atoms, num_train=n, num_heldout=n, seed=seed)
        generator: Any = ExactCategorical(num_atoms=setting.atoms)
        reward: Any = AtomReward([0.0] * setting.atoms)
    else:
        source = _standard_normal_source(setting.dim, n, setting.heldout, seed)
        generator = GaussianLearner(dim=setting.dim) if learner == "gaussian" else KDELearner(dim=setting.dim)
        reward = LinearReward([1.0] + [0.0] * (setting.dim - 1), gamma=0.0)
    dm = BlendingDataModule(source, real_fraction=0.0, policy=policy, batch_size=n, seed=seed)
    store = MemoryStore()
    dm.attach(store, lambda epoch: epoch)  # type: ignore[arg-type]  # the data module only reads rounds
    module = CurationModule(generator, reward, num_slots=n, num_candidates=1, preview_size=0, backend="torch")
    read = {0, setting.rounds // 2, setting.rounds, *range(0, setting.rounds + 1, max(1, setting.rounds // 10))}
    out: dict[str, list[float]] = {"degradation": [], "variance": []}
    nll0 = 0.0
    for t in range(setting.rounds + 1):
        module.generator.fit(dm.dataset_for_round(t).tensors[0])
        if learner == "discrete":
            p = module.generator.probs.double()
            h = float(-(p[p > 0] * p[p > 0].log()).sum()) / math.log(setting.atoms)
            out["degradation"].append(1.0 - h)
            out["variance"].append(h)
        else:
            metrics = module.generator.round_metrics(reward, source, beta=1.0, num_candidates=1, real_fraction=0.0,
                                                     round_idx=t)
            out["variance"].append(math.exp(metrics["model_cov_logdet"] / setting.dim))
            nll = float(module.generator.loss(dm.real.heldout)) if t in read else math.nan
            nll0 = nll if t == 0 else nll0
            out["degradation"].append(nll - nll0)
        if t < setting.rounds:
            store.rounds[t] = module.curate_round(t, seed=derive_seed(seed, "round", t)).tensors
    return out


def field_measure(setting: FieldSetting) -> dict[str, dict[str, list[dict[str, list[float]]]]]:
    """Every learner and workflow over the setting's seeds: ``[learner][policy]`` -> one run per seed."""
    return {learner: {policy: [field_run(learner, policy, setting, s) for s in setting.seeds]
                      for policy in COT_POLICIES} for learner in COT_LEARNERS}


def field_checks(result: FieldResult, measured: dict, setting: FieldSetting) -> None:
    """The paper's three claims per learner, decided on medians over seeds: replace's degradation at the last
    round, accumulate's rise over the second half, and the three workflows' order at the last round."""
    T, half = setting.rounds, setting.rounds // 2
    what = {"discrete": "entropy lost, 1 - H/log K", "gaussian": "excess test NLL, nats",
            "kde": "excess test NLL, nats"}
    for learner in COT_LEARNERS:
        final = {pol: median([run["degradation"][T] for run in measured[learner][pol]]) for pol in COT_POLICIES}
        var = {pol: median([run["variance"][T] for run in measured[learner][pol]]) for pol in COT_POLICIES}
        label = "H/log K" if learner == "discrete" else "variance"
        ours = {pol: f"{what[learner]} {final[pol]:.3f} ({label} {var[pol] + 0.0:.3g})" for pol in COT_POLICIES}
        collapse = setting.collapse_at[learner]
        rise = median([run["degradation"][T] - run["degradation"][half] for run in measured[learner]["accumulate"]])
        result.add(f"{learner}, replace collapses: {what[learner]} at round {T} >= {collapse} "
                      f"[paper: {COT_CLAIMS['replace']}]", final["replace"] >= collapse, ours["replace"])
        result.add(f"{learner}, accumulate stays stable: its {what[learner]} rises by <= {setting.stable_rise} "
                      f"from round {half} to {T} [paper: {COT_CLAIMS['accumulate']}]", rise <= setting.stable_rise,
              f"rise {rise:.3f}; {ours['accumulate']}")
        slow = final["accumulate"] <= final["accumulate_subsample"] < final["replace"]
        result.add(f"{learner}, accumulate-subsample degrades slowly: accumulate <= it < replace at round {T} "
                      f"[paper: {COT_CLAIMS['accumulate_subsample']}]", slow,
              f"{ours['accumulate_subsample']}; accumulate {final['accumulate']:.3f}, replace {final['replace']:.3f}")


def plot_field(measured: dict, setting: FieldSetting, path: Path) -> Path:
    """Per learner, the median over seeds (and the quartiles' band) of its diversity over rounds, per workflow."""
    fig = new_figure(12.0, 3.6)
    colors = {"replace": "#d62728", "accumulate": "#1f77b4", "accumulate_subsample": "#2ca02c"}
    titles = {"discrete": f"discrete (K={setting.atoms}, n={setting.n['discrete']})",
              "gaussian": f"Gaussian MLE (d={setting.dim}, n={setting.n['gaussian']})",
              "kde": f"KDE, Scott (d={setting.dim}, n={setting.n['kde']})"}
    rounds = list(range(setting.rounds + 1))
    for i, learner in enumerate(COT_LEARNERS):
        ax = fig.add_subplot(1, 3, i + 1)
        for pol in COT_POLICIES:
            runs = [run["variance"] for run in measured[learner][pol]]
            q = [sorted(r[t] for r in runs) for t in rounds]
            ax.plot(rounds, [median(v) for v in q], color=colors[pol], lw=1.5, label=pol)
            ax.fill_between(rounds, [v[len(v) // 4] for v in q], [v[(3 * len(v)) // 4] for v in q],
                            color=colors[pol], alpha=0.15, linewidth=0)
        if learner != "discrete":
            ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.set_ylabel("entropy / log K" if learner == "discrete" else "det(model covariance)^(1/d)")
        ax.set_title(titles[learner], fontsize=9)
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.suptitle(f"Collapse or Thrive? workflows, median and quartiles over {len(setting.seeds)} seeds", fontsize=10)
    return save_figure(fig, path)


def field_setting(quick: bool = False, seeds: Optional[list[int]] = None) -> FieldSetting:
    """The run's size: 100 rounds and 20 seeds; ``quick``: 40 rounds and 10 seeds (``seeds`` overrides)."""
    return FieldSetting(rounds=40 if quick else 100, seeds=seeds or list(range(10 if quick else 20)),
                        n={"discrete": 24, "gaussian": 100, "kde": 100})


def collapse_or_thrive(out: Path, *, quick: bool = False, seeds: Optional[list[int]] = None,
                       setting: Optional[FieldSetting] = None) -> FieldResult:
    """Collapse or Thrive on the exact discrete, Gaussian and KDE learners: replace, accumulate, subsample.

    Writes ``out/collapse_or_thrive.png``; returns the nine rows (three claims per learner).
    """
    setting = setting or field_setting(quick, seeds)
    result = FieldResult("collapse_or_thrive", "Collapse or Thrive? on the exact learners", COT_PAPER,
                         f"{setting.rounds} rounds, seeds {setting.seeds[0]}..{setting.seeds[-1]}, samples a round "
                         f"{setting.n}, p_data uniform on {setting.atoms} atoms / N(0, I_{setting.dim}), "
                         "real_fraction 0 after round 0, K = 1, the package's data module, learners and curate_round")
    out.mkdir(parents=True, exist_ok=True)
    with one_thread():  # thousands of tiny fits: one thread avoids the pool's overhead (10x here)
        measured = field_measure(setting)
    field_checks(result, measured, setting)
    result.figures.append(plot_field(measured, setting, out / "collapse_or_thrive.png"))
    return result
