#!/usr/bin/env python
"""How far a round's result moves when only the learner's own randomness changes.

The fidelity of round ``t`` compares the generator's move with the ideal
learner's prediction. Two noises sit in that move: the sampling noise of the
measured means (which ``rounds.csv`` already counts) and the learner's *refit
jitter*: trained again on the same curated data from the same weights, with
another batch order, the generator lands somewhere else. Late in a run, when
the predicted move is a hundredth of a reward unit, that jitter can be larger
than the move itself, and the ratio means nothing.

This script measures the jitter for a config. For each requested round ``t``
it runs the config up to round ``t - 1`` once, then retrains round ``t``
``--refits`` times from that same checkpoint and store, each with another
shuffling seed (``--data.init_args.seed``; refit 0 keeps the config's, so it is
the run's own round ``t``), and compares the rows of round ``t``. The loop's
seed stays, so every refit generates its candidates from the same noise: the
sampling noise is common to the refits, and their spread is the learner's own.
It prints, per round, the refits' ``reward_mean``, their spread, the sampling
error a round's mean has on its own (for scale), and the same for the class
share that moves most. Pass the largest spreads as
``RetrainingLoop(learner_noise=..., learner_share_noise=...)``: a round's
fidelity is then reported only where the predicted move stands above both
noises.

Examples::

    python scripts/learner_jitter.py -c configs/mog8.yaml --rounds 3 6 9 --refits 4
    python scripts/learner_jitter.py -c configs/mog8.yaml -c configs/overlays/moons.yaml --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

__all__ = ["composed_config", "jitter_of_rows", "main"]


def composed_config(config_files: list[str]) -> dict[str, Any]:
    """The config the CLI builds from ``config_files`` (later files override earlier ones)."""
    args = [sys.executable, "-m", "lightning_curate", "fit"]
    for name in config_files:
        args += ["-c", name]
    proc = subprocess.run(args + ["--print_config"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: cannot compose {config_files}: {proc.stderr.strip().splitlines()[-1:]}")
    return yaml.safe_load(proc.stdout)


def _in_dir(value: Any, old: str, new: str) -> Any:
    """``value`` with every path under ``old`` (the config's run directory) moved under ``new``."""
    if isinstance(value, dict):
        return {k: _in_dir(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_in_dir(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old.rstrip("/") + "/")):
        return new + value[len(old):]
    return value


def _run(config: dict[str, Any], run_dir: Path, rounds: int, data_seed: int, resume: bool) -> None:
    old = str(config["trainer"]["default_root_dir"])
    cfg = _in_dir(config, old, str(run_dir))
    loop = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("RetrainingLoop"))
    loop["init_args"].update(rounds=rounds, plots=False)
    cfg["data"]["init_args"]["seed"] = data_seed
    path = run_dir.parent / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = [sys.executable, "-m", "lightning_curate", "fit", "-c", str(path)]
    if resume:
        args += ["--ckpt_path", "last"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: the run in {run_dir} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _row(run_dir: Path, round_idx: int) -> dict[str, float]:
    with open(run_dir / "rounds.csv") as fh:
        for row in csv.DictReader(fh):
            if int(row["round"]) == round_idx:
                return {k: float(v) for k, v in row.items() if v not in ("", None) and _is_number(v)}
    raise SystemExit(f"error: {run_dir / 'rounds.csv'} has no round {round_idx}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _std(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def jitter_of_rows(rows: list[dict[str, float]], num_candidates: int) -> dict[str, float]:
    """The refits' spread of one round's ``reward_mean`` and class shares: the learner's noise.

    The refits draw their candidates from the same noise (the loop's seed), so sampling noise
    is common to them and their spread is the learner's own; the sampling error of one round's
    mean is returned beside it, for scale.

    Args:
        rows: round ``t``'s row of each refit (at least two).
        num_candidates: candidates a round's means are measured on (``num_slots * K``).

    Returns:
        ``learner_noise`` (the standard deviation of ``reward_mean`` over the refits),
        ``reward_sampling_se`` (``reward_std / sqrt(n)``), and for the class share whose spread
        is largest ``share_class``, ``learner_share_noise`` and ``share_sampling_se``.

    Example:
        >>> rows = [{"reward_mean": m, "reward_std": 1.0} for m in (0.0, 0.2)]
        >>> round(jitter_of_rows(rows, 100)["learner_noise"], 4)
        0.1414
    """
    if len(rows) < 2:
        raise ValueError(f"jitter needs at least two refits, got {len(rows)}")
    n = max(1, int(num_candidates))
    out = {"learner_noise": _std([r["reward_mean"] for r in rows]),
           "reward_sampling_se": sum(r.get("reward_std", 0.0) for r in rows) / len(rows) / math.sqrt(n)}
    names = [k for k in rows[0] if k.startswith("share_") and all(k in r for r in rows)]
    if names:
        name = max(names, key=lambda k: _std([r[k] for r in rows]))
        mean = sum(r[name] for r in rows) / len(rows)
        out.update(share_class=name[len("share_"):], learner_share_noise=_std([r[name] for r in rows]),
                   share_sampling_se=math.sqrt(max(mean * (1 - mean), 0.0) / n))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="config file(s), as for fit")
    parser.add_argument("--rounds", type=int, nargs="+", required=True, help="rounds t >= 1 to refit")
    parser.add_argument("--refits", type=int, default=4, help="trainings of each round (>= 2; default 4)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here (default: a temp folder)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    args = parser.parse_args(argv)
    if args.refits < 2:
        parser.error(f"--refits must be >= 2, got {args.refits}")
    if any(t < 1 for t in args.rounds):
        parser.error(f"--rounds must be >= 1 (round 0 is pre-training), got {args.rounds}")
    config = composed_config(args.config)
    model = config["model"]["init_args"]
    num_candidates = int(model["num_slots"]) * int(model["num_candidates"])
    seed = int(config["data"]["init_args"].get("seed") or 0)
    work = Path(tempfile.mkdtemp(prefix="learner_jitter_")) if args.work_dir is None else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    base, results = work / "base", {}
    for t in sorted(set(args.rounds)):
        print(f"round {t}: training rounds 0-{t - 1} once, then round {t} {args.refits} times", file=sys.stderr)
        _run(config, base, t - 1, seed, resume=(base / "checkpoints" / "last.ckpt").exists())
        rows = []
        for k in range(args.refits):
            refit = work / f"round{t}_refit{k}"
            shutil.rmtree(refit, ignore_errors=True)
            shutil.copytree(base, refit)
            _run(config, refit, t, seed + k, resume=True)  # refit 0 is the run's own next round
            rows.append(_row(refit, t))
        results[t] = {**jitter_of_rows(rows, num_candidates), "reward_means": [r["reward_mean"] for r in rows],
                      "reward_fidelity": [r.get("reward_fidelity", math.nan) for r in rows]}
    print(f"{'round':>5} {'reward_mean of each refit':>34} {'learner':>8} {'samp.se':>8} {'share':>8}"
          f" {'learner':>8} {'samp.se':>8} {'fidelity of each refit':>30}")
    for t, r in results.items():
        means = ", ".join(f"{m:.4f}" for m in r["reward_means"])
        fidelity = ", ".join(f"{f:.2f}" for f in r["reward_fidelity"])
        print(f"{t:5d} {means:>34} {r['learner_noise']:8.4f} {r['reward_sampling_se']:8.4f} "
              f"{r.get('share_class', '-'):>8} {r.get('learner_share_noise', math.nan):8.4f} "
              f"{r.get('share_sampling_se', math.nan):8.4f} {fidelity:>30}")
    noise = max(r["learner_noise"] for r in results.values())
    share_noise = max((r.get("learner_share_noise", 0.0) for r in results.values()), default=0.0)
    print(f"learner_noise: {noise:.4g}   learner_share_noise: {share_noise:.4g}   "
          f"(the largest over rounds {sorted(results)}; runs in {work})")
    if args.json:
        print(json.dumps({"rounds": results, "learner_noise": noise, "learner_share_noise": share_noise}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
