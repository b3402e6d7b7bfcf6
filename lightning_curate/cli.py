"""The console script ``lightning-curate``: a LightningCLI over any module and DataModule.

``lightning-curate fit -c configs/mog8.yaml`` runs a whole curated-retraining
experiment; ``--ckpt_path last`` resumes it. Configs name their classes by
``class_path`` (your own module, generator, reward or data source work the
same way; a module in the working directory is found, as with ``python -m``) and
may use omegaconf interpolation (``${trainer.default_root_dir}``).

Before anything is written the run directory is locked and checked (stored
rounds, the checkpoint and whether its weights fit the model, the science
settings, the disk and memory the rounds need, and the components, a few samples
drawn and scored), so a refused start leaves the earlier run byte for byte as it
was: Lightning's ``fit`` saves ``config.yaml`` and deletes ``metrics.csv`` only
after all of these. Exit status: 0 when every round finished;
1 when the run stopped early or failed; 2 when it was refused before starting
(bad config value, unknown class_path, locked directory, stored rounds, changed
settings, damaged store or checkpoint, rounds too large for the disk or the memory, a generator, reward or data
source that fails the fit-start check of :mod:`lightning_curate.loop.component_check`); 130 after SIGINT, 143
after SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.loop.component_check import ComponentError
from lightning_curate.loop.divergence import TrainingDivergedError
from lightning_curate.loop.schedule import RoundSchedule
from lightning_curate.loop.startup import check_components_first, forks_later
from lightning_curate.loop.training import TrainingSetupError
from lightning_curate.store.capacity import CapacityError
from lightning_curate.store.lock import LOCK_NAME, RunLock, RunLockError, held_lock_for, is_rank_zero_env
from lightning_curate.store.preflight import (
    check_checkpoint_file,
    checkpoint_dirs,
    find_last_checkpoint,
    folders_outside,
)
from lightning_curate.store.rounds import StoreError
from lightning_curate.store.settings import SettingsMismatch, normalise, parse_allowed
from lightning_curate.utils.quiet import silence_third_party_noise
from lightning_curate.utils.validation import BetaRangeError

__all__ = ["EXIT_FAILED", "EXIT_REFUSED", "EXIT_SIGINT", "EXIT_SIGTERM", "CurateCLI", "main"]

EXIT_FAILED, EXIT_REFUSED, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
# Errors that explain themselves: printed as one line (LIGHTNING_CURATE_DEBUG=1 shows the traceback).
_REFUSALS = (RunLockError, StoreError, SettingsMismatch, TrainingSetupError, ComponentError, TrainingDivergedError,
             BetaRangeError, CapacityError)


@dataclass
class _RunState:
    """What ``main`` needs after the CLI returns or raises: held locks, the loop, how far it got."""

    locks: list[RunLock] = field(default_factory=list)
    loop: Optional[RetrainingLoop] = None
    trainer: Any = None
    fitting: bool = False


class CurateCLI(LightningCLI):
    """``LightningCLI`` with omegaconf interpolation and a locked, checked run directory.

    The config is saved in the run directory only after the checks pass.
    """

    def __init__(self, *args, run_state: Optional[_RunState] = None, **kwargs):
        self.run_state = run_state if run_state is not None else _RunState()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        """``--torch_num_threads`` and ``--allow_changed_settings``."""
        # Small models on a few shared CPU cores run several times faster on one thread.
        parser.add_argument("--torch_num_threads", type=Optional[int], default=None,
                            help="torch.set_num_threads for this run (default: torch's own choice)")
        parser.add_argument("--allow_changed_settings", type=Optional[str], default=None,
                            help="comma-separated science settings a resume may change deliberately "
                                 "(e.g. beta,num_candidates); recorded in the next round's manifest")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI unpickles an explicit checkpoint here: name a truncated file before it does.
        sub = self.config.get("subcommand")
        ckpt_path = self.config[sub].get("ckpt_path") if sub else None
        if ckpt_path and Path(ckpt_path).is_file():
            check_checkpoint_file(ckpt_path)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        """Set the thread count and lock the run directory, before anything is built or written."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"torch_num_threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        parse_allowed(config.get("allow_changed_settings"))
        trainer = config.get("trainer")
        if trainer is not None and trainer.get("enable_progress_bar") is False and trainer.get("callbacks"):
            # `--trainer.enable_progress_bar false` on a config with a RoundProgressBar: no bar, rather
            # than Lightning refusing the pair.
            callbacks = trainer["callbacks"] if isinstance(trainer["callbacks"], list) else [trainer["callbacks"]]
            trainer["callbacks"] = [c for c in callbacks
                                    if not str(getattr(c, "class_path", "")).endswith(".RoundProgressBar")]
        if trainer is not None and trainer.get("max_epochs") is None:
            schedule = _round_schedule(trainer.get("callbacks"))
            if schedule is not None:  # the loop sets it anyway: say so now, and Lightning has no default to warn of
                trainer["max_epochs"] = schedule.total_epochs
        if self.subcommand and is_rank_zero_env():
            # Before anything is instantiated or written: the logger, the config save, the store.
            root = config.get("trainer", {}).get("default_root_dir") or os.getcwd()
            self._lock(Path(root))

    def _lock(self, run_dir: Path, role: str = "run directory") -> None:
        if held_lock_for(run_dir) is None:
            self.run_state.locks.append(RunLock(run_dir, role=role).acquire())

    def instantiate_classes(self) -> None:
        """Build the classes, then check the run directory (reads only) before fit writes anything."""
        super().instantiate_classes()
        self.run_state.trainer = self.trainer
        loop = RetrainingLoop.of(self.trainer)
        if loop is None or self.subcommand != "fit":
            return
        self.run_state.loop = loop
        config = self.config[self.subcommand]
        loop.check_backend(self.trainer, self.model)
        loop.allow_changed_settings = tuple(dict.fromkeys(
            loop.allow_changed_settings + parse_allowed(config.get("allow_changed_settings"))))
        reward = config.get("model", {}).get("init_args", {}).get("reward")
        if reward is not None and hasattr(reward, "as_dict"):
            loop.reward_config = normalise(reward.as_dict())
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if is_rank_zero_env():
            self._lock(run_dir)
            for folder, role in folders_outside(self.trainer, run_dir):
                self._lock(folder, role)
        if run_dir.is_dir() and [p.name for p in run_dir.iterdir()] == [LOCK_NAME]:
            # The CSV logger would warn that "previous log files will be deleted" about our lock file alone.
            warnings.filterwarnings("ignore", message=f"Experiment logs directory {re.escape(str(run_dir))}")
        # Reads only: a refusal here leaves config.yaml, metrics.csv and the store untouched.
        loop.check_run_dir(run_dir, self.model, self.datamodule, ckpt_path=config.get("ckpt_path"),
                           checkpoint_dirs=checkpoint_dirs(self.trainer, run_dir))
        loop.check_capacity(self.trainer, self.model, self.datamodule, run_dir)  # before the first allocation
        if is_rank_zero_env() and hasattr(self.model, "curate_round") and hasattr(self.datamodule, "attach") \
                and not forks_later(self.trainer):
            # Lightning's fit deletes metrics.csv and saves config.yaml before the loop's setup would check them.
            check_components_first(self.trainer, self.model, self.datamodule)
            loop.components_checked = True
        if config.get("ckpt_path") == "last":  # the checkpoint just checked (newest by round), not Lightning's by mtime
            found = find_last_checkpoint(checkpoint_dirs(self.trainer, run_dir))
            if found is not None:
                self.config_init[self.subcommand]["ckpt_path"] = str(found)

    def after_instantiate_classes(self) -> None:
        """From here on, errors are failures of the run (exit 1), not refusals (exit 2)."""
        self.run_state.fitting = True


class _Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """SIGTERM arrived while Lightning's own handler was not installed (before or after fit)."""


def _on_sigterm(signum, frame) -> None:
    # During fit Lightning's handler runs first and calls this one too: then Lightning stops the
    # run at the next step, and this one must do nothing.
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        raise _Terminated()


def _catch_sigterm():
    """Install :func:`_on_sigterm`; returns the previous handler (None off the main thread)."""
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return None


_UNION_BOILERPLATE = ("Does not validate against any of the Union subtypes", "Not a valid subclass of",
                      "a class path (str)", "a dict with class_path entry", "a dict without class_path",
                      "a dict with parameters accepted by the base class")


_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')


def _class_path_error(text: str) -> Optional[str]:
    """``model.generator: cannot use class_path 'mygen.MyGenerator': No module named 'mygen'``, from the
    innermost class_path jsonargparse could not use, or ``None`` when the error is about something else."""
    found = [m for m in _CLASS_PATH.finditer(text) if not m.group(2).strip().startswith(("Parser key", "- "))]
    if not found:
        return None
    match = found[-1]
    keys = [k for k in _PARSER_KEY.findall(text[:match.start()]) if k != "init_args"]
    where = ".".join(keys[-2:] if len(keys) > 1 else keys)
    reason = match.group(2).strip()
    hint = ""
    if reason.startswith("No module named"):
        hint = (" (a class of your own must be importable: run from the folder that holds its module, "
                "or add that folder to PYTHONPATH)")
    elif "has no attribute" in reason:
        hint = " (no class of that name in the module: check its spelling)"
    return f"{where + ': ' if where else ''}cannot use class_path '{match.group(1)}': {reason}{hint}"


def _short_error(err: BaseException) -> str:
    """The message of a config error without jsonargparse's listing of every Union alternative."""
    text = str(err)
    class_path = _class_path_error(text)
    if class_path is not None:
        return class_path
    reasons = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("- ")
               and "Expected a <class 'NoneType'>" not in line]
    # A nested Union (a list of class_path entries) adds its own header line, and the alternatives that
    # do not apply (a single class instead of a list, the accepted forms of one) list themselves: not reasons.
    reasons = [r for r in reasons if not r.startswith(_UNION_BOILERPLATE)] or reasons
    return "; ".join(reasons) if "Errors:" in text and reasons else text


_PATH_LOCALS = ("filepath", "fname", "filename")


def _file_error(err: OSError) -> str:
    """An OSError with the file it concerns.

    That is its own ``filename``, else the path the innermost writer held (``filepath`` of a
    checkpoint save, ``fname`` or ``filename`` of a figure's): they report EFBIG or ENOSPC
    without naming their file.
    """
    path = err.filename
    if path is None:
        tb = err.__traceback__
        while tb is not None:  # to the innermost frame: the writer's own path wins
            for name in _PATH_LOCALS:
                value = tb.tb_frame.f_locals.get(name)
                if isinstance(value, os.PathLike) or (isinstance(value, str) and value):
                    path = value
                    break
            tb = tb.tb_next
    return f"could not write {os.fspath(path)}: {err}" if path is not None else str(err)


def _resume_hint(state: _RunState, how: str, args: list[str]) -> str:
    loop = state.loop
    done = sorted(set(loop.rows) | set(loop.store.rounds() if loop.store else [])) if loop is not None else []
    where = f"after round {done[-1]} of {loop.rounds}" if done and loop is not None else "before round 0 finished"
    callback = getattr(state.trainer, "checkpoint_callback", None)
    last = getattr(callback, "last_model_path", "") or ""
    kept = f"; the last checkpoint is {last}" if last and Path(last).is_file() else ""
    command = [a for i, a in enumerate(args) if a != "--ckpt_path" and not a.startswith("--ckpt_path=")
               and (i == 0 or args[i - 1] != "--ckpt_path")]
    return (f"\n{how}: the run stopped {where}{kept}. Stored rounds are kept. Resume with:\n"
            f"  lightning-curate {' '.join(command)} --ckpt_path last\n")


def _import_from_cwd() -> None:
    """Let ``class_path: mygen.MyGenerator`` find ``./mygen.py``, as ``python -m lightning_curate`` does.

    A console script's ``sys.path`` starts with the script's folder, not the working directory.
    """
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _round_schedule(callbacks: Any) -> Optional[RoundSchedule]:
    """The round schedule of the config's ``RetrainingLoop`` entry (its epochs), or ``None``."""
    entries = callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []
    for entry in entries:
        if str(getattr(entry, "class_path", "")).split(".")[-1] != RetrainingLoop.__name__:
            continue
        init_args: Any = getattr(entry, "init_args", None)
        args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
        try:
            return RoundSchedule(**{k: args[k] for k in ("rounds", "epochs_per_round", "initial_epochs") if k in args})
        except (TypeError, ValueError):
            return None  # the loop itself names the bad value when it is built
    return None


def main(args: Optional[list[str]] = None) -> None:
    """Entry point of ``lightning-curate`` and ``python -m lightning_curate``; tests call it with ``args``.

    Returns only when every round finished (exit status 0); otherwise raises ``SystemExit`` with the
    codes in the module docstring.
    """
    argv = list(sys.argv[1:] if args is None else args)
    _import_from_cwd()
    silence_third_party_noise()
    if argv and argv[0] == "diagnose":  # lightning-curate diagnose jitter|budget|solver RUN_DIR [options]
        from lightning_curate.diagnostics.cli import main as diagnose

        status = diagnose(argv[1:])
        if status:
            raise SystemExit(status)
        return
    debug = os.environ.get("LIGHTNING_CURATE_DEBUG") == "1"
    state = _RunState()
    previous = _catch_sigterm()
    try:
        CurateCLI(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            # "omegaconf+": interpolation is resolved on the final config, so a
            # command-line --trainer.default_root_dir moves the logger and checkpoints too.
            parser_kwargs={"parser_mode": "omegaconf+", "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
            run_state=state,
        )
    except _Terminated:  # SIGTERM outside Lightning's fit: the lock is still released below
        sys.stderr.write(_resume_hint(state, "SIGTERM", argv))
        raise SystemExit(EXIT_SIGTERM) from None
    except SIGTERMException:  # Lightning's way out after SIGTERM: a SystemExit with status 0
        if state.loop is not None and state.loop.complete:
            return  # the signal came after the last round: the run is whole
        sys.stderr.write(_resume_hint(state, "SIGTERM", argv))
        raise SystemExit(EXIT_SIGTERM) from None
    except SystemExit:
        if state.loop is not None and isinstance(state.loop.stopped_by, KeyboardInterrupt):
            sys.stderr.write(_resume_hint(state, "SIGINT", argv))
            raise SystemExit(EXIT_SIGINT) from None
        raise
    except KeyboardInterrupt:  # before or after fit: Lightning did not see it
        sys.stderr.write(_resume_hint(state, "SIGINT", argv))
        raise SystemExit(EXIT_SIGINT) from None
    except ArgumentError as err:  # a bad command line or config: one line, not the whole usage (see --help)
        if debug:
            raise
        sys.stderr.write(f"error: {_short_error(err)}\n")
        raise SystemExit(EXIT_REFUSED) from None
    except Exception as err:  # noqa: BLE001 - sorted below; anything unexpected keeps its traceback
        refusal = isinstance(err, _REFUSALS) or (not state.fitting and isinstance(err, (ValueError, TypeError)))
        if debug or not (refusal or isinstance(err, OSError)):
            raise
        message = _file_error(err) if isinstance(err, OSError) else _short_error(err)
        sys.stderr.write(f"error: {message}\n")
        before_training = not state.fitting or isinstance(err, ComponentError)  # checked before anything is written
        raise SystemExit(EXIT_REFUSED if before_training else EXIT_FAILED) from None
    finally:
        for lock in state.locks:
            lock.release()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    loop = state.loop
    if loop is not None and state.fitting and not loop.complete:
        sys.stderr.write(_resume_hint(state, "incomplete", argv))
        raise SystemExit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
