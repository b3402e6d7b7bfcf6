"""Classifiers given by checkpoint path: trained on first use, loaded lazily.

The digits classifiers are trained by the console script from shipped configs
(the checkpoint paths are relative to the working directory):

- ``lightning-curate fit -c configs/digits_classifier.yaml``: the reward model,
  a SmallCNN (width 16), ``checkpoints/digits_classifier.ckpt``, ~99% held-out
  accuracy, about 15 s on 2 CPU cores;
- ``lightning-curate fit -c configs/digits_judge.yaml``: the judge, an
  independent MLPClassifier with another seed, ``checkpoints/digits_judge.ckpt``,
  ~97% held-out accuracy, about 15 s.

``configs/cifar10_classifier.yaml`` and ``configs/cifar10_judge.yaml`` do the
same for CIFAR-10 (on a GPU). A run never needs these commands typed: with
``train_config`` set, the classifier rewards and :class:`TrainedClassifier`
(a judge given by checkpoint path in YAML) run them in a subprocess when the
checkpoint is missing (:func:`ensure_checkpoint`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Optional, Union

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_curate.classifiers.checkpoint import (
    DEFAULT_TRAIN_HINT,
    load_classifier,
    missing_checkpoint_error,
    net_file_path,
)
from lightning_curate.utils.compat import set_unregistered

__all__ = ["TrainedClassifier", "ensure_checkpoint", "train_command"]


# Variables a distributed launcher sets: a classifier trained from inside a DDP
# run must start as a plain single-process run, not join the parent's group.
_LAUNCHER_ENV = ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                 "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def train_command(train_config: Union[str, Path]) -> str:
    """The console command that trains a classifier from its config: ``lightning-curate fit -c <config>``."""
    return f"lightning-curate fit -c {train_config}"


def ensure_checkpoint(checkpoint: Union[str, Path], train_config: Optional[Union[str, Path]] = None,
                      what: str = "classifier", train_hint: str = DEFAULT_TRAIN_HINT) -> Path:
    """Make sure the classifier checkpoint ``checkpoint`` exists, training it first if it does not.

    A checkpoint whose net file (``<checkpoint>.net.safetensors``) exists is
    returned as it is (its contents are checked by :func:`load_classifier`); a
    ``.ckpt`` without one is an error, never trained over. A missing one is trained by running
    the console script, ``lightning-curate fit -c <train_config>``, in a
    subprocess (``python -m lightning_curate``, the same interpreter), with
    its output passed through; the config's ``ModelCheckpoint`` must write
    exactly ``checkpoint``. Both paths are taken relative to the working
    directory. Called from the ``prepare()`` of the classifier rewards and of
    :class:`TrainedClassifier`, i.e. from Lightning's ``prepare_data`` (once
    per node).

    Args:
        checkpoint: where the checkpoint is (or will be).
        train_config: the config that trains it; ``None``: a missing checkpoint is an error.
        what: what the classifier is for, in messages (``"reward classifier"``, ``"judge"``).
        train_hint: the command named in the error when ``train_config`` is ``None``.

    Raises:
        FileNotFoundError: the checkpoint is missing and ``train_config`` is ``None`` (the message
            names the command that trains it), or ``train_config`` does not exist.
        RuntimeError: the training run failed (its exit status and last output lines are in the
            message), or it finished without writing ``checkpoint``.
    """
    path = Path(checkpoint).expanduser()
    if net_file_path(path).is_file():
        return path
    if path.is_dir():
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} is a directory, not a checkpoint file")
    if path.is_file():  # a .ckpt without its net file: never trained over, never unpickled
        raise missing_checkpoint_error(path, train_hint if train_config is None else train_command(train_config))
    if train_config is None:
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} does not exist. Train it first: {train_hint} "
                                f"(or set train_config to that config, and the run trains it itself)")
    config = Path(train_config).expanduser()
    command = train_command(train_config)
    if not config.is_file():
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} does not exist, and its training config "
                                f"{str(config)!r} (train_config) is not a file either (relative paths are "
                                f"taken from the working directory, {os.getcwd()})")
    rank_zero_info(f"[lightning_curate] {what} checkpoint {path} not found: training the {what} first with "
                   f"`{command}` (the checkpoint goes to {path}; this happens once)")
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV}
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))  # as many threads as this run uses
    argv = [sys.executable, "-m", "lightning_curate", "fit", "-c", str(config)]
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    except OSError as err:
        raise RuntimeError(f"cannot start the training of the {what} (`{command}`): {err}") from err
    with proc:
        assert proc.stdout is not None  # stdout=PIPE
        for raw in proc.stdout:  # pass the child's output through, keep its tail for an error message
            line = raw.decode(errors="replace")
            tail.append(line.rstrip())
            sys.stdout.write(line)
        sys.stdout.flush()
        status = proc.wait()
    if status != 0:
        last = "\n".join(f"    {line}" for line in tail)
        raise RuntimeError(f"training the {what} failed: `{command}` exited with status {status}. "
                           f"Its last output lines:\n{last}\nFix the cause and run `{command}` yourself "
                           f"(it must write {path}), then start this run again")
    if not path.is_file():
        raise RuntimeError(f"`{command}` finished but wrote no checkpoint at {path}: its ModelCheckpoint must "
                           f"save there (dirpath: {path.parent}, filename: {path.stem}), or point checkpoint "
                           f"at the file it writes")
    if not net_file_path(path).is_file():
        raise RuntimeError(f"`{command}` wrote {path} but not its net file {net_file_path(path)}: the config's "
                           f"model must be lightning_curate.classifiers.ClassifierModule, which writes it")
    rank_zero_info(f"[lightning_curate] {what} trained in {time.monotonic() - start:.0f} s: {path}")
    return path


class TrainedClassifier(nn.Module):
    """A classifier given by its checkpoint path, loaded lazily: the judge of an image source in YAML.

    ``forward(x)`` gives logits ``[n, num_classes]``, ``features(x)`` the
    penultimate features (for :mod:`lightning_curate.metrics.image`). The
    checkpoint is read on first use; :meth:`prepare` (called by the image
    source's ``prepare()``, i.e. Lightning's ``prepare_data``) first trains it
    with ``train_config`` when it does not exist yet (see
    :func:`ensure_checkpoint`). In a config::

        judge:
          class_path: lightning_curate.classifiers.TrainedClassifier
          init_args: {checkpoint: checkpoints/digits_judge.ckpt, train_config: configs/digits_judge.yaml}

    The network is a fixed judge: frozen, always in eval mode, kept out of
    ``parameters()`` and ``state_dict()``; it follows ``.to(device)`` and
    moves to each input's device.

    Args:
        checkpoint: a :class:`ClassifierModule` checkpoint (relative to the working directory).
        train_config: the config that trains it (``lightning-curate fit -c <train_config>``);
            ``None``: a missing checkpoint is a ``FileNotFoundError`` naming ``train_hint``.
        train_hint: the command named in that error.
        trusted_classes: class paths outside lightning_curate that the checkpoint may name (your own
            net classes); see :func:`load_classifier`.
    """

    _net: Optional[nn.Module]  # set with set_unregistered: outside the module tree
    _placement: Tensor

    def __init__(self, checkpoint: str, train_config: Optional[str] = None, train_hint: Optional[str] = None,
                 trusted_classes: Optional[list[str]] = None):
        super().__init__()
        if not isinstance(checkpoint, (str, Path)):
            raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if train_config is not None and not isinstance(train_config, (str, Path)):
            raise TypeError(f"train_config must be a path or None, got {type(train_config).__name__}")
        self.checkpoint = str(checkpoint)
        self.train_config = None if train_config is None else str(train_config)
        if train_hint is None:
            train_hint = train_command(self.train_config) if self.train_config is not None else DEFAULT_TRAIN_HINT
        self.train_hint = train_hint
        self.trusted_classes = None if trusted_classes is None else list(trusted_classes)
        set_unregistered(self, "_net", None)  # outside the module tree (see the class docstring)
        self.register_buffer("_placement", torch.zeros(0), persistent=False)  # follows .to() before loading

    def prepare(self) -> "TrainedClassifier":
        """Train the checkpoint if it is missing (and ``train_config`` is set), then load it. Returns ``self``."""
        ensure_checkpoint(self.checkpoint, self.train_config, what="judge", train_hint=self.train_hint)
        _ = self.net
        return self

    @property
    def loaded(self) -> bool:
        """Whether the checkpoint has been read."""
        return self._net is not None

    @property
    def net(self) -> nn.Module:
        """The classifier network (the checkpoint is read on first access)."""
        net = self._net
        if net is None:
            net = load_classifier(self.checkpoint, map_location="cpu", train_hint=self.train_hint,
                                  trusted_classes=self.trusted_classes)
            net.to(self._placement.device)
            set_unregistered(self, "_net", net)
        return net

    @property
    def num_classes(self) -> Optional[int]:
        """The net's number of classes (reads the checkpoint)."""
        return getattr(self.net, "num_classes", None)

    @property
    def num_features(self) -> Optional[int]:
        """Width of :meth:`features` (reads the checkpoint)."""
        return getattr(self.net, "num_features", None)

    def _ready(self, x: Tensor) -> tuple[nn.Module, Tensor]:
        net = self.net
        param = next(iter(net.parameters()), None)
        if param is not None and param.device != x.device:
            net.to(x.device)
        if net.training:
            net.eval()
        if param is not None and x.is_floating_point() and x.dtype != param.dtype:
            x = x.to(param.dtype)
        return net, x

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[n, num_classes]``, without gradients, on ``x``'s device."""
        net, x = self._ready(x)
        with torch.no_grad():
            return net(x)

    def features(self, x: Tensor) -> Tensor:
        """The net's penultimate features ``[n, num_features]``, without gradients."""
        net, x = self._ready(x)
        with torch.no_grad():
            return net.features(x)  # type: ignore[operator]

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._net is not None:
            self._net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "TrainedClassifier":
        """Set the mode; the loaded net itself stays in eval mode."""
        super().train(mode)
        if self._net is not None:
            self._net.eval()  # a fixed judge: batch-norm statistics and dropout stay off
        return self

    def extra_repr(self) -> str:
        """Checkpoint, training config and whether it is loaded."""
        return f"checkpoint={self.checkpoint!r}, train_config={self.train_config!r}, loaded={self.loaded}"
