"""``lightning-curate-sweep``: run a grid of curated-retraining runs over seeds, resumably, and aggregate them.

::

    lightning-curate-sweep --config configs/discrete.yaml \\
        --grid data.init_args.real_fraction=0,0.5 --grid model.init_args.num_candidates=2,4 \\
        --seeds 0,1,2 --out runs/sweep [--jobs 2]
    lightning-curate-sweep configs/sweeps/discrete.yaml      # the same, from a sweep file

Every grid point x seed is one ordinary run of the console script, in a
subprocess (``python -m lightning_curate fit -c <run>/sweep_config.yaml ...``),
in ``<out>/<point>/seed=<s>/``. The run's config is the base config with the
grid values and the seed merged in, written beside the run, so each run can be
re-run or inspected alone. A seed sets ``seed_everything``, the
``RetrainingLoop``'s ``seed`` and the DataModule's ``seed`` (the real dataset
stays the same).

Keys are dotted paths into the config: ``data.init_args.real_fraction``;
``init_args`` may be left out (``data.real_fraction``, ``model.num_candidates``);
``loop.<arg>`` is the ``RetrainingLoop`` callback's argument (``loop.rounds``);
list items take an index (``trainer.callbacks.0.init_args.seed``). Values are
read as YAML (``0.5``, ``true``, ``euler``, ``[0, 1]``).

Runs already finished (their ``rounds.csv`` has every round the config asks for)
are skipped; unfinished runs with a checkpoint resume with ``--ckpt_path last``.
At the end every ``rounds.csv`` goes into ``<out>/sweep.csv`` (one row per point
x seed x round) and every metric gets a figure, ``<out>/figures/<metric>.png``:
the mean over seeds per round, with a 95% confidence band (Student t), one line
per grid point.
"""

from __future__ import annotations

import argparse
import copy
import csv
import fnmatch
import itertools
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import yaml

__all__ = [
    "SweepError",
    "RunSpec",
    "RunResult",
    "parse_grid_spec",
    "parse_seeds",
    "set_key",
    "get_key",
    "plan_sweep",
    "run_status",
    "run_sweep",
    "aggregate",
    "plot_sweep",
    "load_sweep_file",
    "main",
]

LOOP_CLASS = "RetrainingLoop"
CONFIG_NAME = "sweep_config.yaml"
LOG_NAME = "sweep.log"
TABLE_NAME = "sweep.csv"
# Columns that are bookkeeping rather than metrics: no figure for them.
NOT_METRICS = ("round", "epoch", "real_fraction", "n_real", "n_synthetic")


class SweepError(ValueError):
    """A bad sweep specification (grid, seeds, keys, base config)."""


# --------------------------------------------------------------------------- #
# specification
# --------------------------------------------------------------------------- #


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets or braces."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _yaml_value(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SweepError(f"{what}: cannot read {text!r} as a YAML value ({err})") from None


def parse_grid_spec(spec: str) -> tuple[str, list]:
    """``"data.init_args.real_fraction=0,0.5"`` -> ``("data.init_args.real_fraction", [0, 0.5])``."""
    example = "e.g. --grid data.init_args.real_fraction=0,0.5"
    if not isinstance(spec, str) or "=" not in spec:
        raise SweepError(f"bad grid spec {spec!r}: expected KEY=VALUE1,VALUE2,... ({example})")
    key, _, values = spec.partition("=")
    key = key.strip()
    _check_key(key, spec)
    items = _split_values(values)
    if not values.strip() or any(item == "" for item in items):
        raise SweepError(f"bad grid spec {spec!r}: empty value in {values!r} ({example})")
    parsed = [_yaml_value(item, f"grid spec {spec!r}") for item in items]
    _check_distinct(key, parsed)
    return key, parsed


def _check_key(key: str, where: str) -> None:
    if not key or any(not part for part in key.split(".")) or any(ch.isspace() for ch in key):
        raise SweepError(f"bad key {key!r} in {where!r}: expected a dotted config path such as "
                         "data.init_args.real_fraction")


def _check_distinct(key: str, values: list) -> None:
    if not values:
        raise SweepError(f"grid key {key!r} has no values")
    seen = [yaml.safe_dump(v) for v in values]
    if len(set(seen)) != len(seen):
        raise SweepError(f"grid key {key!r} lists a value twice: {values}")


def parse_set_spec(spec: str) -> tuple[str, Any]:
    """``"loop.rounds=3"`` -> ``("loop.rounds", 3)`` (one value, applied to every run)."""
    if not isinstance(spec, str) or "=" not in spec:
        raise SweepError(f"bad --set {spec!r}: expected KEY=VALUE, e.g. --set loop.rounds=3")
    key, _, value = spec.partition("=")
    key = key.strip()
    _check_key(key, spec)
    if not value.strip():
        raise SweepError(f"bad --set {spec!r}: empty value")
    return key, _yaml_value(value.strip(), f"--set {spec!r}")


def parse_seeds(spec) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` or a list of ints -> a list of distinct ints."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [spec]
    items: list = []
    if isinstance(spec, str):
        for part in _split_values(spec):
            if not part:
                raise SweepError(f"bad seeds {spec!r}: empty item (expected e.g. 0,1,2 or 0-4)")
            match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if match:
                lo_i, hi_i = int(match.group(1)), int(match.group(2))
                if hi_i < lo_i:
                    raise SweepError(f"bad seeds {spec!r}: empty range {part!r}")
                items.extend(range(lo_i, hi_i + 1))
            else:
                items.append(part)
    elif isinstance(spec, (list, tuple)):
        items = list(spec)
    else:
        raise SweepError(f"bad seeds {spec!r}: expected e.g. 0,1,2")
    seeds = []
    for item in items:
        try:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError
            seeds.append(int(item))
        except (TypeError, ValueError):
            raise SweepError(f"bad seeds {spec!r}: {item!r} is not an integer") from None
    if not seeds:
        raise SweepError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds must be distinct, got {seeds}")
    return seeds


# --------------------------------------------------------------------------- #
# config paths
# --------------------------------------------------------------------------- #


def _loop_entry(config: dict) -> dict:
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    if isinstance(callbacks, dict):
        callbacks = [callbacks]
    for cb in callbacks:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).split(".")[-1] == LOOP_CLASS:
            return cb
    raise SweepError(f"the base config has no {LOOP_CLASS} callback under trainer.callbacks "
                     "(class_path: lightning_curate.loop.RetrainingLoop); a sweep runs curated-retraining runs")


def _resolve(config: dict, key: str, create: bool) -> tuple[Any, Any]:
    """The container holding ``key``'s last part, and that part (a str or an int index)."""
    parts = key.split(".")
    if parts[0] == "loop":
        node: Any = _loop_entry(config).setdefault("init_args", {})
        parts, walked = parts[1:], ["loop"]
        if not parts:
            raise SweepError(f"key {key!r}: name an argument of the loop, e.g. loop.rounds")
    else:
        node, walked = config, []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            try:
                idx = int(part)
            except ValueError:
                raise SweepError(f"key {key!r}: {'.'.join(walked) or 'the config'} is a list; "
                                 f"index it with a number, not {part!r}") from None
            if not -len(node) <= idx < len(node):
                raise SweepError(f"key {key!r}: index {idx} out of range for {'.'.join(walked)} "
                                 f"({len(node)} items)")
            if last:
                return node, idx
            node, walked = node[idx], walked + [part]
            continue
        if not isinstance(node, dict):
            raise SweepError(f"key {key!r}: {'.'.join(walked)} is a value ({node!r}), not a section")
        if part not in node and part != "init_args" and "class_path" in node:
            # `model.num_candidates` means `model.init_args.num_candidates`.
            node = node.setdefault("init_args", {})
            walked = walked + ["init_args"]
        if last:
            if part not in node and not create:
                raise SweepError(f"key {key!r}: no {part!r} in {'.'.join(walked) or 'the config'}")
            return node, part
        if part not in node or node[part] is None:
            if not create:
                raise SweepError(f"key {key!r}: no {part!r} in {'.'.join(walked) or 'the config'}")
            known = ", ".join(sorted(map(str, node))) or "nothing"
            raise SweepError(f"key {key!r}: the base config has no section {'.'.join(walked + [part])!r} "
                             f"({'.'.join(walked) or 'the top level'} holds: {known})")
        node, walked = node[part], walked + [part]
    raise SweepError(f"bad key {key!r}")  # pragma: no cover - parts is never empty


def set_key(config: dict, key: str, value: Any) -> None:
    """Set a dotted ``key`` (see the module docstring) in ``config``, in place.

    A missing last part is created (a class argument the base config leaves at its
    default); a missing section is an error naming what is there.
    """
    container, part = _resolve(config, key, create=True)
    container[part] = copy.deepcopy(value)


def get_key(config: dict, key: str, default: Any = None) -> Any:
    try:
        container, part = _resolve(config, key, create=False)
    except SweepError:
        return default
    return container[part]


# --------------------------------------------------------------------------- #
# planning
# --------------------------------------------------------------------------- #


@dataclass
class RunSpec:
    """One run of the sweep: a grid point and a seed."""

    point: str
    values: dict[str, Any]
    seed: int
    run_dir: Path
    config: dict
    rounds: int

    @property
    def label(self) -> str:
        return " ".join(f"{_short(k, self.values)}={_fmt(v)}" for k, v in self.values.items()) + f" seed={self.seed}"


@dataclass
class RunResult:
    spec: RunSpec
    status: str  # "skipped", "fresh", "resumed", "failed"
    seconds: float = 0.0
    returncode: Optional[int] = None
    rounds_done: int = 0
    message: str = ""


def _fmt(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _short(key: str, values: dict) -> str:
    return _short_names(list(values))[key]


def _dir_name(values: dict[str, Any]) -> str:
    if not values:
        return "base"
    names = _short_names(list(values))
    text = "__".join(f"{names[k]}={_fmt(v)}" for k, v in values.items())
    safe = "".join(ch if ch.isalnum() or ch in "=._-" else "_" for ch in text)
    return safe[:200]


def load_base_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"base config {str(path)!r} not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"base config {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise SweepError(f"base config {str(path)!r} must be a YAML mapping (a LightningCLI config)")
    return config


def _isolate_run_dirs(config: dict, run_dir: Path) -> list[str]:
    """Point the checkpoint and logger directories of ``config`` into ``run_dir``; returns notes."""
    notes = []
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    callbacks = trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if not isinstance(cb, dict) or not str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            continue
        args = cb.setdefault("init_args", {})
        dirpath = args.get("dirpath")
        if dirpath is not None and "${" not in str(dirpath):
            args["dirpath"] = str(run_dir / "checkpoints")
            notes.append(f"ModelCheckpoint dirpath {dirpath!r} -> {args['dirpath']!r}")
    logger = trainer.get("logger")
    for lg in logger if isinstance(logger, list) else [logger]:
        if isinstance(lg, dict):
            args = lg.get("init_args") or {}
            save_dir = args.get("save_dir")
            if save_dir is not None and "${" not in str(save_dir):
                args["save_dir"] = str(run_dir)
                notes.append(f"logger save_dir {save_dir!r} -> {str(run_dir)!r}")
    return notes


def plan_sweep(base: dict, grid: dict[str, list], seeds: Sequence[int], out, *,
               fixed: Optional[dict[str, Any]] = None) -> list[RunSpec]:
    """Every grid point x seed as a :class:`RunSpec` with its merged config (nothing written)."""
    out = Path(out).absolute()
    fixed = dict(fixed or {})
    keys = list(grid)
    for key in keys:
        _check_key(key, key)
        _check_distinct(key, list(grid[key]))
    combos = list(itertools.product(*(grid[k] for k in keys))) if keys else [()]
    _loop_entry(base)  # a clear error first when the base has no loop
    specs = []
    names = set()
    for combo in combos:
        values = dict(zip(keys, combo))
        point = _dir_name(values)
        if point in names:
            raise SweepError(f"two grid points map to the directory {point!r}; use distinct values")
        names.add(point)
        for seed in seeds:
            config = copy.deepcopy(base)
            for key, value in {**fixed, **values}.items():
                set_key(config, key, value)
            config["seed_everything"] = seed
            _loop_entry(config).setdefault("init_args", {})["seed"] = seed
            data = config.get("data")
            if isinstance(data, dict) and "class_path" in data:
                data.setdefault("init_args", {})["seed"] = seed
            run_dir = out / point / f"seed={seed}"
            _isolate_run_dirs(config, run_dir)
            rounds = _loop_entry(config).get("init_args", {}).get("rounds", 10)
            if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
                raise SweepError(f"{point} seed={seed}: loop rounds must be an int >= 0, got {rounds!r}")
            specs.append(RunSpec(point=point, values=values, seed=seed, run_dir=run_dir, config=config,
                                 rounds=rounds))
    return specs


# --------------------------------------------------------------------------- #
# running
# --------------------------------------------------------------------------- #


def _table_path(run_dir: Path) -> Optional[Path]:
    direct = run_dir / "rounds.csv"
    if direct.is_file():
        return direct
    found = sorted((p for p in run_dir.rglob("rounds.csv") if "rounds" not in p.parent.parts[len(run_dir.parts):]),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _read_table(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rounds_done(run_dir: Path) -> int:
    path = _table_path(run_dir)
    if path is None:
        return 0
    try:
        return len({int(float(r["round"])) for r in _read_table(path) if r.get("round") not in (None, "")})
    except (OSError, ValueError, KeyError):
        return 0


def _last_checkpoint(run_dir: Path) -> Optional[Path]:
    found = sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if run_dir.exists() else []
    return found[-1] if found else None


def run_status(spec: RunSpec) -> str:
    """``finished`` (every round in rounds.csv), ``resumable`` (a checkpoint), ``stale``
    (stored rounds but no checkpoint: cannot resume) or ``fresh``."""
    if _rounds_done(spec.run_dir) >= spec.rounds + 1:
        return "finished"
    if _last_checkpoint(spec.run_dir) is not None:
        return "resumable"
    store = spec.run_dir / "rounds"
    if store.is_dir() and any(store.iterdir()):
        return "stale"
    return "fresh"


def _changed(config_path: Path, config: dict) -> bool:
    """Whether ``config`` differs from the one saved at ``config_path``, the loop's ``rounds`` aside."""
    try:
        old = yaml.safe_load(config_path.read_text())
    except (OSError, yaml.YAMLError):
        return True
    new = copy.deepcopy(config)
    for cfg in (old, new):
        try:
            _loop_entry(cfg).get("init_args", {}).pop("rounds", None)
        except SweepError:
            return True
    return old != new


def finished_but_changed(spec: RunSpec) -> bool:
    """A finished run whose saved config differs from the planned one (the sweep still skips it)."""
    path = spec.run_dir / CONFIG_NAME
    return path.is_file() and _changed(path, spec.config)


def run_command(spec: RunSpec, config_path: Path, resume: bool, python: str = sys.executable) -> list[str]:
    cmd = [python, "-m", "lightning_curate", "fit", "-c", str(config_path),
           "--trainer.default_root_dir", str(spec.run_dir), "--seed_everything", str(spec.seed)]
    if resume:
        cmd += ["--ckpt_path", "last"]
    return cmd


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _execute(spec: RunSpec, index: int, total: int, *, python: str, timeout: Optional[float],
             env: dict, say: Callable[[str], None]) -> RunResult:
    tag = f"[{index}/{total}] {spec.label}"
    status = run_status(spec)
    if status == "finished":
        changed = " (its saved config differs from this sweep's: delete the run directory to redo it)" \
            if finished_but_changed(spec) else ""
        say(f"{tag}: finished already ({spec.rounds + 1} rounds), skipped{changed}")
        return RunResult(spec, "skipped", rounds_done=_rounds_done(spec.run_dir))
    if status == "stale":
        aside = spec.run_dir.with_name(spec.run_dir.name + f".stale-{int(time.time())}")
        shutil.move(str(spec.run_dir), str(aside))
        say(f"{tag}: stored rounds but no checkpoint to resume from; moved aside to {aside}, starting afresh")
        status = "fresh"
    resume = status == "resumable"
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    config_path = spec.run_dir / CONFIG_NAME
    if resume and config_path.is_file() and _changed(config_path, spec.config):
        say(f"{tag}: note: the config differs from the one this run started with (beyond the number of "
            f"rounds); resuming with the new one. Delete {spec.run_dir} to start it afresh")
    config_path.write_text(yaml.safe_dump(spec.config, sort_keys=False))
    cmd = run_command(spec, config_path, resume, python)
    log_path = spec.run_dir / LOG_NAME
    done_before = _rounds_done(spec.run_dir)
    say(f"{tag}: {'resuming from ' + str(_last_checkpoint(spec.run_dir)) + f' ({done_before} rounds done)' if resume else 'running'}"
        f" -> {spec.run_dir}")
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        # Same process group as the sweep: Ctrl-C reaches the runs too.
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            rc = proc.wait(timeout=timeout)
            message = ""
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, message = proc.returncode, f"timed out after {timeout} s"
    seconds = time.time() - start
    done = _rounds_done(spec.run_dir)
    if rc == 0 and done >= spec.rounds + 1:
        say(f"{tag}: done in {seconds:.1f} s ({done}/{spec.rounds + 1} rounds)")
        return RunResult(spec, "resumed" if resume else "fresh", seconds, rc, done)
    why = message or (f"exit status {rc}" if rc else f"only {done}/{spec.rounds + 1} rounds in rounds.csv")
    say(f"{tag}: FAILED ({why}) after {seconds:.1f} s; the end of {log_path}:\n{_tail(log_path)}")
    return RunResult(spec, "failed", seconds, rc, done, why)


def run_sweep(specs: Sequence[RunSpec], *, jobs: int = 1, timeout: Optional[float] = None,
              python: str = sys.executable, say: Callable[[str], None] = print,
              numbering: Optional[tuple[int, int]] = None) -> list[RunResult]:
    """Run every spec (skipping finished ones, resuming unfinished ones); in ``jobs`` parallel processes.

    ``numbering``: ``(first, total)`` for the ``[i/total]`` progress tags when a sweep is
    run in pieces (default ``(1, len(specs))``).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SweepError(f"jobs must be an int >= 1, got {jobs!r}")
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    lock = threading.Lock()

    def locked_say(text: str) -> None:
        with lock:
            say(text)

    first, total = numbering or (1, len(specs))
    work = [(spec, first + i) for i, spec in enumerate(specs)]
    run = lambda item: _execute(item[0], item[1], total, python=python, timeout=timeout, env=env,  # noqa: E731
                                say=locked_say)
    if jobs == 1:
        return [run(item) for item in work]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(run, work))


# --------------------------------------------------------------------------- #
# aggregation
# --------------------------------------------------------------------------- #


def aggregate(specs: Sequence[RunSpec], out) -> tuple[Path, list[dict]]:
    """Write ``<out>/sweep.csv``: one row per point x seed x round (runs without a table are left out).

    Columns: ``point`` (its directory name), one column per grid key (named by the
    key itself, e.g. ``data.init_args.real_fraction``, so it never clashes with a
    metric), ``seed``, then the columns of ``rounds.csv``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for s in specs for k in s.values))
    rows, metric_cols = [], []
    for spec in specs:
        path = _table_path(spec.run_dir)
        if path is None:
            continue
        for r in _read_table(path):
            r = {c: v for c, v in r.items() if c not in ("point", "seed", *keys)}
            for c in r:
                if c not in metric_cols:
                    metric_cols.append(c)
            rows.append({"point": spec.point, **{k: _fmt(v) for k, v in spec.values.items()},
                         "seed": spec.seed, **r})
    columns = ["point", *keys, "seed", *metric_cols]
    table = out / TABLE_NAME
    tmp = table.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, table)
    return table, rows


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _t_quantile(df: int) -> float:
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return 1.96


def metric_columns(rows: Sequence[dict], patterns: Optional[Sequence[str]] = None,
                   exclude: Sequence[str] = ()) -> list[str]:
    """Numeric per-round columns of the aggregated rows (bookkeeping, grid-key and ``exclude``
    columns left out: grid keys are dotted config paths)."""
    skip = {"point", "seed", *NOT_METRICS, *exclude}
    cols = []
    for r in rows:
        for c in r:
            if c not in cols and c not in skip and "." not in c:
                cols.append(c)
    numeric = []
    for c in cols:
        vals = [_float(r.get(c)) for r in rows]
        if any(math.isfinite(v) for v in vals):
            numeric.append(c)
    if patterns:
        numeric = [c for c in numeric if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    return numeric


def summarise(rows: Sequence[dict], metric: str) -> dict[str, tuple[list[float], list[float], list[float], int]]:
    """Per point: rounds, mean over seeds, 95% half-width, and the number of seeds."""
    by_point: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        v, t = _float(r.get(metric)), _float(r.get("round"))
        if math.isfinite(t):
            by_point.setdefault(r["point"], {}).setdefault(t, [])
            if math.isfinite(v):
                by_point[r["point"]][t].append(v)
    out = {}
    for point, per_round in by_point.items():
        rounds, means, halfs, n_max = [], [], [], 0
        for t in sorted(per_round):
            vals = per_round[t]
            if not vals:
                continue
            n = len(vals)
            mean = sum(vals) / n
            half = 0.0
            if n > 1:
                sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
                half = _t_quantile(n - 1) * sd / math.sqrt(n)
            rounds.append(t)
            means.append(mean)
            halfs.append(half)
            n_max = max(n_max, n)
        out[point] = (rounds, means, halfs, n_max)
    return out


def plot_sweep(rows: Sequence[dict], out_dir, *, metrics: Optional[Sequence[str]] = None,
               point_order: Optional[Sequence[str]] = None) -> list[Path]:
    """One PNG per metric in ``out_dir``: mean over seeds per round with a 95% band, a line per point."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from lightning_curate.plots import save_figure

    out_dir = Path(out_dir)
    paths = []
    cols = metric_columns(rows, metrics)
    for metric in cols:
        summary = summarise(rows, metric)
        if not summary:
            continue
        order = [p for p in (point_order or []) if p in summary] + sorted(p for p in summary
                                                                           if p not in (point_order or []))
        cmap = colormaps["tab10" if len(order) <= 10 else "tab20"]
        fig = Figure(figsize=(6.4, 4.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        n_seeds = 0
        for i, point in enumerate(order):
            rounds, means, halfs, n = summary[point]
            n_seeds = max(n_seeds, n)
            color = cmap(i % cmap.N)
            ax.plot(rounds, means, "-o", ms=3.5, lw=1.6, color=color, label=point.replace("__", ", "))
            if n > 1:
                ax.fill_between(rounds, [m - h for m, h in zip(means, halfs)],
                                [m + h for m, h in zip(means, halfs)], color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        band = f"mean over {n_seeds} seeds, 95% band" if n_seeds > 1 else "one seed"
        ax.set_title(f"{metric} ({band})", fontsize=10)
        ax.grid(True, alpha=0.3, linewidth=0.6)
        if len(order) > 1 or order != ["base"]:
            ax.legend(fontsize=8, loc="best", framealpha=0.85)
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in metric)
        paths.append(save_figure(fig, out_dir / f"{safe}.png"))
    return paths


# --------------------------------------------------------------------------- #
# the console script
# --------------------------------------------------------------------------- #


def load_sweep_file(path) -> dict:
    """A sweep file: ``base`` (config path, relative to the cwd or to the file), ``grid``
    (mapping key -> list of values), ``seeds``, ``out``, optional ``set`` (key -> value),
    ``jobs``, ``metrics`` (column patterns to plot)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SweepError(f"sweep file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(spec, dict):
        raise SweepError(f"sweep file {str(path)!r} must be a mapping with base, grid, seeds, out")
    unknown = set(spec) - {"base", "grid", "seeds", "out", "set", "jobs", "metrics", "timeout"}
    if unknown:
        raise SweepError(f"sweep file {str(path)!r}: unknown keys {sorted(unknown)} "
                         "(expected base, grid, seeds, out, set, jobs, metrics, timeout)")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file {str(path)!r}: grid must map keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep file {str(path)!r}: grid key {key!r} must list its values, got {values!r}")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"sweep file {str(path)!r}: set must map keys to values")
    if spec.get("base") is not None:
        base = Path(str(spec["base"]))
        if not base.is_absolute() and not base.exists() and (path.parent / base).exists():
            spec["base"] = str(path.parent / base)
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-curate-sweep",
        description="Run a grid of curated-retraining runs over seeds (resumable) and aggregate their "
                    "rounds.csv into one table and one figure per metric.",
        epilog="example: lightning-curate-sweep --config configs/discrete.yaml "
               "--grid data.init_args.real_fraction=0,0.5 --grid model.init_args.num_candidates=2,4 "
               "--seeds 0,1,2 --out runs/sweep --jobs 2")
    p.add_argument("sweep_file", nargs="?", help="a sweep YAML (base, grid, seeds, out, set, jobs)")
    p.add_argument("--config", "-c", help="the base config (a lightning-curate fit config)")
    p.add_argument("--grid", "-g", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis; repeat for more axes (their product is the grid)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed override for every run, e.g. loop.rounds=3")
    p.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-4 (default 0)")
    p.add_argument("--out", "-o", help="the sweep's directory (default runs/sweep)")
    p.add_argument("--jobs", "-j", type=int, help="runs in parallel (default 1)")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--metrics", help="comma-separated column patterns to plot (default: every metric)")
    p.add_argument("--no-figures", action="store_true", help="write sweep.csv only")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="run nothing; aggregate what is there")
    return p


def _grid_from_args(file_grid: dict, cli_grid: Iterable[str]) -> dict[str, list]:
    grid = {str(k): list(v) for k, v in (file_grid or {}).items()}
    for spec in cli_grid:
        key, values = parse_grid_spec(spec)
        grid[key] = values
    return grid


def configure(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, dict, list[RunSpec]]:
    """Parse the command line (and sweep file) into the runs; raises SweepError on a bad spec."""
    args = build_parser().parse_args(argv)
    spec = load_sweep_file(args.sweep_file) if args.sweep_file else {}
    base_path = args.config or spec.get("base")
    if not base_path:
        raise SweepError("no base config: pass --config BASE.yaml or a sweep file with `base:`")
    grid = _grid_from_args(spec.get("grid") or {}, args.grid)
    fixed = {str(k): v for k, v in (spec.get("set") or {}).items()}
    for s in args.set:
        key, value = parse_set_spec(s)
        fixed[key] = value
    seeds = parse_seeds(args.seeds if args.seeds is not None else spec.get("seeds", [0]))
    out = Path(args.out or spec.get("out") or "runs/sweep")
    jobs = args.jobs if args.jobs is not None else int(spec.get("jobs", 1))
    if jobs < 1:
        raise SweepError(f"--jobs must be >= 1, got {jobs}")
    metrics = args.metrics.split(",") if args.metrics else spec.get("metrics")
    timeout = args.timeout if args.timeout is not None else spec.get("timeout")
    base = load_base_config(base_path)
    specs = plan_sweep(base, grid, seeds, out, fixed=fixed)
    settings = {"base": str(base_path), "grid": grid, "fixed": fixed, "seeds": seeds, "out": out, "jobs": jobs,
                "metrics": metrics, "timeout": timeout}
    return args, settings, specs


def finish(specs: Sequence[RunSpec], out: Path, *, figures: bool = True, metrics=None,
           say: Callable[[str], None] = print) -> tuple[Path, list[Path]]:
    """Aggregate the runs into sweep.csv and the figures, and print a short summary."""
    table, rows = aggregate(specs, out)
    paths = []
    if figures and rows:
        order = list(dict.fromkeys(s.point for s in specs))
        paths = plot_sweep(rows, out / "figures", metrics=metrics, point_order=order)
    say(f"\n{len(rows)} rows -> {table}" + (f"; {len(paths)} figures in {out / 'figures'}" if paths else ""))
    summary = summarise(rows, "reward_mean") if rows else {}
    if summary:
        say("final-round reward_mean (mean ± 95% half-width over seeds):")
        for point in dict.fromkeys(s.point for s in specs):
            if point in summary and summary[point][0]:
                rounds, means, halfs, n = summary[point]
                say(f"  {point:<48} round {rounds[-1]:g}: {means[-1]:.4f} ± {halfs[-1]:.4f} (n={n})")
    return table, paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lightning-curate-sweep``; returns the exit status (1 if a run failed)."""
    try:
        args, settings, specs = configure(argv)
    except SweepError as err:
        print(f"lightning-curate-sweep: error: {err}", file=sys.stderr)
        return 2
    out = settings["out"]
    n_points = len({s.point for s in specs})
    print(f"Sweep of {settings['base']}: {n_points} grid points x {len(settings['seeds'])} seeds = "
          f"{len(specs)} runs in {out}" + (f", {settings['jobs']} in parallel" if settings["jobs"] > 1 else ""))
    if args.dry_run:
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{len(specs)}] {spec.label}: {run_status(spec)} -> {spec.run_dir}")
        return 0
    results = []
    if not args.aggregate_only:
        results = run_sweep(specs, jobs=settings["jobs"], timeout=settings["timeout"])
    finish(specs, out, figures=not args.no_figures, metrics=settings["metrics"])
    failed = [r for r in results if r.status == "failed"]
    if results:
        counts = {k: sum(r.status == k for r in results) for k in ("fresh", "resumed", "skipped", "failed")}
        print("runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
