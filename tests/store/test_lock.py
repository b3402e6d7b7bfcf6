"""RunLock: one run per directory; a live holder is named, a dead one's lock is taken over."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from lightning_curate.store import lock as lock_mod
from lightning_curate.store.lock import LOCK_NAME, RunLock, RunLockError, held_lock_for, is_rank_zero_env


def _write_lock(run_dir, **info):
    """A lock file as a holder with ``info`` would write it (this PID namespace unless given)."""
    info.setdefault("pid_ns", lock_mod._pid_namespace())
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps(info))
    return run_dir / LOCK_NAME


def test_acquire_writes_holder_and_release_removes_it(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    try:
        info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        assert held_lock_for(tmp_path / "run" / "rounds") is lock
        assert held_lock_for(tmp_path) is None
    finally:
        lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert held_lock_for(tmp_path / "run") is None
    assert not (tmp_path / "run").exists()  # it made the folder, left it empty: removed (no temp files left)


def test_release_keeps_a_folder_it_did_not_make_or_that_holds_files(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    (tmp_path / "run" / "metrics.csv").write_text("x\n")
    lock.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.csv"]
    RunLock(tmp_path).acquire().release()
    assert tmp_path.is_dir()


def test_second_acquire_names_the_live_holder_and_leaves_its_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = _write_lock(tmp_path, pid=holder.pid, host=socket.gethostname(), boot_id=lock_mod._boot_id(),
                           start_ticks=lock_mod._start_ticks(holder.pid), token="t", started="10:00")
        before = path.read_bytes()
        with pytest.raises(RunLockError, match=f"in use by another run: PID {holder.pid} on host "
                                               f"{socket.gethostname()} \\(started 10:00"):
            RunLock(tmp_path).acquire()
        assert path.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, host=socket.gethostname(), boot_id=lock_mod._boot_id(),
                start_ticks=None, token="old", started="x")
    lock = RunLock(tmp_path).acquire()
    try:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.info["token"] != "old"
    finally:
        lock.release()


def test_reused_pid_is_not_a_live_holder(tmp_path):
    """Our own PID with another start time: the PID was reused, the holder is gone."""
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), boot_id=lock_mod._boot_id(),
                start_ticks=lock_mod._start_ticks(os.getpid()) - 1, token="old")
    RunLock(tmp_path).acquire().release()


def test_other_host_lock_is_stale_only_after_its_heartbeat_stops(tmp_path):
    path = _write_lock(tmp_path, pid=1, host="node-that-is-not-here", boot_id="b", token="t", started="s")
    with pytest.raises(RunLockError, match="PID 1 on host node-that-is-not-here"):
        RunLock(tmp_path, stale_after_s=600).acquire()
    old = time.time() - 601
    os.utime(path, (old, old))
    lock = RunLock(tmp_path, stale_after_s=600).acquire()
    lock.release()


def test_heartbeat_refreshes_the_lock(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        old = time.time() - 1000
        os.utime(tmp_path / LOCK_NAME, (old, old))
        time.sleep(0.3)
        assert time.time() - (tmp_path / LOCK_NAME).stat().st_mtime < 5
    finally:
        lock.release()


def test_release_never_removes_someone_elses_lock(tmp_path):
    lock = RunLock(tmp_path).acquire()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "h", "token": "theirs"}))
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "theirs"


def test_a_stale_lock_broken_by_two_processes_ends_with_one_holder(tmp_path):
    """Four processes race to take over one dead lock: exactly one wins, the others name it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path, pid=dead.pid, host=socket.gethostname(), boot_id=lock_mod._boot_id(), token="old")
    # lock.py is stdlib-only: load it alone, so four interpreters start in a blink (no torch import).
    code = ("import importlib.util, sys, time\n"
            f"spec = importlib.util.spec_from_file_location('lock', {lock_mod.__file__!r})\n"
            "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
            "RunLock, RunLockError = mod.RunLock, mod.RunLockError\n"
            "try:\n"
            f"    RunLock({str(tmp_path)!r}).acquire(); print('won', flush=True); time.sleep(3)\n"
            "except RunLockError as err:\n"
            "    print('refused', err, flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sum(o.startswith("won") for o in outs) == 1, outs
    assert all(o.startswith("won") or "in use by another run" in o for o in outs), outs


def test_unwritable_directory_is_named(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(lock_mod.os, "link", refuse)
    with pytest.raises(RunLockError, match=f"cannot lock the run directory {tmp_path}.*Permission denied"):
        RunLock(tmp_path).acquire()


@pytest.mark.parametrize("env, zero", [({}, True), ({"LOCAL_RANK": "0"}, True), ({"LOCAL_RANK": "1"}, False),
                                       ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, False), ({"RANK": "3"}, False),
                                       ({"SLURM_PROCID": "0"}, True), ({"SLURM_PROCID": "2"}, False)])
def test_rank_zero_from_the_environment(monkeypatch, env, zero):
    for key in ("RANK", "SLURM_PROCID", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert is_rank_zero_env() is zero


def test_a_lock_from_another_pid_namespace_is_judged_by_its_heartbeat(tmp_path):
    """Same hostname and boot, another container: its PID means nothing here, so only age counts."""
    _write_lock(tmp_path, pid=999_999_999, host=socket.gethostname(), boot_id=lock_mod._boot_id(),
                pid_ns="pid:[1]", token="t", started="s")
    with pytest.raises(RunLockError, match="PID 999999999"):
        RunLock(tmp_path).acquire()
