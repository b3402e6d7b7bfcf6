"""The science settings of a run, recorded in every round so that a resume cannot mix them.

Rounds made with different ``beta``, ``K``, reward, ... are different
experiments; a resume that changed one of them would continue the run under
the old round's name. Every manifest records :data:`SCIENCE_KEYS` and their
fingerprint (sha256 of the canonical JSON); a resume compares the current
values with the last stored round's and refuses any difference unless the key
is named in ``allow_changed_settings`` (then the next round's manifest records
``settings_changed: {key: [old, new]}``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from typing import Any, Iterable, Optional

__all__ = ["FIXED_KEYS", "LEGACY_KEYS", "RECIPE_KEYS", "RECIPE_PREFIXES", "SCIENCE_KEYS", "SettingsMismatch",
           "canonical_json", "diff_settings", "fingerprint", "init_args_of", "is_recorded_key", "mismatch_message",
           "normalise", "parse_allowed", "qualname", "settings_of_manifest"]

SCIENCE_KEYS = ("num_slots", "num_candidates", "beta", "num_winners", "mode", "real_fraction", "policy", "reward",
                "generator", "seed", "epochs_per_round", "initial_epochs", "init", "steps_per_epoch", "curators",
                "selection", "transform", "num_slots_schedule")
# The recipe: how a round's model is trained and sampled (the optimizer's, the batches', the data source's
# class). ``generator.ARG`` and ``source.ARG`` keys hold the generator's and the data source's constructor
# arguments (EMA decay and reset, solver, steps, the data set's name and size...). A resume that changes one
# is refused like a science setting: round t + 1 would be made by another recipe than round t.
RECIPE_KEYS = ("batch_size", "lr", "weight_decay", "source")
RECIPE_PREFIXES = ("generator.", "source.")
# Changing these would make the resumed epochs and draws differ from the checkpoint's schedule:
# never allowed (RetrainingLoop.load_state_dict refuses them too).
FIXED_KEYS = ("seed", "epochs_per_round", "initial_epochs")
# Settings recorded only when set: a run without them had none (no curators: one curator), so adding
# them on resume is a change too.
_ABSENT_MEANS_NONE = ("curators", "selection", "transform", "num_slots_schedule")
# Manifests written before settings were recorded keep these at their top level.
LEGACY_KEYS = ("num_slots", "num_candidates", "beta", "num_winners", "mode", "seed")


class SettingsMismatch(RuntimeError):
    """A resume whose science settings differ from the stored rounds'."""


def canonical_json(settings: dict[str, Any]) -> str:
    """Sorted keys, no whitespace, non-JSON values as their ``str``: equal settings give equal text."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of the canonical JSON: one short value to compare two runs' settings."""
    return hashlib.sha256(canonical_json(settings).encode()).hexdigest()


def normalise(value: Any) -> Any:
    """The JSON form a value takes in a manifest (tuples become lists, paths strings, ...)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def settings_of_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings a manifest records (the legacy top-level keys for manifests from before settings)."""
    settings = manifest.get("settings")
    if isinstance(settings, dict):
        return settings
    return {k: manifest[k] for k in LEGACY_KEYS if k in manifest}


def is_recorded_key(key: str) -> bool:
    """Whether ``key`` is a setting the manifests record (science or recipe)."""
    return key in SCIENCE_KEYS or key in RECIPE_KEYS or key.startswith(RECIPE_PREFIXES)


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list]:
    """``{key: [old, new]}`` for every key recorded in ``old`` whose value differs in ``new``."""
    new = normalise(new)
    keys = set(old) | {k for k in _ABSENT_MEANS_NONE if k in new}
    return {k: [old.get(k), new.get(k)] for k in sorted(keys) if is_recorded_key(k) and old.get(k) != new.get(k)}


def parse_allowed(value: Optional[str | Iterable[str]]) -> tuple[str, ...]:
    """Validate ``allow_changed_settings`` (a comma-separated string or a list of keys)."""
    if value is None:
        return ()
    keys = [k.strip() for k in value.split(",")] if isinstance(value, str) else [str(k).strip() for k in value]
    keys = [k for k in keys if k]
    allowed = [k for k in SCIENCE_KEYS if k not in FIXED_KEYS]
    for key in keys:
        if key in FIXED_KEYS:
            raise ValueError(f"allow_changed_settings: {key!r} cannot change within a run (the checkpoint's "
                             f"schedule and draws depend on it); start a new run in another directory")
        if not is_recorded_key(key):
            raise ValueError(f"allow_changed_settings: unknown key {key!r}; expected some of {', '.join(allowed)}, "
                             f"{', '.join(RECIPE_KEYS)} or generator.ARG, source.ARG (a constructor argument)")
    return tuple(dict.fromkeys(keys))


def mismatch_message(where: str, changes: dict[str, list], allowed: tuple[str, ...]) -> str:
    """The refusal naming each changed key with its stored and config values, and the way out."""
    refused = {k: v for k, v in changes.items() if k not in allowed}
    lines = "; ".join(f"{k}: stored {old!r}, config {new!r}" for k, (old, new) in refused.items())
    keys = ",".join(k for k in refused if k not in FIXED_KEYS)
    hint = (f" To change them deliberately (recorded in the next round's manifest), pass "
            f"--allow_changed_settings {keys}." if keys else "")
    return (f"cannot resume {where}: the config's settings differ from the stored rounds' ({lines}). "
            f"Resuming would mix rounds of two experiments under one run.{hint} Or start a new run in another "
            f"directory (--trainer.default_root_dir)")


def qualname(obj: Any) -> str:
    """``module.Class`` of an object, as the settings record a class."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def init_args_of(module: Any) -> dict[str, Any]:
    """Best-effort constructor arguments of an object built without a config.

    They are the attributes named like its ``__init__`` parameters that hold plain values (the CLI
    records the config's arguments instead).
    """
    try:
        params = inspect.signature(type(module).__init__).parameters
    except (TypeError, ValueError):
        return {}
    plain = (bool, int, float, str, type(None))
    args = {}
    for name, param in params.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(module, name):
            continue
        value = getattr(module, name)
        if isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value)):
            args[name] = value
    return args
