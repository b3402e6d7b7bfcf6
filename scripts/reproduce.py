"""Reproduce the paper's claims on CPU-sized settings and write a Markdown report.

    python scripts/reproduce.py                 # every claim, 3 seeds, the configs' rounds
    python scripts/reproduce.py --quick         # fewer rounds, one seed (a smoke run)
    python scripts/reproduce.py --only discrete --only mog8 --jobs 2
    python scripts/reproduce.py --record        # also docs/experiments/records/reproduce.json
    python scripts/reproduce.py --only field    # the field's results beside their papers (not in the default run)

Claims (docs/THEORY.md sections 3-5), each run as a sweep (lightning_curate.experiments.sweep)
in ``<out>/<claim>/``:

* ``mog8``: 2D mixture, reward = clipped distance to two of eight modes
  (configs/mog8.yaml): curated-only retraining collapses onto the rewarded
  modes while the reward rises; with half real data (configs/overlays/mog8_real.yaml's
  setting) the reward still rises and every mode keeps a share.
* ``discrete``: the exact learner (configs/discrete.yaml) follows docs/THEORY.md's
  ideal iteration, curated only and with half real data, within the sampling
  noise of its slots.
* ``digits_class``: digits, reward = 5 q_0(x) (configs/digits.yaml): the
  share of the rewarded digit and the reward rise.
* ``digits_confidence``: digits, reward = 5 max_i q_i(x): curated only skews
  the class proportions; with half real data they stay closer to the data
  while the reward rises. Uses configs/digits.yaml with the reward of
  configs/overlays/digits_confidence.yaml (or ConfidenceReward when it is missing).
* ``population``: adversarial curators on the exact learner
  (configs/sweeps/discrete_adversarial.yaml, a share epsilon of the slots wants
  class 1, the rest class 0): with epsilon = 0 the honest reward rises as in
  ``discrete``; past the ideal learner's threshold the adversaries' class grows,
  below it it vanishes; with rho = 0.5 every class keeps the floor rho * p_data.

The field's results, run only with ``--only field`` (all four) or ``--only <name>``, each a module
``lightning_curate.experiments.field_*`` that names its paper, setting and claims (``--seeds`` sets
their seeds; ``--quick`` shrinks them), in ``<out>/field/<name>/``:

* ``collapse_or_thrive``: "Collapse or Thrive?" (Kazdan, Schaeffer et al., ICML 2025, arXiv:2410.16713):
  replace collapses, accumulate stays stable, accumulate-subsample degrades slowly, on the exact
  discrete, Gaussian and KDE learners (``field_collapse``);
* ``likelihood_selection``: bottom-, random- and top-k of a pool by the model's own log-likelihood
  on an imbalanced 2D mixture: the minority's retention after one generation (``field_likelihood``);
* ``selection_bias``: "When sample selection bias precipitates model collapse" (Qiao et al., ICML 2026,
  arXiv:2606.13732): dispersion ratios under replace / accumulate, with and without a local-reference
  verifier's selection (``field_selection_bias``);
* ``two_rewards``: two-reward curation (Falahati et al., ICML 2026, arXiv:2605.07724): the loop's limit
  against the weighted Nash bargaining solution and the exact finite-K theory (``field_two_rewards``).

Finished runs are reused (the sweeps resume), so an interrupted reproduction
continues where it stopped. Writes ``<out>/REPORT.md`` with a PASS/FAIL table
of the checks and the figures. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import functools
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from lightning_curate.experiments import sweep
from lightning_curate.experiments.aggregate import as_float
from lightning_curate.experiments.records import DEFAULT_FOLDER, write_record

REPO = Path(__file__).resolve().parents[1]

CLAIMS = ("mog8", "discrete", "digits_class", "digits_confidence", "population")
# Results of the field, beside their papers: run with --only (not part of the default run).
FIELD_CLAIMS = ("collapse_or_thrive", "likelihood_selection", "selection_bias", "two_rewards")


@dataclass
class Check:
    """One PASS/FAIL line of the report: a claim's check and the numbers it was decided on."""

    claim: str
    what: str
    passed: Optional[bool]  # None: skipped
    numbers: str


@dataclass
class ClaimResult:
    """A claim's checks, figures, run time and the sweep command that reproduces it."""

    name: str
    title: str
    checks: list[Check] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    command: str = ""
    note: str = ""


# --------------------------------------------------------------------------- #
# reading the aggregated rows
# --------------------------------------------------------------------------- #


def series(rows: list[dict], point: Optional[str], column: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``column`` per round, for one grid point (nothing for a missing point)."""
    if point is None:
        return [], []
    summary = sweep.summarise([r for r in rows if r["point"] == point], column)
    if point not in summary:
        return [], []
    rounds, means, _, _ = summary[point]
    return [int(t) for t in rounds], means


def per_seed(rows: list[dict], point: Optional[str], column: str) -> dict[int, dict[int, float]]:
    """``column`` of one grid point by seed, then by round."""
    out: dict[int, dict[int, float]] = {}
    for r in rows:
        if r["point"] == point:
            out.setdefault(int(r["seed"]), {})[int(as_float(r["round"]))] = as_float(r.get(column))
    return out


def share_columns(rows: list[dict]) -> list[str]:
    """The ``share_*`` columns of the rows, in first-seen order."""
    cols = []
    for r in rows:
        for c in r:
            if c.startswith("share_") and c not in cols:
                cols.append(c)
    return cols


def point_of(specs: list[sweep.RunSpec], **values: object) -> Optional[str]:
    """The grid point whose values include ``values`` (None when the sweep has none)."""
    for s in specs:
        if all(s.values.get(k) == v for k, v in values.items()):
            return s.point
    return None


def verdict_of(c: Check) -> str:
    """PASS, **FAIL**, SKIPPED (a check that could not run) or INFO (a row that reports, deciding nothing)."""
    if c.passed is None:
        return "SKIPPED" if c.numbers.startswith("SKIPPED") else "INFO"
    return "PASS" if c.passed else "**FAIL**"


def check(result: ClaimResult, what: str, passed: bool, numbers: str) -> None:
    """Add a decided check to ``result``."""
    result.checks.append(Check(result.name, what, bool(passed), numbers))


def check_reward_rises(result: ClaimResult, rows: list[dict], point: Optional[str], rounds: int,
                       prefix: str = "") -> Optional[list[int]]:
    """Check that every round ran and the reward rose; the rounds, or None when some are missing."""
    t, reward = series(rows, point, "reward_mean")
    if len(t) < rounds + 1:
        check(result, f"{prefix}every round ran", False, f"{len(t)}/{rounds + 1} rounds")
        return None
    check(result, f"{prefix}the reward rises (round 0 -> {t[-1]})", reward[-1] > reward[0],
          f"{reward[0]:.3f} -> {reward[-1]:.3f}")
    return t


# --------------------------------------------------------------------------- #
# running one claim's sweep
# --------------------------------------------------------------------------- #


def run_claim_sweep(result: ClaimResult, base: dict, base_path: str, grid: dict, fixed: dict, seeds: list[int],
                    out: Path, jobs: int, metrics: list[str],
                    serial_first: bool = False) -> tuple[list[sweep.RunSpec], list[dict]]:
    """Run (or resume) one claim's sweep, plot it, and return its runs and aggregated rows."""
    specs = sweep.plan_sweep(base, grid, seeds, out, fixed=fixed)
    grid_args = " ".join(f"--grid {k}={','.join(map(str, v))}" for k, v in grid.items())
    set_args = " ".join(f"--set {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fixed.items()
                        if not isinstance(v, (dict, list)))
    result.command = (f"lightning-curate-sweep --config {base_path} {grid_args} {set_args} "
                      f"--seeds {','.join(map(str, seeds))} --out {out}").replace("  ", " ")
    say = lambda text: print(f"  {text}", flush=True)  # noqa: E731
    if serial_first and len(specs) > 1:
        # The first run may train shared artifacts (a reward classifier): let it finish alone.
        results = (sweep.run_sweep(specs[:1], jobs=1, say=say, numbering=(1, len(specs)))
                   + sweep.run_sweep(specs[1:], jobs=jobs, say=say, numbering=(2, len(specs))))
    else:
        results = sweep.run_sweep(specs, jobs=jobs, say=say)
    failed = [r for r in results if r.status == "failed"]
    _, figures = sweep.finish(specs, out, metrics=metrics, say=say)
    result.figures += figures
    _, rows = sweep.aggregate(specs, out)
    if failed:
        result.checks.append(Check(result.name, f"{len(failed)} of {len(results)} runs finished", False,
                                   "; ".join(f"{r.spec.label}: {r.message}" for r in failed)))
    return specs, rows


# --------------------------------------------------------------------------- #
# the claims
# --------------------------------------------------------------------------- #


def claim_mog8(args: argparse.Namespace, out: Path) -> ClaimResult:
    """Curated-only collapse onto the rewarded modes; every mode kept with half real data."""
    result = ClaimResult("mog8", "2D mixture: collapse onto the rewarded modes vs. stability with real data")
    base_path = "configs/mog8.yaml"
    base = sweep.load_base_config(REPO / base_path)
    fixed = {"loop.rounds": 4} if args.quick else {}
    rounds = fixed.get("loop.rounds", sweep.get_key(base, "loop.rounds", 10))
    specs, rows = run_claim_sweep(result, base, base_path, {"data.init_args.real_fraction": [0.0, 0.5]}, fixed,
                                  args.seeds, out, args.jobs, ["reward_mean", "share_mode*", "sw_distance"])
    targets = sweep.get_key(base, "model.init_args.reward.init_args.targets", [0, 1])
    rewarded = [f"share_mode{t}" for t in targets]
    collapse_at = 0.7 if args.quick else 0.9
    curated_only_top = None
    for rho in (0.0, 0.5):
        point = point_of(specs, **{"data.init_args.real_fraction": rho})
        t = check_reward_rises(result, rows, point, rounds, f"rho={rho}: ")
        if t is None:
            continue
        top = [sum(series(rows, point, c)[1][i] for c in rewarded) for i in range(len(t))]
        if rho == 0.0:
            check(result, f"rho=0: the rewarded modes' share reaches >= {collapse_at:.0%} (collapse)",
                  top[-1] >= collapse_at, f"{top[0]:.1%} -> {top[-1]:.1%}")
            curated_only_top = top[-1]
        else:
            mins = [min(series(rows, point, c)[1][i] for c in share_columns(rows)) for i in range(len(t))]
            check(result, "rho=0.5: every mode keeps >= 4% in every round", min(mins) >= 0.04,
                  f"smallest mode share {min(mins):.1%}")
            if curated_only_top is not None:
                check(result, "rho=0.5 keeps the rewarded modes below the curated-only run",
                      top[-1] < curated_only_top, f"{top[-1]:.1%} vs {curated_only_top:.1%}")
    return result


def claim_discrete(args: argparse.Namespace, out: Path) -> ClaimResult:
    """The exact learner against the ideal iteration's band, curated only and with half real data."""
    from lightning_curate.theory.laws import two_level_band

    result = ClaimResult("discrete", "The exact learner follows docs/THEORY.md's ideal iteration")
    base_path = "configs/discrete.yaml"
    base = sweep.load_base_config(REPO / base_path)
    fixed: dict[str, Any] = {"loop.plots": False, **({"loop.rounds": 6} if args.quick else {})}
    rounds = fixed.get("loop.rounds", sweep.get_key(base, "loop.rounds", 10))
    specs, rows = run_claim_sweep(result, base, base_path, {"data.init_args.real_fraction": [0.0, 0.5]}, fixed,
                                  args.seeds, out, args.jobs, ["reward_mean", "share_class0", "kl_to_data"])
    n_slots = sweep.get_key(base, "model.init_args.num_slots")
    K = sweep.get_key(base, "model.init_args.num_candidates")
    gamma = sweep.get_key(base, "model.init_args.reward.init_args.gamma", 1.0)
    beta = sweep.get_key(base, "model.init_args.beta", 1.0)
    p_top = sweep.get_key(base, "data.init_args.source.init_args.probs")[0]
    top_reward = gamma * sweep.get_key(base, "model.init_args.reward.init_args.rewards")[0]
    curves = {}
    for rho in (0.0, 0.5):
        point = point_of(specs, **{"data.init_args.real_fraction": rho})
        ideal, se = two_level_band(p_top, top_reward, 0.0, K, beta, rho, rounds, n_slots)
        seeds = per_seed(rows, point, "share_class0")
        worst, where = 0.0, ""
        complete = all(len(v) == rounds + 1 for v in seeds.values()) and len(seeds) == len(args.seeds)
        for seed, by_round in seeds.items():
            for t, share in by_round.items():
                z = abs(share - ideal[t]) / max(se[t], 1e-12) if abs(share - ideal[t]) > 1e-9 else 0.0
                if z > worst:
                    worst, where = z, f"seed {seed}, round {t}: {share:.4f} vs {ideal[t]:.4f}"
        check(result, f"rho={rho}: share of class 0 within 5 standard errors of the ideal iteration, every round "
                      f"and seed", complete and worst <= 5.0,
              f"largest deviation {worst:.2f} se ({where or 'exact'})")
        rounds_seen, mean = series(rows, point, "share_class0")
        shown = ", ".join(f"{m:.3f}" for m in mean[:6])
        theory_shown = ", ".join(f"{v:.3f}" for v in ideal[:6])
        check(result, f"rho={rho}: measured (mean over seeds) vs docs/THEORY.md", complete,
              f"measured {shown}; theory {theory_shown}")
        curves[rho] = (rounds_seen, mean, ideal, se)
    if curves:
        result.figures.insert(0, plot_theory_vs_observed(curves, out / "theory_vs_observed.png"))
    return result


def plot_theory_vs_observed(curves: dict, path: Path) -> Path:
    """The measured share of class 0 over the ideal iteration and its 5-standard-error band."""
    from lightning_curate.plots import save_figure
    from lightning_curate.plots.common import new_figure

    ax = (fig := new_figure(6.4, 4.0)).add_subplot()
    for (rho, (t, mean, ideal, se)), color in zip(curves.items(), ("#d62728", "#1f77b4")):
        rounds = list(range(len(ideal)))
        ax.plot(rounds, ideal, "--", color=color, lw=1.4, label=f"docs/THEORY.md, rho={rho}")
        ax.fill_between(rounds, [i - 5 * s for i, s in zip(ideal, se)], [i + 5 * s for i, s in zip(ideal, se)],
                        color=color, alpha=0.15, linewidth=0)
        ax.plot(t, mean, "o", color=color, ms=5, label=f"exact learner, rho={rho}")
    ax.set_xlabel("round")
    ax.set_ylabel("share of class 0")
    ax.set_title("Exact learner vs. the ideal iteration (band: 5 standard errors)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _digits_base(name: str) -> tuple[Optional[dict], str, str]:
    """(config, its path, a note) of a digits claim; config None when it cannot run."""
    class_path = REPO / "configs" / "digits.yaml"
    if name == "digits_class":
        if not class_path.is_file():
            return None, "configs/digits.yaml", "configs/digits.yaml is missing"
        return sweep.load_base_config(class_path), "configs/digits.yaml", ""
    overlay = REPO / "configs/overlays/digits_confidence.yaml"
    if class_path.is_file() and overlay.is_file():
        cfg = sweep.load_base_config(class_path)
        cfg["model"]["init_args"]["reward"] = sweep.load_base_config(overlay)["model"]["init_args"]["reward"]
        return cfg, "configs/digits.yaml", "configs/digits.yaml, reward from configs/overlays/digits_confidence.yaml"
    if not class_path.is_file():
        return None, "configs/digits.yaml", "configs/digits.yaml is missing"
    cfg = sweep.load_base_config(class_path)
    reward = copy.deepcopy(sweep.get_key(cfg, "model.init_args.reward"))
    args = {k: v for k, v in (reward.get("init_args") or {}).items() if k not in ("target_class",)}
    cfg["model"]["init_args"]["reward"] = {"class_path": "lightning_curate.rewards.ConfidenceReward",
                                           "init_args": args}
    return cfg, "configs/digits.yaml", "configs/digits.yaml with its reward swapped for ConfidenceReward"


def _tv(a: list[float], b: list[float]) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b))


def claim_digits(args: argparse.Namespace, out: Path, name: str) -> ClaimResult:
    """Digits: the rewarded digit takes over (class reward), or class drift with and without real data."""
    confidence = name == "digits_confidence"
    result = ClaimResult(name, "Digits, confidence reward: bias amplification vs. stability with real data"
                         if confidence else "Digits, class reward r = 5 q_0(x): the rewarded digit takes over")
    base, base_path, note = _digits_base(name)
    if base is None:
        result.checks.append(Check(name, "configs present", None, f"SKIPPED: {note}"))
        result.note = note
        return result
    result.note = note
    fixed = {"loop.rounds": 3} if args.quick else {}
    rounds = fixed.get("loop.rounds", sweep.get_key(base, "loop.rounds", 10))
    grid = {"data.init_args.real_fraction": [0.0, 0.5]} if confidence else {"data.init_args.real_fraction": [0.0]}
    specs, rows = run_claim_sweep(result, base, base_path, grid, fixed, args.seeds, out, args.jobs,
                                  ["reward_mean", "share_*", "fid", "precision", "recall"], serial_first=True)
    shares = share_columns(rows)
    if not shares:
        check(result, "class shares are measured", False, "no share_ columns in rounds.csv")
        return result
    if not confidence:
        point = point_of(specs, **{"data.init_args.real_fraction": 0.0})
        target = sweep.get_key(base, "model.init_args.reward.init_args.target_class", 0)
        column = shares[target]
        if check_reward_rises(result, rows, point, rounds) is None:
            return result
        _, share = series(rows, point, column)
        check(result, f"the rewarded digit's share ({column}) rises", share[-1] > share[0],
              f"{share[0]:.1%} -> {share[-1]:.1%}")
        others = [c for c in shares if c != column]
        falls = sum(series(rows, point, c)[1][-1] < series(rows, point, c)[1][0] for c in others)
        check(result, "most other digits lose share", falls >= len(others) / 2, f"{falls} of {len(others)} fall")
        return result
    tvs = {}
    for rho in (0.0, 0.5):
        point = point_of(specs, **{"data.init_args.real_fraction": rho})
        t = check_reward_rises(result, rows, point, rounds, f"rho={rho}: ")
        if t is None:
            continue
        first = [series(rows, point, c)[1][0] for c in shares]
        last = [series(rows, point, c)[1][-1] for c in shares]
        tvs[rho] = _tv(first, last)
    if len(tvs) == 2:
        check(result, "class proportions drift less with real data (total variation, round 0 -> last)",
              tvs[0.5] < tvs[0.0], f"rho=0: {tvs[0.0]:.3f}, rho=0.5: {tvs[0.5]:.3f}")
    return result


def claim_population(args: argparse.Namespace, out: Path) -> ClaimResult:
    """Adversarial curators: who wins on each side of the ideal learner's threshold, and real data's floor."""
    from lightning_curate.theory.population import adversarial_threshold

    result = ClaimResult("population", "Adversarial curators: the threshold where they win, and real data's floor")
    spec = sweep.load_sweep_file(REPO / "configs/sweeps/discrete_adversarial.yaml")
    base = sweep.load_base_config([REPO / b for b in spec["base"]])
    share_key, rho_key = list(spec["grid"])
    fixed = {"loop.plots": False, **({"loop.rounds": 6} if args.quick else {})}
    rounds = fixed.get("loop.rounds", sweep.get_key(base, "loop.rounds", 10))
    grid = {share_key: [0.0, 0.1, 0.5], rho_key: [0.0, 0.5]}
    specs, rows = run_claim_sweep(result, base, " -c ".join(spec["base"]), grid, fixed, args.seeds, out, args.jobs,
                                  ["reward_mean", "reward_mean_adversary", "ideal_reward_mean", "share_class1"])
    n = sweep.get_key(base, "model.init_args.num_slots")
    p_data = sweep.get_key(base, "data.init_args.source.init_args.probs")
    honest = [5.0 * v for v in sweep.get_key(base, "model.init_args.curators.0.init_args.reward.init_args.rewards")]
    target = [5.0 * v for v in sweep.get_key(base, "model.init_args.curators.1.init_args.reward.init_args.rewards")]
    check_reward_rises(result, rows, point_of(specs, **{share_key: 0.0, rho_key: 0.0}), rounds, "epsilon=0: ")
    k = sweep.get_key(base, "model.init_args.num_candidates")
    threshold = adversarial_threshold(p_data, honest, lambda p_t, p0: bool(p_t[1] > p0[1]), rounds=rounds,
                                      target=target, num_candidates=k)
    for eps in (0.1, 0.5):
        t, share = series(rows, point_of(specs, **{share_key: eps, rho_key: 0.0}), "share_class1")
        if len(t) < rounds + 1:
            check(result, f"epsilon={eps}: every round ran", False, f"{len(t)}/{rounds + 1} rounds")
            continue
        grows = share[-1] > share[0]
        check(result, f"epsilon={eps} ({'above' if eps > threshold else 'below'} the ideal learner's threshold "
                      f"{threshold:.3f}): the adversaries' class {'grows' if eps > threshold else 'does not grow'}",
              grows == (eps > threshold), f"{share[0]:.3f} -> {share[-1]:.3f}")
    floor = 0.5 * min(p_data)
    worst = min((as_float(r.get(c)) for r in rows if as_float(r.get(rho_key)) == 0.5
                 for c in share_columns(rows)), default=float("nan"))
    se = (floor * (1 - floor) / n) ** 0.5
    check(result, f"rho=0.5: every class keeps >= rho * p_data = {floor:.3f} (less 5 standard errors), every round",
          worst >= floor - 5 * se, f"smallest class share {worst:.4f}")
    return result


# --------------------------------------------------------------------------- #
# the field's results, beside their papers (lightning_curate.experiments.field_*)
# --------------------------------------------------------------------------- #


def field_reproductions() -> dict[str, Callable[..., Any]]:
    """The field's reproductions by claim name: each ``fn(out, *, quick, seeds) -> FieldResult``."""
    from lightning_curate.experiments.field_collapse import collapse_or_thrive
    from lightning_curate.experiments.field_likelihood import likelihood_selection
    from lightning_curate.experiments.field_selection_bias import selection_bias
    from lightning_curate.experiments.field_two_rewards import two_rewards

    return {"collapse_or_thrive": collapse_or_thrive, "likelihood_selection": likelihood_selection,
            "selection_bias": selection_bias, "two_rewards": two_rewards}


def claim_field(args: argparse.Namespace, out: Path, name: str) -> ClaimResult:
    """One of the field's reproductions, its rows as the report's checks (``--seeds`` sets its seeds)."""
    res = field_reproductions()[name](out, quick=bool(args.quick), seeds=args.field_seeds)
    result = ClaimResult(name, res.title, note=f"{res.paper}; {res.setting}", figures=list(res.figures))
    result.checks = [Check(name, row.what, row.passed, row.numbers) for row in res.rows]
    return result


# --------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------- #


def write_report(results: list[ClaimResult], out: Path, args: argparse.Namespace, seconds: float) -> Path:
    """``<out>/REPORT.md``: the PASS/FAIL table, then each claim's command and figures."""
    asked = getattr(args, "asked", [])
    only_flag = f" --only {','.join(asked)}" if asked else ""
    lines = ["# Reproduction report", "",
             f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python scripts/reproduce.py"
             f"{' --quick' if args.quick else ''}{only_flag}` in {seconds / 60:.1f} min on {platform.machine()} "
             f"({os.cpu_count()} CPUs), seeds {', '.join(map(str, args.seeds))}.", "",
             "The claims of Ferbach et al. (NeurIPS 2024) as docs/THEORY.md states them, each run as a sweep "
             "(`lightning-curate-sweep`) with the mean over seeds and a 95% band in the figures. The field's results "
             "(run with `--only field`) each name their paper and claim, with their own seeds.", "",
             "| claim | check | result | numbers |", "|---|---|---|---|"]
    for res in results:
        for c in res.checks:
            verdict = verdict_of(c)
            lines.append(f"| {res.name} | {c.what} | {verdict} | {c.numbers.replace('|', '/')} |")
    for res in results:
        lines += ["", f"## {res.name}: {res.title}", ""]
        if res.seconds:
            lines.append(f"Ran in {res.seconds / 60:.1f} min.")
        if res.note:
            lines.append(f"Note: {res.note}.")
        if res.command:
            lines += ["", "```", res.command, "```"]
        for fig in res.figures:
            rel = os.path.relpath(fig, out)
            lines += ["", f"![{fig.stem}]({rel})"]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def record_figures(results: list[ClaimResult], args: argparse.Namespace, seconds: float) -> dict:
    """The reproduction's figures for :func:`write_record`: every check's verdict and numbers, by claim."""
    return {"quick": bool(args.quick), "seeds": list(args.seeds), "minutes": seconds / 60,
            "claims": {res.name: {"title": res.title, "minutes": res.seconds / 60, "command": res.command,
                                  "note": res.note,
                                  "checks": [{"check": c.what, "passed": c.passed, "numbers": c.numbers}
                                             for c in res.checks]}
                       for res in results}}


def main(argv: Optional[list[str]] = None) -> int:
    """Run the claims, write the report (and with ``--record`` the JSON record); 1 when a check fails."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and one seed")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help=f"run only these claims (repeat, or comma-separate): {', '.join(CLAIMS)}; and the "
                        f"field's results, not run by default: {', '.join(FIELD_CLAIMS)}")
    p.add_argument("--seeds", help="seeds (default 0,1,2; --quick: 0)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel within a sweep")
    p.add_argument("--out", default="runs/reproduce", help="where the sweeps and REPORT.md go")
    p.add_argument("--record", nargs="?", type=Path, const=REPO / DEFAULT_FOLDER, default=None, metavar="FOLDER",
                   help=f"also write the checks as a JSON record, reproduce[_quick][_<claims>].json (default folder "
                        f"{DEFAULT_FOLDER})")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    asked = [n.strip() for spec in args.only for n in spec.split(",") if n.strip()]
    unknown = [n for n in asked if n not in CLAIMS + FIELD_CLAIMS + ("field",)]
    if unknown:
        p.error(f"unknown claim(s) {unknown}; choose from {', '.join(CLAIMS + FIELD_CLAIMS)}, or field (all of "
                "the field's)")
    only = [n for n in CLAIMS + FIELD_CLAIMS if n in asked or ("field" in asked and n in FIELD_CLAIMS)]
    args.asked = asked
    try:
        args.field_seeds = sweep.parse_seeds(args.seeds) if args.seeds else None
        args.seeds = sweep.parse_seeds(args.seeds if args.seeds else ("0" if args.quick else "0,1,2"))
    except sweep.SweepError as err:
        p.error(str(err))
    record = args.record.absolute() if args.record is not None else None
    os.chdir(REPO)  # configs name paths relative to the repository (checkpoints/, configs/)
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    runners: dict[str, Callable[[], ClaimResult]] = {
        "mog8": lambda: claim_mog8(args, out / "mog8"),
        "discrete": lambda: claim_discrete(args, out / "discrete"),
        "digits_class": lambda: claim_digits(args, out / "digits_class", "digits_class"),
        "digits_confidence": lambda: claim_digits(args, out / "digits_confidence", "digits_confidence"),
        "population": lambda: claim_population(args, out / "population"),
    }
    for field_name in FIELD_CLAIMS:
        runners[field_name] = functools.partial(claim_field, args, out / "field" / field_name, field_name)
    results, start = [], time.time()
    for name in CLAIMS + FIELD_CLAIMS:
        if (only and name not in only) or (not only and name in FIELD_CLAIMS):
            continue
        print(f"== {name}", flush=True)
        t0 = time.time()
        res = runners[name]()
        res.seconds = time.time() - t0
        results.append(res)
        for c in res.checks:
            verdict = verdict_of(c).replace("*", "")
            print(f"  {verdict:7} {c.what}: {c.numbers}", flush=True)
        write_report(results, out, args, time.time() - start)  # a report after every claim
    report = write_report(results, out, args, time.time() - start)
    print(f"\nReport: {report}")
    if record is not None:
        name = "reproduce_quick" if args.quick else "reproduce"
        if asked:
            name += "_" + "_".join(n for n in CLAIMS + ("field",) + FIELD_CLAIMS
                                   if n in asked and not (n in FIELD_CLAIMS and "field" in asked))
        path = write_record(name, record_figures(results, args, time.time() - start),
                            shlex.join(["python", "scripts/reproduce.py", *argv]), record)
        print(f"Record: {path}")
    return 1 if any(c.passed is False for r in results for c in r.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
