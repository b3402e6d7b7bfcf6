"""``lightning-curate diagnose jitter``: how far a round's result moves when only the learner's randomness changes.

The fidelity of round ``t`` compares the generator's move with the ideal learner's prediction.
Two noises sit in that move: the sampling noise of the measured means (which ``rounds.csv``
already counts) and the learner's *refit jitter*: trained again on the same curated data from the
same weights, with another batch order, the generator lands somewhere else. Late in a run, when
the predicted move is small, that jitter can be larger than the move itself, and the ratio means
nothing.

For each requested round ``t`` the config is run up to round ``t - 1`` once, then round ``t`` is
retrained ``--refits`` times from that same checkpoint and store, each with another shuffling seed
(``data.init_args.seed``; refit 0 keeps the config's, so it is the run's own round ``t``). The
loop's seed stays, so every refit generates its candidates from the same noise: the sampling
noise is common to the refits and their spread is the learner's own. Under ``real_fraction > 0``
or ``policy: accumulate_subsample`` the shuffling seed also draws which real or stored samples a
round blends in, so there the spread includes that resampling too.

The jitter shrinks with the sampling error as the rewards concentrate, so its multiple of that
error is what carries from round to round: pass the largest as
``RetrainingLoop(learner_noise=...)``. With four refits a spread is known to about +-40%, hence
the largest. The config comes from a run directory (its ``config.yaml``, only read) or from
config files (``-c``, as for ``fit``); the trainings run in ``--work-dir``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lightning_curate.diagnostics.common import DiagnosticError, progress
from lightning_curate.experiments.aggregate import as_float
from lightning_curate.experiments.config_keys import SweepError, loop_entry
from lightning_curate.loop.schedule import SlotSchedule
from lightning_curate.utils.columns import SHARE

__all__ = ["add_arguments", "candidates_of_round", "composed_config", "jitter_of_rows", "run"]


def composed_config(config_files: list[str]) -> dict[str, Any]:
    """The config ``fit`` builds from ``config_files`` (later files override earlier ones).

    Raises:
        DiagnosticError: the files do not compose (missing, bad YAML, unknown keys), with ``fit``'s reason.
    """
    args = [sys.executable, "-m", "lightning_curate", "fit"]
    for name in config_files:
        args += ["-c", name]
    proc = subprocess.run(args + ["--print_config"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        why = lines[-1].removeprefix("error: ") if lines else f"exit status {proc.returncode}"
        raise DiagnosticError(f"cannot compose {' + '.join(config_files)}: {why}")
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


def _run(config: dict[str, Any], run_dir: Path, rounds: int, data_seed: int, resume: bool,
         reused: bool = False) -> None:
    """Run ``config`` in ``run_dir`` up to ``rounds``; ``reused``: ``run_dir`` may hold an earlier
    base of this diagnostic, which must then be of the same config."""
    old = str(config["trainer"]["default_root_dir"])
    cfg = _in_dir(config, old, str(run_dir.resolve()))
    for callback in cfg["trainer"].get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath")
        if dirpath is not None and not Path(dirpath).resolve().is_relative_to(run_dir.resolve()):
            raise DiagnosticError(f"{callback['class_path']} saves to {dirpath}, outside the run directory {old}: "
                                  "the refits would share its checkpoints; put its dirpath under the run's")
    loop_entry(cfg).setdefault("init_args", {}).update(rounds=rounds, plots=False)
    cfg["data"]["init_args"]["seed"] = data_seed
    path = run_dir.parent / f"{run_dir.name}.yaml"
    if reused and path.is_file() and _without_rounds(yaml.safe_load(path.read_text())) != _without_rounds(cfg):
        raise DiagnosticError(f"{run_dir} was trained with another config than {path.name} would now hold "
                              "(a reused --work-dir from another config?); use a new --work-dir")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = [sys.executable, "-m", "lightning_curate", "fit", "-c", str(path)]
    if resume:
        args += ["--ckpt_path", "last"]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise DiagnosticError(f"the run in {run_dir} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _check_base(base: Path, t: int, trained: bool) -> None:
    """Refuse a base (a reused ``--work-dir``) that holds rounds past ``t - 1``: its refits would
    train nothing. Once trained, it must end exactly at ``t - 1``."""
    done = _last_round(base) if (base / "rounds.csv").is_file() else -1
    if done > t - 1 or (trained and done != t - 1):
        raise DiagnosticError(f"{base} holds rounds up to {done}, so round {t} cannot be refitted from it; "
                              "use a new --work-dir, or ask for later rounds only")


def _without_rounds(cfg: Any) -> Any:
    """``cfg`` with the loop's ``rounds`` left out: what a resumed base must share with its config."""
    if not isinstance(cfg, dict):
        return cfg
    out = copy.deepcopy(cfg)
    try:
        (loop_entry(out).get("init_args") or {}).pop("rounds", None)
    except SweepError:  # no loop at all: nothing to leave out
        pass
    return out


def _row(run_dir: Path, round_idx: int) -> dict[str, float]:
    with open(run_dir / "rounds.csv") as fh:
        for row in csv.DictReader(fh):
            if int(row["round"]) == round_idx:
                cells = {k: as_float(v) for k, v in row.items()}
                return {k: v for k, v in cells.items() if not math.isnan(v)}  # numbers only
    raise DiagnosticError(f"{run_dir / 'rounds.csv'} has no round {round_idx}")


def _last_round(run_dir: Path) -> int:
    with open(run_dir / "rounds.csv") as fh:
        return max(int(row["round"]) for row in csv.DictReader(fh))


def candidates_of_round(model: dict[str, Any], round_idx: int) -> int:
    """The candidates round ``round_idx``'s means are measured on: its slots times ``num_candidates``.

    Its slots are ``num_slots``, or what ``num_slots_schedule`` gives for that round
    (:meth:`~lightning_curate.loop.SlotSchedule.slots`, as the module's ``slots_of_round``).

    Args:
        model: a composed config's ``model.init_args``.
        round_idx: the round (its row of ``rounds.csv``).

    Example:
        >>> model = {"num_slots": 100, "num_candidates": 4, "num_slots_schedule": {"kind": "geometric", "factor": 2.0}}
        >>> candidates_of_round(model, 0), candidates_of_round(model, 2)
        (400, 1600)
    """
    num_slots = int(model["num_slots"])
    schedule = model.get("num_slots_schedule")
    if schedule is not None:
        fields = schedule.get("init_args", schedule) if isinstance(schedule, dict) else schedule
        num_slots = SlotSchedule(**fields).slots(num_slots, round_idx)
    return num_slots * int(model["num_candidates"])


def jitter_of_rows(rows: list[dict[str, float]], num_candidates: int) -> dict[str, Any]:
    """The refits' spread of one round's ``reward_mean`` and class shares, against their sampling error.

    The refits draw their candidates from the same noise (the loop's seed), so sampling noise
    is common to them and their spread is the learner's own.

    Args:
        rows: round ``t``'s row of each refit (at least two).
        num_candidates: candidates a round's means are measured on (``num_slots * K``).

    Returns:
        ``reward_spread`` (the standard deviation of ``reward_mean`` over the refits),
        ``reward_sampling_se`` (``reward_std / sqrt(n)``) and ``reward_ratio`` (their ratio); for
        the class share whose ratio is largest ``share_class``, ``share_spread``,
        ``share_sampling_se`` and ``share_ratio``; ``learner_noise``, the larger ratio.

    Example:
        >>> rows = [{"reward_mean": m, "reward_std": 1.0} for m in (0.0, 0.2)]
        >>> round(jitter_of_rows(rows, 100)["learner_noise"], 3)
        1.414
    """
    if len(rows) < 2:
        raise ValueError(f"jitter needs at least two refits, got {len(rows)}")
    n = max(1, int(num_candidates))
    spread = statistics.stdev([r["reward_mean"] for r in rows])
    se = sum(r.get("reward_std", 0.0) for r in rows) / len(rows) / math.sqrt(n)
    out: dict[str, Any] = {"reward_spread": spread, "reward_sampling_se": se,
                           "reward_ratio": spread / se if se > 0 else math.inf}
    shares = {}
    for name in [k for k in SHARE.columns(rows[0]) if all(k in r for r in rows)]:
        values = [r[name] for r in rows]
        mean = sum(values) / len(values)
        share_se = max(math.sqrt(max(mean * (1 - mean), 0.0) / n), 1.0 / n)  # as the loop's noise rule
        shares[name] = (statistics.stdev(values), share_se)
    if shares:
        name, (spread, se) = max(shares.items(), key=lambda item: item[1][0] / item[1][1])
        out.update(share_class=SHARE.name_of(name), share_spread=spread, share_sampling_se=se,
                   share_ratio=spread / se)
    out["learner_noise"] = max(out["reward_ratio"], out.get("share_ratio", 0.0))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``diagnose jitter``."""
    parser.add_argument("run_dir", type=Path, nargs="?", default=None, metavar="RUN_DIR",
                        help="a run directory whose config.yaml is retrained (only read); or give -c")
    parser.add_argument("-c", "--config", action="append", default=None,
                        help="config file(s), as for fit, instead of RUN_DIR")
    parser.add_argument("--rounds", type=int, nargs="+", required=True, help="rounds t >= 1 to refit")
    parser.add_argument("--refits", type=int, default=4, help="trainings of each round (>= 2; default 4)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the trainings run and stay (default: a new temporary folder)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every number")


def _config_files(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    if (args.run_dir is None) == (args.config is None):
        parser.error("give either RUN_DIR (a run's saved config.yaml) or -c CONFIG, not both or neither")
    if args.config is not None:
        return list(args.config)
    config = args.run_dir / "config.yaml"
    if not config.is_file():
        raise DiagnosticError(f"run directory {args.run_dir}: no config.yaml (is it a lightning-curate run?); "
                              "to start from config files, give -c CONFIG instead")
    if args.work_dir is not None and args.work_dir.resolve().is_relative_to(args.run_dir.resolve()):
        parser.error(f"--work-dir {args.work_dir} is inside RUN_DIR {args.run_dir}, which is only read")
    return [str(config)]


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Train the refits, print the table (and ``--json``); 0 on success."""
    files = _config_files(args, parser)
    if args.refits < 2:
        parser.error(f"--refits must be >= 2, got {args.refits}")
    if any(t < 1 for t in args.rounds):
        parser.error(f"--rounds must be >= 1 (round 0 is pre-training), got {args.rounds}")
    config = composed_config(files)
    try:
        model = config["model"]["init_args"]
        candidates_of_round(model, max(args.rounds))  # a bad num_slots_schedule is named before any training
        seed = int(config["data"]["init_args"].get("seed") or 0)
        loop_entry(config)
    except (KeyError, TypeError, ValueError, SweepError) as err:
        raise DiagnosticError(f"{' + '.join(files)}: not a curated-retraining config (model.init_args.num_slots, "
                              f"num_candidates, num_slots_schedule, data.init_args and a RetrainingLoop callback): "
                              f"{err}") from err
    work = Path(tempfile.mkdtemp(prefix="learner_jitter_")) if args.work_dir is None else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    base, results = work / "base", {}
    rounds = sorted(set(args.rounds))
    with progress(len(rounds) * (1 + args.refits), "jitter: trainings", "run") as bar:
        for t in rounds:
            bar.set_postfix_str(f"round {t}: rounds 0-{t - 1} once, then {args.refits} refits")
            _check_base(base, t, trained=False)  # Lightning would refuse to resume a base that went further
            _run(config, base, t - 1, seed, resume=(base / "checkpoints" / "last.ckpt").exists(), reused=True)
            _check_base(base, t, trained=True)
            bar.update()
            rows = []
            for k in range(args.refits):
                refit = work / f"round{t}_refit{k}"
                shutil.rmtree(refit, ignore_errors=True)
                shutil.copytree(base, refit)
                _run(config, refit, t, seed + k, resume=True)  # refit 0 is the run's own next round
                rows.append(_row(refit, t))
                bar.update()
            # the round's own pool: under a num_slots_schedule it is not the base num_slots'
            results[t] = {**jitter_of_rows(rows, candidates_of_round(model, t)),
                          "reward_means": [r["reward_mean"] for r in rows],
                          "reward_fidelity": [r.get("reward_fidelity", math.nan) for r in rows],
                          "learner_gap": [r.get("learner_gap", math.nan) for r in rows]}
    print(_table(results))
    noise = max(r["learner_noise"] for r in results.values())
    print(f"learner_noise: {noise:.2f}   (the largest ratio over rounds {sorted(results)}: the learner's refit "
          f"jitter in units of a round mean's sampling error; runs in {work})")
    if args.json:
        print(json.dumps({"rounds": results, "learner_noise": noise}))
    return 0


def _table(results: dict[int, dict[str, Any]]) -> str:
    lines = [f"{'round':>5} {'reward_mean of each refit':>34} {'spread':>8} {'samp.se':>8} {'ratio':>6}"
             f" {'share':>8} {'spread':>8} {'samp.se':>8} {'ratio':>6}  fidelity of each refit  (learner gap)"]
    for t, r in results.items():
        means = ", ".join(f"{m:.4f}" for m in r["reward_means"])
        fidelity = ", ".join(f"{f:.2f}" for f in r["reward_fidelity"])
        gaps = ", ".join(f"{g:+.4f}" for g in r["learner_gap"])
        lines.append(f"{t:5d} {means:>34} {r['reward_spread']:8.4f} {r['reward_sampling_se']:8.4f} "
                     f"{r['reward_ratio']:6.2f} {r.get('share_class', '-'):>8} {r.get('share_spread', math.nan):8.4f} "
                     f"{r.get('share_sampling_se', math.nan):8.4f} {r.get('share_ratio', math.nan):6.2f}  {fidelity}"
                     f"  ({gaps})")
    return "\n".join(lines)
