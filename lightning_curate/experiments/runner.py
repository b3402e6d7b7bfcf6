"""Run a sweep's runs: each one a ``lightning_curate fit`` subprocess, skipped when finished, resumed when not.

A run is finished when its ``rounds.csv`` has every round its config asks for;
an unfinished run with a checkpoint resumes with ``--ckpt_path last``; a run
with stored rounds but no checkpoint is moved aside and started afresh. Runs
share the sweep's process group, so Ctrl-C stops them too.
"""

from __future__ import annotations

import copy
import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from lightning_curate.experiments.config_keys import SweepError, check_count, loop_entry
from lightning_curate.experiments.grid import RunSpec
from lightning_curate.store.lock import LOCK_NAME, RunLock, RunLockError

__all__ = ["CONFIG_NAME", "LOG_NAME", "RunResult", "finished_but_changed", "move_aside", "read_table", "run_command",
           "run_point", "run_status", "run_sweep", "table_path"]

CONFIG_NAME = "sweep_config.yaml"
LOG_NAME = "sweep.log"


@dataclass
class RunResult:
    """What became of one run: ``skipped``, ``fresh``, ``resumed`` or ``failed``, and why."""

    spec: RunSpec
    status: str  # "skipped", "fresh", "resumed", "failed"
    seconds: float = 0.0
    returncode: Optional[int] = None
    rounds_done: int = 0
    message: str = ""


def table_path(run_dir: Path) -> Optional[Path]:
    """The run's ``rounds.csv`` (the newest one below ``run_dir`` when a logger nested it), if any."""
    direct = run_dir / "rounds.csv"
    if direct.is_file():
        return direct
    found = sorted((p for p in run_dir.rglob("rounds.csv") if "rounds" not in p.parent.parts[len(run_dir.parts):]),
                   key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def read_table(path: Path) -> list[dict]:
    """The rows of a ``rounds.csv`` as dicts of strings."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _rounds_done(run_dir: Path) -> int:
    path = table_path(run_dir)
    if path is None:
        return 0
    try:
        return len({int(float(r["round"])) for r in read_table(path) if r.get("round") not in (None, "")})
    except (OSError, ValueError, KeyError):
        return 0


def _last_checkpoint(run_dir: Path) -> Optional[Path]:
    found = sorted(run_dir.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) if run_dir.exists() else []
    return found[-1] if found else None


def run_status(spec: RunSpec) -> str:
    """Where a run stands: ``finished``, ``resumable``, ``stale`` or ``fresh``.

    ``finished``: every round is in rounds.csv; ``resumable``: it has a checkpoint;
    ``stale``: stored rounds but no checkpoint, so it cannot resume; ``fresh``: nothing yet.
    """
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
            loop_entry(cfg).get("init_args", {}).pop("rounds", None)
        except SweepError:
            return True
    return old != new


def finished_but_changed(spec: RunSpec) -> bool:
    """A finished run whose saved config differs from the planned one (the sweep still skips it)."""
    path = spec.run_dir / CONFIG_NAME
    return path.is_file() and _changed(path, spec.config)


def move_aside(run_dir: Path) -> Path:
    """Move a run that cannot resume out of the way, under its own lock.

    The lock is taken with the rule a run applies itself (a live holder, here or on another
    host within its heartbeat, is never taken over), so a run that is still writing, or a
    sweep's sibling starting it, is never moved: :class:`RunLockError` names its holder.
    """
    aside = run_dir.with_name(run_dir.name + f".stale-{int(time.time())}")
    lock = RunLock(run_dir).acquire()
    try:
        shutil.move(str(run_dir), str(aside))
    finally:
        lock.release()  # the lock file moved with the folder: release() finds none to remove here
    (aside / LOCK_NAME).unlink(missing_ok=True)
    return aside


def run_command(spec: RunSpec, config_path: Path, resume: bool, python: str = sys.executable) -> list[str]:
    """The command line of one run: ``python -m lightning_curate fit`` on its config, resumed if asked."""
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
        try:
            aside = move_aside(spec.run_dir)
        except RunLockError as err:
            say(f"{tag}: FAILED: not moved aside, {err}")
            return RunResult(spec, "failed", rounds_done=_rounds_done(spec.run_dir), message=str(err))
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
    what = f"resuming from {_last_checkpoint(spec.run_dir)} ({done_before} rounds done)" if resume else "running"
    say(f"{tag}: {what} -> {spec.run_dir}")
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


def run_point(spec: RunSpec, index: int, total: int, python: str = sys.executable, timeout: Optional[float] = None,
              env: Optional[dict] = None) -> RunResult:
    """One run of a sweep, as the local pool runs it: skipped if finished, resumed if it can be,
    else started; progress lines to stdout. What a cluster task calls (``--launcher submitit``)."""
    return _execute(spec, index, total, python=python, timeout=timeout, env=dict(os.environ) if env is None else env,
                    say=lambda text: print(text, flush=True))


def run_sweep(specs: Sequence[RunSpec], *, jobs: int = 1, timeout: Optional[float] = None,
              python: str = sys.executable, say: Callable[[str], None] = print,
              numbering: Optional[tuple[int, int]] = None) -> list[RunResult]:
    """Run every spec (skipping finished ones, resuming unfinished ones); in ``jobs`` parallel processes.

    ``numbering``: ``(first, total)`` for the ``[i/total]`` progress tags when a sweep is
    run in pieces (default ``(1, len(specs))``).
    """
    check_count("jobs", jobs, minimum=1)
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

