"""Which classes a stored file may build: the package's own, or those the user trusts by name.

A run directory's ``config.yaml``, a sweep's saved config or a checkpoint's net
description is data; it may have been edited by anyone who could write the
folder. Turning its ``class_path`` entries back into objects would import and
call whatever they name (``os.system`` included), so every such place checks
the names first, *before anything is imported*:

* a ``lightning_curate.*`` path is imported (the package's own code), and the
  object must be a class defined in the package (a name the package merely
  re-exports from elsewhere, like ``subprocess.Popen``, is refused);
* any other path must be listed in ``trusted_classes``, which the user gives on
  the command line or in Python, never a file;
* with ``base``, the class must also subclass it (e.g. ``torch.nn.Module``).

Example:
    >>> cls = resolve_trusted_class("lightning_curate.rewards.ClippedDistanceReward", "config.yaml")
    >>> cls.__name__
    'ClippedDistanceReward'
    >>> resolve_trusted_class("os.system", "config.yaml")
    Traceback (most recent call last):
    ...
    lightning_curate.utils.trust.UntrustedClassError: config.yaml: refusing to build 'os.system': ...
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Iterator, Optional, Sequence, Union

__all__ = ["PACKAGE", "TrustedClasses", "UntrustedClassError", "check_config_classes", "class_path_of",
           "class_paths_in", "resolve_trusted_class", "trusted_paths"]

PACKAGE = "lightning_curate"
TrustedClasses = Optional[Sequence[Union[str, type]]]
# A bare dotted name where a class goes ("pkg.mod.Class") is a class path to jsonargparse too.
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class UntrustedClassError(ValueError):
    """A stored file names a class that is neither the package's nor trusted by the user."""


def class_path_of(obj: Any) -> str:
    """``module.QualName`` of a class or of an object's class."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_paths(trusted_classes: TrustedClasses) -> dict[str, Union[str, type]]:
    """``trusted_classes`` as ``{class path: class or path}``; a malformed entry is a clear error."""
    if trusted_classes is None:
        return {}
    if isinstance(trusted_classes, (str, type)) or not isinstance(trusted_classes, Sequence):
        raise TypeError(f"trusted_classes must be a list of class paths ('package.module.Class') or classes, "
                        f"got {trusted_classes!r}")
    out: dict[str, Union[str, type]] = {}
    for item in trusted_classes:
        if isinstance(item, type):
            out[class_path_of(item)] = item
        elif isinstance(item, str) and "." in item.strip(".") and not item.startswith("."):
            out[item] = item
        else:
            raise ValueError(f"trusted_classes entries must be class paths 'package.module.Class' or classes, "
                             f"got {item!r}")
    return out


def _import(class_path: str, where: str) -> Any:
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name:
        raise UntrustedClassError(f"{where}: {class_path!r} is not a class path 'package.module.Class'")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise UntrustedClassError(f"{where}: cannot import the class {class_path!r}: {err}") from err


def resolve_trusted_class(class_path: str, where: str, trusted_classes: TrustedClasses = None,
                          base: Optional[type] = None) -> type:
    """The class ``class_path`` names, if the package defines it or the caller trusts it.

    Args:
        class_path: ``package.module.Class``, as a stored file wrote it.
        where: the file (or option) it came from; every error starts with it.
        trusted_classes: class paths (or classes) the user allows beyond the package's own.
        base: a class the result must subclass.

    Raises:
        UntrustedClassError: the path is not the package's and not trusted (nothing was imported),
            does not import, is not a class, or is not a subclass of ``base``.
    """
    if not isinstance(class_path, str):
        raise UntrustedClassError(f"{where}: class_path must be a string, got {class_path!r}")
    trusted = trusted_paths(trusted_classes)
    if class_path in trusted:
        entry = trusted[class_path]
        cls = entry if isinstance(entry, type) else _import(class_path, where)
    elif class_path.startswith(PACKAGE + "."):
        cls = _import(class_path, where)
        if isinstance(cls, type) and not cls.__module__.startswith(PACKAGE + "."):
            raise UntrustedClassError(
                f"{where}: refusing to build {class_path!r}: it is {class_path_of(cls)}, defined outside "
                f"{PACKAGE}; trust it by name if you mean it (trusted_classes)")
    else:
        raise UntrustedClassError(
            f"{where}: refusing to build {class_path!r}: a stored file may only name {PACKAGE} classes or "
            f"classes you trust explicitly (--trusted-classes {class_path} on the command line, "
            f"trusted_classes=[{class_path!r}] in Python); nothing was imported")
    if not isinstance(cls, type):
        raise UntrustedClassError(f"{where}: {class_path!r} is not a class")
    if base is not None and not issubclass(cls, base):
        raise UntrustedClassError(f"{where}: {class_path!r} is not a {base.__module__}.{base.__qualname__}")
    return cls


def class_paths_in(config: Any) -> Iterator[str]:
    """Every class a nested config (dicts and lists) may name, in document order.

    That is each ``class_path`` value, and each bare dotted name (``pkg.mod.Class``): jsonargparse
    reads a string where a class is expected as a class path as well.
    """
    if isinstance(config, dict):
        for value in config.values():
            yield from class_paths_in(value)
    elif isinstance(config, list):
        for value in config:
            yield from class_paths_in(value)
    elif isinstance(config, str) and _DOTTED_NAME.match(config):
        yield config


def check_config_classes(config: Any, where: str, trusted_classes: TrustedClasses = None) -> None:
    """Refuse a stored config that names any class outside the package and ``trusted_classes``.

    Call it before handing the config to anything that instantiates it (jsonargparse,
    Lightning): the check imports nothing but the package's own modules and the trusted ones.
    """
    for class_path in class_paths_in(config):
        resolve_trusted_class(class_path, where, trusted_classes)
