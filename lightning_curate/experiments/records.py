"""Machine-readable records of measured figures: one JSON file per measurement, one home per number.

A benchmark or a reproduction writes what it measured with :func:`write_record`; the docs'
experiments pages render and cite these files (``docs/experiments/records/<name>.json``), so a
figure is stated once, with the date, the package version, the machine and the command that
produced it. A record is::

    {"name": "bench_round_main", "date": "2026-12-06", "version": "0.2.0",
     "command": "python scripts/bench_round.py --record",
     "machine": {"platform": "Linux-6.8-x86_64", "cpu": "AMD EPYC 7763", "cores": 2,
                 "torch": "2.13.0+cpu", "device": "cpu"},
     "figures": {"seconds_per_round": 1.25}}

Figures are JSON values (nested dicts with string keys, lists, strings, booleans, ``None`` and
finite numbers): a NaN or an infinity is refused, as JSON has no spelling for them and a record
must read back exactly as it was written.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, TypedDict

import torch

__all__ = ["DEFAULT_FOLDER", "Machine", "Record", "RecordError", "machine", "read_record", "read_records",
           "write_record"]

DEFAULT_FOLDER = Path("docs/experiments/records")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KEYS = ("name", "date", "version", "command", "machine", "figures")
_MACHINE_KEYS = ("platform", "cpu", "cores", "torch", "device")


class Machine(TypedDict):
    """Where a figure was measured: OS, CPU model, logical cores, torch version, device (``cpu`` or the card)."""

    platform: str
    cpu: str
    cores: int
    torch: str
    device: str


class Record(TypedDict):
    """One measurement: what, when, with which version, on which machine, by which command, and its figures."""

    name: str
    date: str
    version: str
    command: str
    machine: Machine
    figures: dict[str, Any]


class RecordError(ValueError):
    """A record that cannot be written or read as it is (the message names the figure or the file)."""


def _cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` says only the ISA)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cores() -> int:
    """The logical cores this process may use (its affinity, not the whole host's count)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def machine(device: Optional[str] = None) -> Machine:
    """This machine, as a record states it.

    Args:
        device: what the figures were measured on. ``None``: the first CUDA card's name when there is
            one, else ``"cpu"``; a ``torch.device`` string (``"cuda:0"``) is replaced by that card's name.

    Example:
        >>> machine("cpu")["device"]
        'cpu'
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(torch.device(device))
    return {"platform": platform.platform(), "cpu": _cpu_name(), "cores": _cores(),
            "torch": str(torch.__version__), "device": device}


def _package_version() -> str:
    # The package is imported before any of its submodules, so its __version__ is already there;
    # reading it from sys.modules keeps this module below the package's top level in the layers.
    return str(sys.modules["lightning_curate"].__version__)


def _check_figures(value: Any, where: str) -> None:
    """Raise :class:`RecordError` naming the first figure JSON cannot hold exactly."""
    if value is None or isinstance(value, (bool, str, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RecordError(f"{where} is {value}: a record holds finite numbers only")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RecordError(f"{where} has the key {key!r} ({type(key).__name__}): keys must be strings")
            _check_figures(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _check_figures(item, f"{where}[{i}]")
        return
    raise RecordError(f"{where} is a {type(value).__name__} ({value!r}): a figure is a number, string, bool, "
                      "None, list or dict (convert tensors and tuples first)")


def write_record(name: str, figures: dict[str, Any], command: str, folder: Path | str = DEFAULT_FOLDER, *,
                 device: Optional[str] = None, date: Optional[datetime.date] = None) -> Path:
    """Write ``folder/<name>.json``: the figures with the date, version, machine and command.

    Everything is checked before a byte is written, and the file is replaced atomically (a temporary
    file in the same folder, then a rename), so a refused or interrupted write leaves an earlier
    record of the same name as it was.

    Args:
        name: the record's name and file stem (letters, digits, ``_``, ``.``, ``-``).
        figures: the measured values (see the module docstring for what a figure may be).
        command: the command line that measured them, as a reader would rerun it.
        folder: where records live (created if missing); default ``docs/experiments/records``.
        device: what the figures were measured on (see :func:`machine`).
        date: the measurement's date (default: today, UTC).

    Returns:
        The path written.

    Raises:
        RecordError: a bad name or command, or a figure JSON cannot hold exactly (NaN, infinity, a tensor).

    Example:
        >>> import tempfile
        >>> path = write_record("demo", {"ms": 1.5}, "python bench.py", tempfile.mkdtemp())
        >>> read_record(path)["figures"]
        {'ms': 1.5}
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise RecordError(f"record name {name!r}: expected letters, digits, '_', '.' or '-' (a file stem)")
    if not isinstance(command, str) or not command.strip():
        raise RecordError(f"record {name!r}: command must be the non-empty command line that measured it")
    if not isinstance(figures, dict):
        raise RecordError(f"record {name!r}: figures must be a dict, got {type(figures).__name__}")
    _check_figures(figures, "figures")
    when = date if date is not None else datetime.datetime.now(datetime.timezone.utc).date()
    record: Record = {"name": name, "date": when.isoformat(), "version": _package_version(), "command": command,
                      "machine": machine(device), "figures": figures}
    text = json.dumps(record, indent=2, allow_nan=False) + "\n"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_record(path: Path | str) -> Record:
    """One record, checked: every field present and of its type, its name the file's stem.

    Raises:
        RecordError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"{path}: not JSON ({err})") from err
    if not isinstance(data, dict) or sorted(data) != sorted(_KEYS):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise RecordError(f"{path}: expected the keys {list(_KEYS)}, got {keys}")
    for key in ("name", "date", "version", "command"):
        if not isinstance(data[key], str):
            raise RecordError(f"{path}: {key} must be a string, got {data[key]!r}")
    if data["name"] != path.stem:
        raise RecordError(f"{path}: holds the record {data['name']!r}, not {path.stem!r}")
    try:
        datetime.date.fromisoformat(data["date"])
    except ValueError as err:
        raise RecordError(f"{path}: date {data['date']!r} is not YYYY-MM-DD") from err
    found = data["machine"]
    if not isinstance(found, dict) or sorted(found) != sorted(_MACHINE_KEYS):
        raise RecordError(f"{path}: machine must hold {list(_MACHINE_KEYS)}, got {found!r}")
    if not isinstance(found["cores"], int) or not all(isinstance(found[k], str) for k in _MACHINE_KEYS if k != "cores"):
        raise RecordError(f"{path}: machine's cores must be an int and the rest strings, got {found!r}")
    if not isinstance(data["figures"], dict):
        raise RecordError(f"{path}: figures must be a dict")
    return data  # type: ignore[return-value]  # checked field by field above


def read_records(folder: Path | str = DEFAULT_FOLDER) -> dict[str, Record]:
    """Every record in ``folder`` (``*.json``), by name, in name order.

    Raises:
        RecordError: a missing folder, or a file in it that is not a record (named).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = write_record("b", {"x": 2}, "run b", folder); _ = write_record("a", {"x": 1}, "run a", folder)
        >>> list(read_records(folder))
        ['a', 'b']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RecordError(f"{folder}: no such folder of records")
    return {path.stem: read_record(path) for path in sorted(folder.glob("*.json"))}
