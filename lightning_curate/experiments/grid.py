"""A sweep's grid: parse ``KEY=V1,V2`` and seed specs, and plan every grid point x seed as a run.

Values are read as YAML (``0.5``, ``true``, ``euler``, ``[0, 1]``). Each run gets the
base config with the grid values and the seed merged in (``seed_everything``, the
loop's ``seed`` and the DataModule's ``seed``), and its own directory
``<out>/<point>/seed=<s>/`` for its checkpoints and logs.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from lightning_curate.experiments.config_keys import SweepError, check_count, loop_entry, set_key
from lightning_curate.utils.validation import is_int

__all__ = ["RunSpec", "format_value", "parse_grid_spec", "parse_seeds", "parse_set_spec", "plan_sweep"]


def _split_values(text: str) -> list[str]:
    """Split on commas that are not inside brackets or braces."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
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
    key, values = _key_and_text(spec, f"bad grid spec {spec!r}: expected KEY=VALUE1,VALUE2,... ({example})")
    items = _split_values(values)
    if not values.strip() or any(item == "" for item in items):
        raise SweepError(f"bad grid spec {spec!r}: empty value in {values!r} ({example})")
    parsed = [_yaml_value(item, f"grid spec {spec!r}") for item in items]
    _check_distinct(key, parsed)
    return key, parsed



def _key_and_text(spec: Any, malformed: str) -> tuple[str, str]:
    """``"KEY=TEXT"`` -> ``(KEY, TEXT)`` with KEY checked; ``malformed`` is the error without an ``=``."""
    if not isinstance(spec, str) or "=" not in spec:
        raise SweepError(malformed)
    key, _, text = spec.partition("=")
    key = key.strip()
    _check_key(key, spec)
    return key, text


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
    key, value = _key_and_text(spec, f"bad --set {spec!r}: expected KEY=VALUE, e.g. --set loop.rounds=3")
    if not value.strip():
        raise SweepError(f"bad --set {spec!r}: empty value")
    return key, _yaml_value(value.strip(), f"--set {spec!r}")


def _seed(item: Any, spec: Any) -> int:
    """One seed: an int, a whole float (YAML reads ``3.0`` so) or an integer's text."""
    if is_int(item) or (isinstance(item, float) and item.is_integer()):
        return int(item)
    if isinstance(item, str):
        try:
            return int(item)
        except ValueError:
            pass
    raise SweepError(f"bad seeds {spec!r}: {item!r} is not an integer")


def parse_seeds(spec) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` or a list of ints -> a list of distinct ints."""
    if is_int(spec):
        return [int(spec)]
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
    seeds = [_seed(item, spec) for item in items]
    if not seeds:
        raise SweepError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds must be distinct, got {seeds}")
    return seeds


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
        """The run as text for progress lines: its grid values (short keys) and its seed."""
        names = _short_names(list(self.values))
        return " ".join(f"{names[k]}={format_value(v)}" for k, v in self.values.items()) + f" seed={self.seed}"


def format_value(value: Any) -> str:
    """A grid value as text: YAML flow style for lists and mappings, ``str`` otherwise."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}



def _dir_name(values: dict[str, Any]) -> str:
    if not values:
        return "base"
    names = _short_names(list(values))
    text = "__".join(f"{names[k]}={format_value(v)}" for k, v in values.items())
    safe = "".join(ch if ch.isalnum() or ch in "=._-" else "_" for ch in text)
    return safe[:200]



CHECKPOINT_CLASSES = ("ModelCheckpoint", "RoundCheckpoint")


def _isolate_run_dirs(config: dict, run_dir: Path) -> list[str]:
    """Point the checkpoint and logger directories of ``config`` into ``run_dir``; returns notes."""
    notes = []
    trainer = config.setdefault("trainer", {})
    trainer["default_root_dir"] = str(run_dir)
    callbacks = trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if not isinstance(cb, dict) or not str(cb.get("class_path", "")).endswith(CHECKPOINT_CLASSES):
            continue
        args = cb.setdefault("init_args", {})
        dirpath = args.get("dirpath")
        if dirpath is not None and "${" not in str(dirpath):
            args["dirpath"] = str(run_dir / "checkpoints")
            notes.append(f"checkpoint dirpath {dirpath!r} -> {args['dirpath']!r}")
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
    loop_entry(base)  # a clear error first when the base has no loop
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
            loop_entry(config).setdefault("init_args", {})["seed"] = seed
            data = config.get("data")
            if isinstance(data, dict) and "class_path" in data:
                data.setdefault("init_args", {})["seed"] = seed
            run_dir = out / point / f"seed={seed}"
            _isolate_run_dirs(config, run_dir)
            rounds = check_count(f"{point} seed={seed}: loop rounds",
                                 loop_entry(config).get("init_args", {}).get("rounds", 10), minimum=0)
            specs.append(RunSpec(point=point, values=values, seed=seed, run_dir=run_dir, config=config,
                                 rounds=rounds))
    return specs

