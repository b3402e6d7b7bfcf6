"""``lightning-curate diagnose solver``: how much of a run's learner error is the ODE solver's, not the network's.

A flow-matching generator samples by integrating its velocity field, and a fixed-step solver with
few steps lands off the flow it learned. That error counts against the learner in every fidelity
ratio. This diagnostic samples a run's checkpoint with several solvers on the same source noise,
against an adaptive reference (``dopri5`` with ``rtol = atol = --tolerance``). Per solver it
reports the network evaluations a sample (NFE), the time, the reward mean, its gap to the
reference, the L1 gap of the class shares, and the reward gap as a share of the smallest
predicted move whose fidelity the run reports (``predicted_reward_mean - reward_mean`` in
``rounds.csv``). A solver whose gap is a visible share of that move biases the run's fidelity:
pick the cheapest one that is not.

Every solver integrates the same noise, so the gaps are measured with common random numbers and
are far more precise than the means themselves. The run directory is only read. Its
``config.yaml`` is trusted as any config is (it names the classes to build, as the run did); the
checkpoint is read with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_curate.diagnostics.common import DiagnosticError, progress
from lightning_curate.experiments.aggregate import as_float
from lightning_curate.experiments.saved_run import load_run as open_run

__all__ = ["NFE_PER_STEP", "REFERENCE", "RUN_DOPRI5", "add_arguments", "check_solvers", "load_run", "parse_solver",
           "run", "same_cost_solvers", "smallest_counted_move", "solver_label"]

NFE_PER_STEP = {"euler": 1, "midpoint": 2, "rk4": 4}
REFERENCE = ("dopri5", 0)  # adaptive, at --tolerance
RUN_DOPRI5 = ("dopri5", -1)  # adaptive, at the run's own rtol and atol


def parse_solver(spec: str) -> tuple[str, int]:
    """``"rk4:6"`` -> ``("rk4", 6)``; ``"dopri5"`` -> ``("dopri5", 0)`` (adaptive, no step count)."""
    name, _, steps = spec.partition(":")
    if name == "dopri5" and not steps:
        return REFERENCE
    if name not in NFE_PER_STEP or not steps.isdigit() or int(steps) < 1:
        raise ValueError(f"--solvers: expected euler:N, midpoint:N, rk4:N (N >= 1) or dopri5, got {spec!r}")
    return name, int(steps)


def same_cost_solvers(solver: str, steps: int) -> list[tuple[str, int]]:
    """The run's own solver and the others at (at most) its network evaluations per sample.

    A run that samples with ``dopri5`` is compared, at its own tolerances, with the fixed-step
    solvers at 32 evaluations a sample.
    """
    if solver == "dopri5":
        return [RUN_DOPRI5] + [(name, 32 // per_step) for name, per_step in NFE_PER_STEP.items()]
    nfe = steps * NFE_PER_STEP[solver]
    out = [(solver, steps)]
    for name, per_step in NFE_PER_STEP.items():
        if name != solver and nfe // per_step >= 1:
            out.append((name, nfe // per_step))
    return out


def load_run(run_dir: Path, checkpoint: Optional[Path] = None) -> tuple[Any, Any, dict[str, Any]]:
    """The run's module (weights from ``checkpoint``, default its ``last.ckpt``) and data module.

    Both are built from ``run_dir/config.yaml``, the config the run itself saved
    (:func:`lightning_curate.experiments.load_run`).
    """
    try:
        run = open_run(run_dir, checkpoint)
    except FileNotFoundError as err:
        hint = " (pass another with --ckpt)" if "checkpoint" in str(err) and checkpoint is None else ""
        raise FileNotFoundError(f"{err}{hint}") from err
    except ValueError as err:
        if "truncated or damaged" in str(err):
            raise ValueError(f"{err}; pass another with --ckpt") from err
        raise
    module = run.module
    generator = getattr(module, "generator", None)
    if generator is None or not hasattr(generator, "solver") or not hasattr(generator, "steps"):
        raise ValueError(f"{run_dir}: the generator ({type(generator).__name__}) has no ODE solver to check")
    check = getattr(module.reward, "check", None)
    if callable(check):  # a classifier reward whose weights are missing: say so before any sampling
        check()
    return module, run.datamodule, run.config


def solver_label(solver: str, steps: int, rtol: float) -> str:
    """``rk4:8``; ``dopri5`` for the reference; ``dopri5@1e-05`` for a run's own adaptive solver."""
    if solver != "dopri5":
        return f"{solver}:{steps}"
    return "dopri5" if steps == 0 else f"dopri5@{rtol:g}"


def _finite(text: Optional[str]) -> bool:
    """A ``rounds.csv`` cell holding a finite number (a round without a ratio holds ``nan`` or nothing)."""
    return math.isfinite(as_float(text))


def smallest_counted_move(run_dir: Path) -> Optional[float]:
    """The smallest predicted move (``predicted_reward_mean - reward_mean`` of round ``t``) whose
    fidelity the run reports (``reward_fidelity`` of round ``t + 1`` is set), from ``rounds.csv``."""
    path = run_dir / "rounds.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    moves = [float(row["predicted_reward_mean"]) - float(row["reward_mean"])
             for row, after in zip(rows, rows[1:])
             if _finite(after.get("reward_fidelity")) and _finite(row.get("predicted_reward_mean"))
             and _finite(row.get("reward_mean"))]
    return min(moves, key=abs) if moves else None


def check_solvers(module: Any, datamodule: Any, solvers: list[tuple[str, int]], *, n: int, seed: int,
                  device: str = "cpu", tolerance: float = 1e-5,
                  predicted_move: Optional[float] = None) -> list[dict[str, Any]]:
    """One row per solver (the reference ``dopri5`` first): NFE, seconds, reward mean and the gaps.

    Every solver integrates the same ``n`` source draws (``torch.Generator`` seeded with ``seed``).
    """
    generator = module.generator.to(device)
    module.reward.to(device)
    saved = (generator.solver, generator.steps, generator.rtol, generator.atol)
    calls = [0]

    def count(*_: Any) -> None:
        calls[0] += 1

    hook = generator.sampling_velocity.register_forward_hook(count)
    chunks = math.ceil(n / generator.sample_batch_size)
    rows: list[dict[str, Any]] = []
    order = [REFERENCE] + [s for s in solvers if s != REFERENCE]
    bar = progress(len(order), "solver: sampling", "solver")
    try:
        for solver, steps in order:
            bar.set_postfix_str(solver_label(solver, steps, saved[2]))
            generator.solver, calls[0] = solver, 0
            if (solver, steps) == REFERENCE:
                generator.rtol = generator.atol = tolerance
            else:
                generator.steps, generator.rtol, generator.atol = max(steps, 1), saved[2], saved[3]
            start = time.perf_counter()
            x = generator.sample(n, generator=torch.Generator().manual_seed(seed), device=device)
            if x.is_cuda:  # fixed-step solvers queue their work: wait for it before reading the clock
                torch.cuda.synchronize(x.device)
            seconds = time.perf_counter() - start
            rewards = module.score(x, round_idx=-1).double().cpu()
            row: dict[str, Any] = {"solver": solver_label(solver, steps, saved[2]),
                                   "nfe": calls[0] / chunks, "seconds": seconds,
                                   "reward_mean": rewards.mean().item(),
                                   "reward_se": rewards.std().item() / math.sqrt(n)}
            labels = datamodule.label(x) if datamodule.class_names else None
            if labels is not None:
                counts = torch.bincount(labels.long().cpu(), minlength=len(datamodule.class_names))
                row["shares"] = (counts.double() / n).tolist()
            rows.append(row)
            bar.update()
    finally:
        bar.close()
        hook.remove()
        generator.solver, generator.steps, generator.rtol, generator.atol = saved
    reference = rows[0]
    for row in rows:
        row["reward_gap"] = row["reward_mean"] - reference["reward_mean"]
        if "shares" in row:
            row["share_l1_gap"] = sum(abs(a - b) for a, b in zip(row["shares"], reference["shares"]))
        if predicted_move:
            row["gap_of_move"] = abs(row["reward_gap"]) / abs(predicted_move)
    return rows


def _table(rows: list[dict[str, Any]], own: str) -> str:
    head = f"{'solver':>12} {'NFE':>6} {'seconds':>8} {'reward':>9} {'gap':>9} {'share L1':>9} {'gap/move':>9}"
    lines = [head, "-" * len(head)]
    for row in rows:
        l1 = f"{row['share_l1_gap']:9.4f}" if "share_l1_gap" in row else f"{'-':>9}"
        move = f"{row['gap_of_move']:8.0%} " if "gap_of_move" in row else f"{'-':>9}"
        mark = "  <- the run's" if row["solver"] == own else ("  reference" if row["solver"] == "dopri5" else "")
        lines.append(f"{row['solver']:>12} {row['nfe']:6.0f} {row['seconds']:8.2f} {row['reward_mean']:9.4f} "
                     f"{row['reward_gap']:+9.4f} {l1} {move}{mark}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diagnose solver``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a run directory (its config.yaml and checkpoints/last.ckpt)")
    parser.add_argument("--ckpt", type=Path, default=None, help="another checkpoint of that run")
    parser.add_argument("--solvers", nargs="+", default=None,
                        help="euler:N, midpoint:N, rk4:N (default: the run's own and the others at its NFE)")
    parser.add_argument("-n", type=int, default=8000, help="samples per solver (default 8000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shared source noise (default 0)")
    parser.add_argument("--tolerance", type=float, default=1e-5,
                        help="rtol = atol of the dopri5 reference (default 1e-5)")
    parser.add_argument("--device", default="cpu", help="where the samples are drawn (default cpu)")
    parser.add_argument("--json", action="store_true", help="also print the rows as one JSON line")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Sample with every solver, print the table (and ``--json``); 0 on success."""
    if args.n < 2:
        parser.error(f"-n must be >= 2, got {args.n}")
    if not 0 < args.tolerance < 1:
        parser.error(f"--tolerance must be in (0, 1), got {args.tolerance}")
    try:
        solvers = [parse_solver(s) for s in args.solvers] if args.solvers else None
    except ValueError as err:
        parser.error(str(err))
    try:
        module, datamodule, config = load_run(args.run_dir, args.ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise DiagnosticError(str(err)) from err
    torch.set_num_threads(int(config.get("torch_num_threads") or torch.get_num_threads()))
    generator = module.generator
    own = solver_label(generator.solver, -1 if generator.solver == "dopri5" else generator.steps, generator.rtol)
    solvers = solvers or same_cost_solvers(generator.solver, generator.steps)
    move = smallest_counted_move(args.run_dir)
    print(f"{args.run_dir}: {args.n} samples per solver, the same source noise (seed {args.seed})", flush=True)
    rows = check_solvers(module, datamodule, solvers, n=args.n, seed=args.seed, device=args.device,
                         tolerance=args.tolerance, predicted_move=move)
    print(_table(rows, own))
    if move:
        print(f"gap/move: |reward gap| over the smallest predicted move whose fidelity the run reports "
              f"({move:+.4f}, rounds.csv); a solver's gap counts as the learner's in that ratio")
    if args.json:
        print(json.dumps(rows))
    return 0
