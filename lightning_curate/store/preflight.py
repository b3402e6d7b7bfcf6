"""Checks of a run directory before a run writes anything into it.

A refused start must leave the earlier run as it was, so these checks only
read: the store is verified whole, the checkpoint to resume from is found and
opened, and the config's science settings are compared with the stored
rounds'. ``lightning-curate`` runs them right after instantiating the classes,
before the config is saved and before the logger touches its folder;
:class:`~lightning_curate.loop.RetrainingLoop` runs them in ``setup`` when it is
used without the CLI.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from lightning_curate.store.rounds import RoundStore, StoreError
from lightning_curate.store.settings import (
    SettingsMismatch,
    diff_settings,
    fingerprint,
    mismatch_message,
    settings_of_manifest,
)

__all__ = ["check_checkpoint_file", "check_checkpoint_fits", "check_checkpoint_identity", "check_resume",
           "checkpoint_dirs", "checkpoint_identity", "find_last_checkpoint", "folders_outside"]


def checkpoint_dirs(trainer: Any, run_dir: Path) -> list[Path]:
    """Where Lightning looks for ``last*.ckpt``: each ModelCheckpoint's folder (its default without one)."""
    dirs = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    return dirs or [Path(run_dir) / "checkpoints"]


def folders_outside(trainer: Any, run_dir: Path) -> list[tuple[Path, str]]:
    """The folders the run writes outside ``run_dir`` (each checkpoint folder, the logger's), with their role:
    the run locks them too, so that two runs never share one (``--ckpt_path last`` would take the other's)."""
    root = Path(run_dir).resolve()
    found = [(d, "checkpoint folder") for d in checkpoint_dirs(trainer, run_dir)]
    for logger in getattr(trainer, "loggers", None) or []:
        folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        if folder:
            found.append((Path(folder), "logger folder"))
    out: list[tuple[Path, str]] = []
    for folder, role in found:
        resolved = folder.resolve()
        if not resolved.is_relative_to(root) and all(resolved != f for f, _ in out):
            out.append((resolved, role))
    return out


def find_last_checkpoint(dirs: Iterable[str | os.PathLike]) -> Optional[Path]:
    """The newest ``last*.ckpt`` in ``dirs``: the one of the latest finished round (its run identity),
    then the newest by mtime (a ``last-v1.ckpt`` beside a stale ``last.ckpt`` of a moved run, or
    checkpoints without an identity)."""
    found = [p for d in dirs if d and Path(d).is_dir() for p in Path(d).iterdir()
             if p.name.startswith("last") and p.suffix == ".ckpt" and p.is_file()]
    if len(found) < 2:
        return found[0] if found else None

    def newest(path: Path) -> tuple[int, float]:
        identity = checkpoint_identity(path) or {}
        rounds = identity.get("finished_rounds") or [-1]
        return max(rounds), path.stat().st_mtime

    return max(found, key=newest)


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Open a checkpoint's archive and check its CRCs.

    A truncated or damaged file is named here instead of failing inside ``torch.load`` with an
    error that names no file.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise StoreError(f"the checkpoint {path} is truncated or damaged ({err}); restore it, or resume from "
                         "another checkpoint with --ckpt_path <file>") from err
    if bad is not None:
        raise StoreError(f"the checkpoint {path} is damaged (entry {bad} fails its CRC); restore it, or resume "
                         "from another checkpoint with --ckpt_path <file>")


def checkpoint_identity(path: str | os.PathLike) -> Optional[dict[str, Any]]:
    """The run identity a checkpoint carries: its ``RetrainingLoop`` state (``run_id``, ``fingerprint``,
    ``settings``, ``finished_rounds``; a checkpoint from before run ids has no ``run_id``), or ``None`` for
    a checkpoint without a loop's state.

    Read with ``weights_only=True``: tensors and plain containers only, nothing from the file runs.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a checkpoint torch reads safely: Lightning names it when it loads
        return None
    callbacks = checkpoint.get("callbacks") if isinstance(checkpoint, dict) else None
    state = callbacks.get("RetrainingLoop") if isinstance(callbacks, dict) else None
    return state if isinstance(state, dict) else None


def check_checkpoint_fits(path: str | os.PathLike, parameters: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights do not fit the config's model: each of the model's ``parameters``
    (by name) must be in it, with the same shape.

    Lightning would find out only when it loads the weights, after the logger and the config save have
    rewritten ``metrics.csv`` and ``config.yaml`` (a changed architecture, e.g. the velocity net's
    ``hidden``, is not a recorded setting). Buffers are left out: a module may resize them as it loads
    (a KDE's stored points). Read with ``weights_only=True`` and memory-mapped.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a checkpoint torch reads safely: Lightning names it when it loads
        return
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        return
    problems = [f"{k}: checkpoint {list(state[k].shape)}, model {list(v.shape)}" for k, v in parameters.items()
                if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    problems += [f"{k}: in the model, not in the checkpoint" for k in parameters if k not in state]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise StoreError(
            f"the checkpoint {path} does not fit the config's model ({shown}): the model's architecture changed "
            "since the checkpoint was saved. Restore the config it was saved with, or start a new run in another "
            "directory (--trainer.default_root_dir)")


def check_checkpoint_identity(store: RoundStore, stored: list[int], checkpoint: str | os.PathLike,
                              identity: Optional[dict[str, Any]]) -> None:
    """Refuse a checkpoint made by another run than the one whose rounds ``store`` holds.

    Its ``run_id`` must be the stored rounds' (created at the run's first start, recorded in every
    manifest and checkpoint); into a directory with no rounds, a checkpoint that finished rounds is
    another run's too (its rounds are elsewhere). Its ``settings`` must match its ``fingerprint``.
    A checkpoint without a run id (saved before run ids, or not by a ``RetrainingLoop``) is refused
    where the stored rounds have one: nothing shows it is theirs. Where they have none either (a run
    made before run ids), it is accepted with a warning; the settings are still compared.
    """
    if identity is None or not identity.get("run_id"):
        _check_checkpoint_without_id(store, stored, checkpoint, identity)
        return
    settings = identity.get("settings")
    if isinstance(settings, dict) and identity.get("fingerprint") != fingerprint(settings):
        raise StoreError(f"the checkpoint {checkpoint}: its settings do not match its fingerprint (edited after it "
                         "was saved?); resume from another checkpoint with --ckpt_path <file>")
    if identity.get("unresumable"):
        raise StoreError(
            f"the checkpoint {checkpoint} was saved {identity['unresumable']}: a resume from it would not repeat the "
            "run (the batch order within an epoch and a round's curation are in no checkpoint). Resume from a "
            "round's end: --ckpt_path last (RoundCheckpoint's last.ckpt)")
    theirs, their_fp = identity.get("run_id"), str(identity.get("fingerprint") or "?")[:12]
    if not stored:
        if identity.get("finished_rounds"):
            raise StoreError(
                f"the checkpoint {checkpoint} belongs to run {theirs} (fingerprint {their_fp}), which finished "
                f"rounds {identity['finished_rounds']}, but {store.root} holds no rounds: its rounds are in "
                "that run's directory. Resume it there (--trainer.default_root_dir), or start a new run "
                "without --ckpt_path")
        return
    manifest = store.read_manifest(stored[-1])
    ours = manifest.get("run_id")
    if ours is None or ours == theirs:
        return
    their_settings = identity.get("settings")
    their_settings = their_settings if isinstance(their_settings, dict) else {}
    changes = diff_settings(settings_of_manifest(manifest), their_settings)
    differ = "; ".join(f"{k}: checkpoint {new!r}, this run {old!r}" for k, (old, new) in changes.items())
    raise StoreError(
        f"the checkpoint {checkpoint} was made by another run: run {theirs} (fingerprint {their_fp}), while the "
        f"rounds in {store.root} are run {ours}'s (fingerprint {str(manifest.get('fingerprint'))[:12]})"
        f"{f' ({differ})' if differ else ''}. Resume from this run's own checkpoint (--ckpt_path last), or "
        "resume that run in its own directory")


def _check_checkpoint_without_id(store: RoundStore, stored: list[int], checkpoint: str | os.PathLike,
                                 identity: Optional[dict[str, Any]]) -> None:
    finished = (identity or {}).get("finished_rounds")
    if not stored:
        if finished:
            raise StoreError(
                f"the checkpoint {checkpoint} finished rounds {finished}, but {store.root} holds no rounds: its rounds "
                "are in its own run's directory. Resume it there (--trainer.default_root_dir), or start a new run "
                "without --ckpt_path")
        return
    ours = store.read_manifest(stored[-1]).get("run_id")
    if ours is not None:
        raise StoreError(
            f"the checkpoint {checkpoint} carries no run id (saved by a lightning_curate from before run ids, or not "
            f"by a RetrainingLoop), but the rounds in {store.root} are run {ours}'s, whose checkpoints all carry it: "
            "nothing shows the checkpoint is this run's. Resume from this run's own checkpoint (--ckpt_path last), "
            "or start a new run in another directory (--trainer.default_root_dir)")
    warnings.warn(f"the checkpoint {checkpoint} and the rounds in {store.root} carry no run id (a run from before "
                  "run ids): resuming on the stored rounds' settings, which the config must match", stacklevel=2)


def check_resume(store: RoundStore, settings: dict[str, Any], *, ckpt_path: Optional[str | os.PathLike],
                 checkpoint_dirs: Iterable[str | os.PathLike] = (), allowed: tuple[str, ...] = (),
                 checkpoint_loaded: bool = False, loaded_identity: Optional[dict[str, Any]] = None,
                 model_parameters: Optional[dict[str, Any]] = None) -> dict[str, list]:
    """Refuse to start or resume in a directory that does not fit; return the allowed setting changes.

    Args:
        store: the run's round store.
        settings: the current science settings (see ``RetrainingLoop.science_settings``).
        ckpt_path: what the user asked to resume from (``"last"``, a file) or None for a fresh run.
        checkpoint_dirs: where ``"last"`` is looked for.
        allowed: keys whose change the user allows (``--allow_changed_settings``).
        checkpoint_loaded: a checkpoint was already restored (the check runs after it, without the CLI).
        loaded_identity: the restored checkpoint's run identity (see :func:`checkpoint_identity`).
        model_parameters: the config's model's parameters by name, which the checkpoint's weights must fit.

    Returns:
        ``{key: [old, new]}`` of the allowed changes, for the next round's manifest.
    """
    checkpoint_dirs = [Path(d) for d in checkpoint_dirs]
    stored = store.check_whole()
    checkpoint = None
    if ckpt_path == "last":
        checkpoint = find_last_checkpoint(checkpoint_dirs)
    elif ckpt_path is not None and str(ckpt_path) not in ("best", "hpc", "registry"):
        checkpoint = Path(ckpt_path)
        if not checkpoint.is_file():
            raise StoreError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    if stored and ckpt_path is None and not checkpoint_loaded:
        raise StoreError(
            f"{store.root} already holds rounds {stored} of an earlier run. Resume it with `--ckpt_path last`, "
            "or start a new run in another directory (--trainer.default_root_dir and the logger's save_dir); "
            "stored rounds are never overwritten")
    if stored and ckpt_path == "last" and checkpoint is None:
        where = ", ".join(str(d) for d in checkpoint_dirs) or "the checkpoint folder"
        raise StoreError(
            f"--ckpt_path last: there is no last*.ckpt in {where}, but {store.root} holds rounds {stored}. "
            "Without a checkpoint the generator that made them is gone and the run cannot continue: restore "
            "the checkpoint (or pass --ckpt_path <file>), or start a new run in another directory "
            "(--trainer.default_root_dir)")
    if checkpoint is not None:
        check_checkpoint_file(checkpoint)
        check_checkpoint_identity(store, stored, checkpoint, checkpoint_identity(checkpoint))
        if model_parameters is not None:
            check_checkpoint_fits(checkpoint, model_parameters)
    elif checkpoint_loaded:
        check_checkpoint_identity(store, stored, "restored", loaded_identity)
    if not stored:
        return {}
    old = settings_of_manifest(store.read_manifest(stored[-1]))
    changes = diff_settings(old, settings)
    if any(k not in allowed for k in changes):
        raise SettingsMismatch(mismatch_message(f"in {store.root.parent}", changes, allowed))
    return changes
