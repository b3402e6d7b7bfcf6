"""The round store: every round's curated samples on disk, so nothing is lost.

Layout under the run's log directory::

    rounds/
      round_000/                curated from the model after round 0 (trains round 1)
        part_RRR_CCCCC.pt       tensors of chunk C of rank R: ``x`` (winners), ``slot``
                                (their slot index), ``rewards``, optional ``labels``,
                                ``preview`` / ``preview_slot`` (model samples for plots),
                                ``choice_*`` (the logged choices, ``log_choices``)
        manifest.json           round, sizes, K, beta, seed, reward statistics, the
                                round's metrics row, the sha256 of every part, and the
                                run's science ``settings`` with their ``fingerprint``
                                (see :mod:`lightning_curate.store.settings`)

Parts are written into ``.tmp_round_NNN/`` as they are produced (each rank, each
chunk: memory stays bounded), then the manifest is written and the folder
renamed into place, so a crash leaves either the whole round or nothing (the
partial folder is discarded and the round regenerated from its seed). A
written round is never replaced; on resume it is read back and every checksum
verified (a mismatch is an error, never a silent regeneration). Reading
concatenates the parts in slot order, so a round reads the same whichever
number of ranks or chunk size produced it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_curate.store.integrity import check_manifest_settings, check_row
from lightning_curate.store.settings import settings_of_manifest

__all__ = ["RoundStore", "StoreError", "StoredRound"]

MANIFEST = "manifest.json"
SINGLE_PART = "part_000_00000.pt"
PREVIEW_PREFIX = "preview_"
# Tensors of a round indexed by slot; they are put back in slot order on read.
_SLOT_KEYED = {"slot": ("x", "rewards", "labels"),
               "preview_slot": ("preview", "probe_rewards", "probe_labels", "probe_curator_rewards"),
               "choice_slot": ("choice_candidates", "choice_index", "choice_rewards", "choice_curator")}


class StoreError(RuntimeError):
    """The round store on disk is missing, corrupt, or from another run."""


class StoredRound(dict):
    """``tensors`` and ``manifest`` of one round."""

    @property
    def tensors(self) -> dict[str, Tensor]:
        """The round's tensors, merged over parts in slot order."""
        return self["tensors"]

    @property
    def manifest(self) -> dict[str, Any]:
        """The round's manifest as stored."""
        return self["manifest"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_part_name(round_idx: int, manifest_path: Path, name: object) -> str:
    """A part name from a manifest must name a file inside its round folder (no ``../``, no path)."""
    if not isinstance(name, str) or not name.endswith(".pt") or name in ("", ".", "..") or "/" in name \
            or "\\" in name or "\0" in name or os.path.isabs(name) or name.startswith(".") or name == MANIFEST:
        raise StoreError(f"round {round_idx}: the manifest {manifest_path} lists the part {name!r}, which is not a "
                         "file name inside the round folder; the manifest was modified or is hostile")
    return name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RoundStore:
    """Append-only, checksummed storage of the curated data of each round."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, round_idx: int) -> Path:
        """The folder of a committed round."""
        return self.root / f"round_{round_idx:03d}"

    def has(self, round_idx: int) -> bool:
        """Whether round ``round_idx`` is committed (its manifest exists)."""
        return (self.path(round_idx) / MANIFEST).is_file()

    def rounds(self) -> list[int]:
        """Indices of the complete rounds on disk, in order."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            name = child.name
            if name.startswith("round_") and name[6:].isdigit() and child == self.path(int(name[6:])) \
                    and (child / MANIFEST).is_file():
                found.append(int(name[6:]))
        return sorted(found)

    def _tmp(self, round_idx: int) -> Path:
        return self.root / f".tmp_round_{round_idx:03d}"

    def begin(self, round_idx: int) -> None:
        """Start writing round ``round_idx`` (one process; the others wait at a barrier).

        The write protocol is ``begin``, then any number of :meth:`write_part` (each
        rank, each chunk) and at most one :meth:`write_preview` per rank, then one
        :meth:`commit`; until the commit the round is invisible to readers.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.path(round_idx).exists():
            raise StoreError(f"round {round_idx} already exists in {self.root}; a stored round is never overwritten")
        tmp = self._tmp(round_idx)
        _remove_entry(tmp)
        try:
            tmp.mkdir(parents=True)
        except OSError as err:
            raise StoreError(f"cannot create the round's temporary folder {tmp}: {err}") from err

    def write_part(self, round_idx: int, tensors: dict[str, Tensor], rank: int = 0, chunk: int = 0) -> Path:
        """Write one part (a chunk of one rank) of a round in progress."""
        return self._save(self._tmp(round_idx) / f"part_{rank:03d}_{chunk:05d}.pt", tensors)

    def write_preview(self, round_idx: int, tensors: dict[str, Tensor], rank: int = 0) -> Path:
        """Write a rank's preview of a round in progress (see :meth:`read_preview`).

        A preview holds model samples and all K rewards of the rank's first slots, kept for plots,
        distances and predictions.
        """
        return self._save(self._tmp(round_idx) / f"{PREVIEW_PREFIX}{rank:03d}.pt", tensors)

    def read_preview(self, round_idx: int) -> dict[str, Tensor]:
        """The previews of every rank of a round still being written, merged in slot order."""
        paths = sorted(self._tmp(round_idx).glob(f"{PREVIEW_PREFIX}*.pt"))
        return _merge_parts([torch.load(p, weights_only=True) for p in paths]) if paths else {}

    @staticmethod
    def _save(path: Path, tensors: dict[str, Tensor]) -> Path:
        try:
            torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path)
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        except (OSError, RuntimeError) as err:  # EFBIG, ENOSPC, EACCES; torch reports some as RuntimeError
            raise StoreError(f"could not write {path}: {err} (file size limit, full disk or permissions?); "
                             "the round is discarded and made again on resume") from err
        return path

    def abort(self, round_idx: int) -> None:
        """Discard a round in progress (its temporary folder), on the way out of a stopped or failed run.

        Best effort: it raises nothing (what stopped the run is the error to report), and a folder it
        could not remove is removed at the next start. A committed round is never touched.
        """
        try:
            _remove_entry(self._tmp(round_idx))
        except StoreError:
            pass

    def commit(self, round_idx: int, manifest: dict[str, Any]) -> Path:
        """Checksum the parts, write the manifest and move the round into place atomically."""
        tmp, final = self._tmp(round_idx), self.path(round_idx)
        parts = sorted(p.name for p in tmp.glob("part_*.pt"))
        parts += sorted(p.name for p in tmp.glob(f"{PREVIEW_PREFIX}*.pt"))
        if not parts:
            raise StoreError(f"round {round_idx}: no parts were written to {tmp}")
        record = dict(manifest)
        record["round"] = round_idx
        record["parts"] = {name: _sha256(tmp / name) for name in parts}
        try:
            text = json.dumps(record, indent=2, sort_keys=True, default=_json_default)
        except TypeError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"round {round_idx}: the manifest is not JSON serialisable ({err})") from err
        try:
            with open(tmp / MANIFEST, "w") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            raise StoreError(f"could not write {tmp / MANIFEST}: {err}; the round is made again on resume") from err
        if final.exists():
            raise StoreError(f"round {round_idx} already exists in {self.root}; a stored round is never overwritten")
        try:
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except OSError as err:
            raise StoreError(f"could not move {tmp} to {final}: {err}") from err
        return final

    def write(self, round_idx: int, tensors: dict[str, Tensor], manifest: dict[str, Any]) -> Path:
        """Write a whole round at once (one part), atomically; refuse to replace an existing round."""
        self.begin(round_idx)
        self.write_part(round_idx, tensors)
        manifest = dict(manifest, sizes={k: list(v.shape) for k, v in tensors.items()})
        return self.commit(round_idx, manifest)

    def read_manifest(self, round_idx: int) -> dict[str, Any]:
        """A committed round's manifest; any read or parse error names the file."""
        path = self.path(round_idx) / MANIFEST
        if not path.is_file():
            raise StoreError(f"round {round_idx} is not in the store {self.root} (no {path})")
        try:
            with open(path) as fh:
                manifest = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StoreError(f"the manifest {path} is not valid JSON ({err})") from err
        except OSError as err:
            raise StoreError(f"cannot read the manifest {path}: {err}") from err
        if not isinstance(manifest, dict):
            raise StoreError(f"the manifest {path} is not a JSON object")
        return manifest

    def verify(self, round_idx: int) -> tuple[dict[str, Any], list[Path]]:
        """Check a stored round without loading it; returns the manifest and the part paths.

        The manifest must be valid and every part a file inside the round folder with its checksum.
        """
        manifest = self.read_manifest(round_idx)
        manifest_path = self.path(round_idx) / MANIFEST
        if manifest.get("round") != round_idx:
            raise StoreError(f"the manifest {manifest_path} says round {manifest.get('round')!r}, not {round_idx}")
        parts = manifest.get("parts")
        if not isinstance(parts, dict) or not parts:
            raise StoreError(f"round {round_idx}: the manifest {manifest_path} lists no parts")
        paths = []
        for name, expected in sorted(parts.items()):
            path = self.path(round_idx) / _check_part_name(round_idx, manifest_path, name)
            if not path.is_file():
                raise StoreError(f"round {round_idx}: {path} is missing but its manifest lists it")
            try:
                actual = _sha256(path)
            except OSError as err:
                raise StoreError(f"round {round_idx}: cannot read {path}: {err}") from err
            if actual != expected:
                raise StoreError(
                    f"round {round_idx}: checksum mismatch for {path} (manifest {expected}, file {actual}); "
                    "the stored round was modified or corrupted. It is not regenerated silently: restore "
                    "the file, or start a new run in another directory")
            paths.append(path)
        return manifest, paths

    def read(self, round_idx: int, map_location: str | torch.device = "cpu") -> StoredRound:
        """Load a round after checking every part against the manifest's checksums."""
        manifest, paths = self.verify(round_idx)
        loaded = []
        for path in paths:
            try:
                loaded.append(torch.load(path, map_location=map_location, weights_only=True))
            except Exception as err:  # noqa: BLE001 - any unpickling failure: name the file
                raise StoreError(f"round {round_idx}: cannot load {path}: {err}") from err
        try:
            tensors = _merge_parts(loaded)
        except ValueError as err:
            raise StoreError(f"round {round_idx} ({self.path(round_idx)}): {err}") from err
        self._refuse_edited(round_idx, check_row(manifest, tensors))
        return StoredRound(tensors=tensors, manifest=manifest)

    def _refuse_edited(self, round_idx: int, problems: list[str]) -> None:
        if problems:
            raise StoreError(f"{self.path(round_idx) / MANIFEST}: {'; '.join(problems)} (edited after the round was "
                             "written?); restore the manifest, or start a new run in another directory")

    def check_whole(self) -> list[int]:
        """Verify the whole store before a resume trusts it; returns the stored rounds ``0..t``.

        Rounds must be contiguous from 0 (a missing round would silently drop out of the run's
        table), every round folder must have its manifest, every part its checksum, and a change of
        settings between two rounds must be one the later round records in ``settings_changed``.
        """
        stored = self.rounds()
        if self.root.is_dir():
            for child in sorted(self.root.iterdir()):
                if child.name.startswith("round_") and child.is_dir() and not (child / MANIFEST).is_file():
                    raise StoreError(f"{child} has no {MANIFEST}: the round is incomplete or was tampered with; "
                                     "restore it, or start a new run in another directory")
        missing = [t for t in range(stored[-1] + 1) if t not in stored] if stored else []
        if missing:
            names = ", ".join(self.path(t).name for t in missing)
            present = ", ".join(self.path(t).name for t in stored)
            raise StoreError(f"{names} missing from {self.root} (stored: {present}); rounds must be contiguous "
                             "from round_000. Restore the missing round, or start a new run in another directory")
        previous = None
        for t in stored:
            manifest = self.read(t).manifest  # verified, loaded, its row checked against its data
            settings = settings_of_manifest(manifest)
            self._refuse_edited(t, check_manifest_settings(manifest, self.path(t) / MANIFEST))
            if previous is not None:
                changed = sorted(k for k in set(previous) & set(settings) if previous[k] != settings[k])
                declared = manifest.get("settings_changed") or {}
                undeclared = [k for k in changed if k not in declared]
                if undeclared:
                    raise StoreError(
                        f"round {t} ({self.path(t) / MANIFEST}) was made with other settings than round {t - 1} "
                        f"({', '.join(f'{k}: {previous[k]!r} -> {settings[k]!r}' for k in undeclared)}) and does "
                        "not record the change: the store mixes two runs")
            previous = settings
        return stored

    def clean_partial(self) -> list[Path]:
        """Remove temporary folders left by a crash mid-write (never a complete round)."""
        removed: list[Path] = []
        if self.root.is_dir():
            for child in self.root.glob(".tmp_round_*"):
                _remove_entry(child)
                removed.append(child)
        return removed


def _remove_entry(path: Path) -> None:
    """Remove a leftover temporary entry itself: a folder with its files, or a link or file, never a
    link's target (a planted ``.tmp_round_NNN`` symlink must not delete anything outside the run)."""
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError as err:
        raise StoreError(f"cannot remove the leftover temporary entry {path}: {err}") from err


def _merge_parts(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate parts; tensors keyed by a slot index are put in slot order."""
    if len(parts) == 1:
        merged = dict(parts[0])
    else:
        keys = dict.fromkeys(k for part in parts for k in part)
        merged = {k: torch.cat([part[k] for part in parts if k in part]) for k in keys}
    for slot_key, keyed in _SLOT_KEYED.items():
        if slot_key in merged:
            n = merged[slot_key].shape[0] if merged[slot_key].dim() else -1
            short = [k for k in keyed if k in merged and (merged[k].dim() == 0 or merged[k].shape[0] != n)]
            if n < 0 or short:
                raise ValueError(f"{', '.join(short) or slot_key} must have one row per {slot_key} entry ({n})")
            order = torch.sort(merged[slot_key], stable=True).indices
            for k in (slot_key, *keyed):
                if k in merged:
                    merged[k] = merged[k][order]
    return merged


def _json_default(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
