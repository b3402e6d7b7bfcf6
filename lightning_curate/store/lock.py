"""One run per directory: an exclusive lock taken before a run writes anything.

Two runs writing one directory mix their rounds (a manifest of one run beside
the parts of the other) while every checksum still passes, so a run holds
``<run dir>/.lightning_curate.lock`` from before its config is saved until it
exits. The lock file holds JSON about its holder (PID, host, boot id, process
start time, a random token) and is created with ``os.link`` of a fully written
private file: the link either creates the complete lock or fails with
``EEXIST``, atomically on local filesystems and on NFS alike (where ``O_EXCL``
was not always atomic), so it works on the shared filesystems of a cluster.

A lock left by a process that is gone is *stale* and taken over:

- same host (same hostname, boot id and PID namespace): the holder's PID is not
  alive, is a zombie, or is now another process (its start time differs);
- another host (or container), or a lock written before a reboot: the lock file's mtime is
  older than ``stale_after_s`` (default 600 s). A holder's heartbeat thread
  touches the file every ``heartbeat_s`` (default 30 s), so a live run on
  another node never looks stale; a node that freezes for longer than
  ``stale_after_s`` loses its lock.

A takeover happens under a short guard file (``.lightning_curate.lock.break``,
itself linked): the breaker re-reads the lock and removes it only if it still
holds the stale token, so two processes breaking one stale lock never remove
each other's fresh lock.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["LOCK_NAME", "RunLock", "RunLockError", "held_lock_for", "is_rank_zero_env"]

LOCK_NAME = ".lightning_curate.lock"
_GUARD_SUFFIX = ".break"
_GUARD_STALE_S = 60.0
_HELD: dict[Path, "RunLock"] = {}


class RunLockError(RuntimeError):
    """The run directory is locked by another live run, or cannot be locked."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    """Containers may share a hostname and boot id; PIDs only mean something within one PID namespace."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _start_ticks(pid: int) -> Optional[int]:
    """Start time of ``pid`` (clock ticks since boot), or None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 else None


def _process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rfind(")") + 2:].split()[0]


def _pid_alive(pid: int, start_ticks: Optional[int]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    if _process_state(pid) == "Z":
        return False
    now = _start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def is_rank_zero_env() -> bool:
    """Whether this process is global rank 0, from the launcher's environment (before a Trainer exists)."""
    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK"):
        value = os.environ.get(key)
        if value not in (None, "") and value.strip() != "0":
            return False
    return True


def held_lock_for(path: str | os.PathLike) -> Optional["RunLock"]:
    """The lock this process holds on ``path`` or on a folder above it, if any."""
    target = Path(path).resolve()
    for folder, lock in _HELD.items():
        if target == folder or folder in target.parents:
            return lock
    return None


class RunLock:
    """An exclusive, stale-aware lock on one run directory (see the module docstring).

    Args:
        run_dir: the directory to lock (created if missing).
        stale_after_s: age after which a lock from another host counts as abandoned.
        heartbeat_s: how often the holder refreshes the lock's mtime.
    """

    def __init__(self, run_dir: str | os.PathLike, stale_after_s: float = 600.0, heartbeat_s: float = 30.0,
                 role: str = "run directory"):
        self.run_dir = Path(run_dir).resolve()
        self.role = role  # what the folder is to the run, for the messages ("checkpoint folder", ...)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after_s = float(stale_after_s)
        self.heartbeat_s = float(heartbeat_s)
        self.info: dict[str, Any] = {}
        self.lost = False  # set by the heartbeat when another process took the lock over
        self._created_dir = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- acquire ------------------------------------------------------------
    def acquire(self) -> "RunLock":
        """Take the lock or raise :class:`RunLockError` naming its live holder."""
        try:
            self._created_dir = not self.run_dir.exists()
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunLockError(f"cannot create the {self.role} {self.run_dir}: {err}") from err
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "boot_id": _boot_id(),
                     "pid_ns": _pid_namespace(), "start_ticks": _start_ticks(os.getpid()),
                     "token": secrets.token_hex(16), "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        for _ in range(5):
            if self._link(self.path):
                _HELD[self.run_dir] = self
                atexit.register(self.release)
                self._start_heartbeat()
                return self
            holder = self._read(self.path)
            if holder is None:
                continue  # removed between our link and our read: try again
            if not self._is_stale(holder):
                raise RunLockError(self._held_message(holder))
            self._break(holder)
        raise RunLockError(f"could not lock {self.run_dir}: the lock {self.path} keeps changing hands; retry")

    def _link(self, target: Path) -> bool:
        """Create ``target`` holding our info atomically; False if it already exists."""
        tmp = self.run_dir / f"{LOCK_NAME}.{self.info['host']}.{os.getpid()}.{self.info['token'][:8]}"
        try:
            with open(tmp, "w") as fh:
                json.dump(self.info, fh)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)
                return True
            except FileExistsError:
                return False
        except OSError as err:
            if err.errno == errno.EEXIST:
                return False
            raise RunLockError(f"cannot lock the {self.role} {self.run_dir} (writing {target}): {err}") from err
        finally:
            try:
                tmp.unlink()
            except OSError:
                pass

    @staticmethod
    def _read(path: Path) -> Optional[dict[str, Any]]:
        try:
            text = path.read_text()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as err:
            raise RunLockError(f"cannot read the lock {path}: {err}") from err
        try:
            holder = json.loads(text)
            if not isinstance(holder, dict):
                raise ValueError("not an object")
        except ValueError:
            holder = {"unreadable": text[:200]}
        holder["mtime"] = mtime
        return holder

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        same_machine = all(holder.get(k) == self.info[k] for k in ("host", "boot_id", "pid_ns")) \
            and isinstance(holder.get("pid"), int)
        if same_machine:
            return not _pid_alive(holder["pid"], holder.get("start_ticks"))
        return time.time() - holder["mtime"] > self.stale_after_s

    def _held_message(self, holder: dict[str, Any]) -> str:
        if "unreadable" in holder:
            who = f"an unreadable lock file {self.path}"
        else:
            who = (f"PID {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}, "
                   f"lock refreshed {time.time() - holder['mtime']:.0f} s ago)")
        return (f"the {self.role} {self.run_dir} is in use by another run: {who}. Two runs in one directory "
                f"would mix their rounds. Wait for it to finish, stop it, or use another directory "
                f"(--trainer.default_root_dir). A lock whose holder is gone is taken over automatically "
                f"(on another host after {self.stale_after_s:.0f} s without a heartbeat)")

    def _break(self, stale: dict[str, Any]) -> None:
        """Remove a stale lock, only if it is still the one we judged stale."""
        guard = self.path.with_name(LOCK_NAME + _GUARD_SUFFIX)
        if not self._link(guard):
            other = self._read(guard)
            if other is not None and time.time() - other["mtime"] > _GUARD_STALE_S:
                guard.unlink(missing_ok=True)  # a breaker died mid-takeover
            time.sleep(0.05)
            return
        try:
            current = self._read(self.path)
            if current is not None and current.get("token") == stale.get("token") \
                    and current.get("unreadable") == stale.get("unreadable"):
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    # -- hold and release ---------------------------------------------------
    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat_s):
                if not self.still_ours():
                    self.lost = True  # taken over after a freeze: never refresh another holder's lock
                    return
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._thread = threading.Thread(target=beat, name="lightning_curate-lock-heartbeat", daemon=True)
        self._thread.start()

    def still_ours(self) -> bool:
        """Whether the lock file on disk is still this holder's (not removed, not taken over)."""
        try:
            current = self._read(self.path)
        except RunLockError:
            return False
        return current is not None and current.get("token") == self.info.get("token")

    @property
    def held(self) -> bool:
        """Whether this object holds its lock now."""
        return _HELD.get(self.run_dir) is self

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent; a forked child never releases its parent's)."""
        if not self.held or self.info.get("pid") != os.getpid():
            return
        self._stop.set()
        _HELD.pop(self.run_dir, None)
        current = self._read(self.path)
        if current is not None and current.get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # a refused start leaves no empty folder behind
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
