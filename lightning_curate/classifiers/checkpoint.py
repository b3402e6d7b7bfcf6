"""Classifier checkpoints that load without running code: safetensors weights and a JSON description.

A Lightning ``.ckpt`` is a pickle, and unpickling a file can run any code in
it. So the classifier a reward or a judge uses is never read from the ``.ckpt``:
every time a :class:`~lightning_curate.classifiers.ClassifierModule` checkpoint
is saved, the *net file* ``<ckpt>.net.safetensors`` is written next to it
(first, atomically), and :func:`load_classifier` reads only that file:

- the tensors are the net's ``state_dict`` in safetensors format (a JSON header
  and raw little-endian arrays: nothing to execute);
- the header's metadata holds, under ``"lightning_curate.classifier"``, a JSON
  description of the net: ``{"format": 2, "class_path": ..., "init_args": {...},
  "num_classes": ...}``.

The class path is data too, and it is not imported blindly: it must name a
:class:`~lightning_curate.classifiers.RebuildableNet` defined in
lightning_curate (looked up among the classes already loaded, nothing is
imported), or be listed in ``trusted_classes``, an allow-list the caller
passes (a reward's or judge's ``trusted_classes`` in YAML). Anything else is
refused with an error naming the file and the class path, before anything is
built. ``init_args`` are plain JSON values passed as keyword arguments.

The writer is a Lightning ``CheckpointIO`` wrapper, :class:`NetFileCheckpointIO`,
that :class:`ClassifierModule` installs on its trainer in ``setup()``, so
``ModelCheckpoint``, ``trainer.save_checkpoint`` and the shipped configs write
net files without any change; :func:`save_classifier` writes one for a net
trained any other way.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Optional, Union

import torch
from lightning.pytorch.plugins.io import CheckpointIO
from torch import nn

from lightning_curate.classifiers.nets import RebuildableNet
from lightning_curate.utils.trust import PACKAGE, TrustedClasses, class_path_of, trusted_paths

__all__ = ["CHECKPOINT_KEY", "DEFAULT_TRAIN_HINT", "METADATA_KEY", "NET_FILE_SUFFIX", "NetFileCheckpointIO",
           "class_path_of", "describe_net", "load_classifier", "missing_checkpoint_error", "net_file_path",
           "read_net_file", "resolve_class", "save_classifier"]

DEFAULT_TRAIN_HINT = "lightning-curate fit -c configs/digits_classifier.yaml"
CHECKPOINT_KEY = "classifier_net"  # the description inside the Lightning checkpoint (for people, not loaded)
METADATA_KEY = "lightning_curate.classifier"
NET_FILE_SUFFIX = ".net.safetensors"
FORMAT_VERSION = 2
_PACKAGE = PACKAGE


def net_file_path(checkpoint: Union[str, Path]) -> Path:
    """The net file of a checkpoint: ``<checkpoint>.net.safetensors`` (a ``.safetensors`` path is itself)."""
    path = Path(checkpoint).expanduser()
    return path if path.name.endswith(".safetensors") else path.with_name(path.name + NET_FILE_SUFFIX)


def describe_net(net: nn.Module, num_classes: Optional[int] = None) -> dict[str, Any]:
    """The JSON description of ``net`` stored in its net file (and in the ``.ckpt``)."""
    if num_classes is None:
        num_classes = getattr(net, "num_classes", None)
    return {"format": FORMAT_VERSION, "class_path": class_path_of(net),
            "init_args": getattr(net, "init_args", None), "num_classes": num_classes}


def _write_net_file(path: Path, tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    # Own, contiguous CPU copies: safetensors refuses tensors that share memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(description, sort_keys=True)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_classifier(net: nn.Module, checkpoint: Union[str, Path], num_classes: Optional[int] = None) -> Path:
    """Write the net file of ``net`` for ``checkpoint`` (``<checkpoint>.net.safetensors``); returns its path.

    For nets trained outside :class:`ClassifierModule`; the net should be a
    :class:`RebuildableNet` so that :func:`load_classifier` can rebuild it
    without ``net=``.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    path = net_file_path(checkpoint)
    _write_net_file(path, net.state_dict(), describe_net(net, num_classes))
    return path


class NetFileCheckpointIO(CheckpointIO):
    """Wraps a trainer's ``CheckpointIO``: a classifier checkpoint also gets its net file, written first.

    A checkpoint dict that carries ``checkpoint["classifier_net"]`` (what
    :class:`ClassifierModule` adds) has its ``net.*`` weights written to
    ``<path>.net.safetensors`` before the ``.ckpt`` itself; removing the
    checkpoint removes the net file too. Other checkpoints pass through.
    """

    def __init__(self, inner: CheckpointIO):
        super().__init__()
        self.inner = inner

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        """Write the net file (when the checkpoint is a classifier's), then the checkpoint."""
        record = checkpoint.get(CHECKPOINT_KEY)
        state = checkpoint.get("state_dict")
        if isinstance(record, dict) and isinstance(state, dict):
            weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            _write_net_file(net_file_path(path), weights, record)
        self.inner.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None):
        """Load a checkpoint through the wrapped IO (Lightning's own resume path)."""
        return self.inner.load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path) -> None:
        """Remove the checkpoint and its net file."""
        self.inner.remove_checkpoint(path)
        net_file_path(path).unlink(missing_ok=True)

    def teardown(self) -> None:
        """Tear down the wrapped IO."""
        self.inner.teardown()


# -- reading ----------------------------------------------------------------------
def read_net_file(path: Union[str, Path]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The description and the tensors of a net file, read without running code.

    Raises:
        ValueError: the file is not a safetensors file, or has no valid description; the message names it.
    """
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception as err:  # safetensors raises its own error types for malformed files
        raise ValueError(f"classifier net file {str(path)!r} is not a readable safetensors file "
                         f"({type(err).__name__}: {err}); it was not loaded") from err
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"classifier net file {str(path)!r} has no {METADATA_KEY!r} description in its "
                         f"metadata: it was not written by lightning_curate")
    try:
        description = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"classifier net file {str(path)!r}: its description is not valid JSON ({err})") from err
    if not isinstance(description, dict) or not isinstance(description.get("class_path"), str):
        raise ValueError(f"classifier net file {str(path)!r}: its description must be a JSON object with a "
                         f"'class_path' string, got {raw[:200]!r}")
    if description.get("format") != FORMAT_VERSION:
        raise ValueError(f"classifier net file {str(path)!r} has format {description.get('format')!r}; "
                         f"this version reads format {FORMAT_VERSION}")
    return description, tensors


def _package_nets() -> dict[str, type]:
    """The RebuildableNet subclasses defined in lightning_curate, by class path (and exported short path)."""
    # This module's own package, loaded before any of its modules (looked up, not imported: no cycle).
    classifiers = sys.modules[__name__.rpartition(".")[0]]
    found: dict[str, type] = {}
    todo = list(RebuildableNet.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.split(".")[0] == _PACKAGE and "<locals>" not in cls.__qualname__:
            found[class_path_of(cls)] = cls
    for name in classifiers.__all__:
        obj = getattr(classifiers, name, None)
        if isinstance(obj, type) and obj in found.values():
            found[f"{classifiers.__name__}.{name}"] = obj
    return found


def resolve_class(class_path: str, where: str, trusted_classes: TrustedClasses = None) -> type:
    """The net class named ``class_path``, if lightning_curate defines it or the caller trusts it.

    Package nets are looked up among loaded classes (nothing is imported); a
    trusted path is imported as ``module`` + one attribute. Anything else is a
    ``ValueError`` naming ``where`` (the file) and the class path.
    """
    package = _package_nets()
    if class_path in package:
        return package[class_path]
    trusted = trusted_paths(trusted_classes)
    if class_path not in trusted:
        raise ValueError(
            f"{where}: refusing to build the net class {class_path!r}: a checkpoint may only name a "
            f"lightning_curate net ({', '.join(sorted(p for p in package if p.count('.') == 2))}) or a class "
            f"you trust explicitly. If you wrote this checkpoint with your own net, pass "
            f"trusted_classes=[{class_path!r}] (trusted_classes: [{class_path}] in YAML); nothing was loaded")
    entry = trusted[class_path]
    if isinstance(entry, type):
        cls = entry
    else:
        module_name, _, name = class_path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"{where}: cannot import the trusted net class {class_path!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{where}: the trusted class path {class_path!r} is not a torch.nn.Module class")
    return cls


def missing_checkpoint_error(checkpoint: Union[str, Path], train_hint: str) -> FileNotFoundError:
    """The error for a checkpoint without a net file: names both paths and the command that trains it."""
    ckpt = Path(checkpoint).expanduser()
    file = net_file_path(ckpt)
    if ckpt.is_file() and ckpt != file:
        return FileNotFoundError(
            f"classifier checkpoint {str(ckpt)!r} has no net file {str(file)!r} beside it. Classifiers are "
            f"loaded only from that file (safetensors and JSON; the pickled .ckpt is never unpickled), which "
            f"ClassifierModule writes with every checkpoint: this .ckpt is older or from another module. "
            f"Delete it and train again: {train_hint}")
    return FileNotFoundError(f"classifier checkpoint {str(ckpt)!r} does not exist. "
                             f"Train the classifier first: {train_hint}")


def load_classifier(path: Union[str, Path], map_location: Any = "cpu", train_hint: str = DEFAULT_TRAIN_HINT,
                    net: Optional[nn.Module] = None, trusted_classes: TrustedClasses = None) -> nn.Module:
    """The classifier saved with a :class:`ClassifierModule` checkpoint, frozen, in eval mode.

    Reads only the net file ``<path>.net.safetensors`` (or ``path`` itself when
    it ends in ``.safetensors``); the pickled ``.ckpt`` is never opened. The
    net is rebuilt from the file's description unless ``net`` is given (then
    its weights are replaced by the file's).

    Args:
        path: the checkpoint (``.ckpt``) or its net file.
        map_location: device of the returned net.
        train_hint: the command named when the file is missing.
        net: a module to load the weights into instead of rebuilding one.
        trusted_classes: class paths (or classes) outside lightning_curate that the file may name.

    Raises:
        FileNotFoundError: no net file; the message names the checkpoint and ``train_hint``.
        ValueError: the file is not a classifier net file, names a class that is not allowed, or its
            weights do not fit the net; the message names the file.
    """
    ckpt = Path(path).expanduser()
    file = net_file_path(ckpt)
    if ckpt.is_dir():
        raise FileNotFoundError(f"classifier checkpoint {str(ckpt)!r} is a directory, not a checkpoint file. "
                                f"Train the classifier first: {train_hint}")
    if not file.is_file():
        raise missing_checkpoint_error(ckpt, train_hint)
    description, tensors = read_net_file(file)
    where = f"classifier net file {str(file)!r}"
    class_path = description["class_path"]
    if net is None:
        cls = resolve_class(class_path, where, trusted_classes)
        init_args = description.get("init_args")
        if init_args is None:
            raise ValueError(f"{where}: the net {class_path} did not record plain constructor arguments "
                             f"(subclass lightning_curate.classifiers.RebuildableNet), so it cannot be rebuilt "
                             f"from the file; pass net= to load_classifier")
        if not isinstance(init_args, dict):
            raise ValueError(f"{where}: init_args must be a JSON object, got {type(init_args).__name__}")
        try:
            net = cls(**init_args)
        except Exception as err:
            raise ValueError(f"{where}: cannot build {class_path}(**{init_args}): {err}") from err
    if not tensors:
        raise ValueError(f"{where} holds no weights")
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{where}: the saved weights do not fit {class_path_of(net)} "
                         f"(missing, unexpected or mismatched tensors): {err}") from err
    if isinstance(map_location, (str, torch.device)):
        net.to(map_location)
    net.eval().requires_grad_(False)
    return net
