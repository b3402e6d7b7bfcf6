"""The round store: every round's curated samples on disk, so nothing is lost.

Layout under the run's log directory::

    rounds/
      round_000/            curated from the model after round 0 (trains round 1)
        samples.pt          tensors: ``x`` (winners), optional ``labels``, ``rewards``,
                            ``preview`` (model samples kept for plots), ...
        manifest.json       round, sizes, K, beta, seed, reward statistics, the
                            round's metrics row and the sha256 of samples.pt

A round is written to a temporary folder and renamed into place, so a crash
leaves either the whole round or nothing. A written round is never replaced;
on resume it is read back and its checksum verified (a mismatch is an error,
never a silent regeneration).
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

__all__ = ["RoundStore", "StoreError", "StoredRound"]

MANIFEST = "manifest.json"
SAMPLES = "samples.pt"


class StoreError(RuntimeError):
    """The round store on disk is missing, corrupt, or from another run."""


class StoredRound(dict):
    """``tensors`` and ``manifest`` of one round."""

    @property
    def tensors(self) -> dict[str, Tensor]:
        return self["tensors"]

    @property
    def manifest(self) -> dict[str, Any]:
        return self["manifest"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        return self.root / f"round_{round_idx:03d}"

    def has(self, round_idx: int) -> bool:
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

    def write(self, round_idx: int, tensors: dict[str, Tensor], manifest: dict[str, Any]) -> Path:
        """Write round ``round_idx`` atomically; refuse to replace an existing round."""
        final = self.path(round_idx)
        if final.exists():
            raise StoreError(f"round {round_idx} already exists in {self.root}; a stored round is never overwritten")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp_round_{round_idx:03d}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        samples_path = tmp / SAMPLES
        torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, samples_path)
        with open(samples_path, "rb+") as fh:
            os.fsync(fh.fileno())
        record = dict(manifest)
        record["round"] = round_idx
        record["sha256"] = _sha256(samples_path)
        record["sizes"] = {k: list(v.shape) for k, v in tensors.items()}
        try:
            text = json.dumps(record, indent=2, sort_keys=True, default=_json_default)
        except TypeError as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"round {round_idx}: the manifest is not JSON serialisable ({err})") from err
        with open(tmp / MANIFEST, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)
        return final

    def read_manifest(self, round_idx: int) -> dict[str, Any]:
        path = self.path(round_idx) / MANIFEST
        if not path.is_file():
            raise StoreError(f"round {round_idx} is not in the store {self.root} (no {path})")
        try:
            with open(path) as fh:
                return json.load(fh)
        except json.JSONDecodeError as err:
            raise StoreError(f"the manifest {path} is not valid JSON ({err})") from err

    def read(self, round_idx: int, map_location: str | torch.device = "cpu") -> StoredRound:
        """Load a round after checking its samples against the manifest's checksum."""
        manifest = self.read_manifest(round_idx)
        samples_path = self.path(round_idx) / SAMPLES
        if not samples_path.is_file():
            raise StoreError(f"round {round_idx}: {samples_path} is missing but its manifest exists")
        actual = _sha256(samples_path)
        if actual != manifest.get("sha256"):
            raise StoreError(
                f"round {round_idx}: checksum mismatch for {samples_path} (manifest {manifest.get('sha256')}, "
                f"file {actual}); the stored round was modified or corrupted. It is not regenerated "
                "silently: restore the file, or start a new run in another directory")
        tensors = torch.load(samples_path, map_location=map_location, weights_only=True)
        return StoredRound(tensors=tensors, manifest=manifest)

    def clean_partial(self) -> list[Path]:
        """Remove temporary folders left by a crash mid-write (never a complete round)."""
        removed = []
        if self.root.is_dir():
            for child in self.root.glob(".tmp_round_*"):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
        return removed


def _json_default(obj):
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
