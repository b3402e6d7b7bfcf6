"""Dotted config keys of a sweep: read and set ``data.init_args.real_fraction``-style paths in a config.

Keys are dotted paths into a LightningCLI config: ``data.init_args.real_fraction``;
``init_args`` may be left out (``data.real_fraction``, ``model.num_candidates``);
``loop.<arg>`` is the ``RetrainingLoop`` callback's argument (``loop.rounds``);
list items take an index (``trainer.callbacks.0.init_args.seed``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from lightning_curate.utils.validation import check_int

__all__ = ["LOOP_CLASS", "SweepError", "check_count", "get_key", "load_base_config", "loop_entry", "read_yaml_mapping",
           "set_key"]

LOOP_CLASS = "RetrainingLoop"


class SweepError(ValueError):
    """A bad sweep specification (grid, seeds, keys, base config)."""


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, else a :class:`SweepError` naming ``name``."""
    try:
        return check_int(name, value, minimum=minimum)
    except ValueError as err:
        raise SweepError(str(err)) from None


def loop_entry(config: dict) -> dict:
    """The ``RetrainingLoop`` callback's entry under ``trainer.callbacks``; a sweep needs one."""
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
        node: Any = loop_entry(config).setdefault("init_args", {})
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
    """The value at a dotted ``key`` of ``config``, or ``default`` where the path does not exist."""
    try:
        container, part = _resolve(config, key, create=False)
    except SweepError:
        return default
    return container[part]


def read_yaml_mapping(path, what: str, expected: str) -> dict:
    """The YAML mapping in the file ``path`` (an empty file is ``{}``).

    Raises a :class:`SweepError` naming ``what`` (e.g. ``"base config"``) when the file
    is missing, not YAML, or not a mapping (``expected`` says what it must be).
    """
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{what} {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SweepError(f"{what} {str(path)!r} must be {expected}")
    return data


def load_base_config(path) -> dict:
    """A LightningCLI config file as a dict, or a :class:`SweepError` saying what is wrong with it.

    A list of files is a base and its overlays, merged in order as ``-c A -c B`` does: mappings
    merge key by key, anything else (lists included) is replaced, and an entry that names another
    ``class_path`` replaces the whole entry.
    """
    if isinstance(path, (list, tuple)):
        if not path:
            raise SweepError("base: an empty list of config files")
        merged: dict = {}
        for p in path:
            merged = _merge(merged, load_base_config(p))
        return merged
    return read_yaml_mapping(path, "base config", "a YAML mapping (a LightningCLI config)")


def _merge(old: Any, new: Any) -> Any:
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return copy.deepcopy(new)
    if "class_path" in new and new.get("class_path") != old.get("class_path"):
        return copy.deepcopy(new)
    out = dict(old)
    for key, value in new.items():
        out[key] = _merge(old[key], value) if key in old else copy.deepcopy(value)
    return out

