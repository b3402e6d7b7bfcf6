"""Image classifiers trained by the package itself: the reward models' and judges' networks.

The image experiments (docs/THEORY.md section 5) curate samples with a classifier
reward ``r(x) = gamma * q_c(x)`` and measure class shares with a second,
independent classifier (the judge). Both are trained here on the real data,
saved as Lightning checkpoints, and loaded by path with
:func:`load_classifier`:

- :class:`SmallCNN`: a VGG-style conv net (conv-BN-ReLU blocks, max pooling,
  global average pooling, linear head) for 8x8 digits and 32x32 CIFAR-10;
- :class:`MLPClassifier`: a plain MLP, a second architecture for a judge that
  does not share the reward model's inductive biases;
- :class:`ClassifierModule`: the LightningModule (cross-entropy, AdamW,
  ``train/acc`` and ``val/acc`` logged with torchmetrics);
- :class:`ClassifierDataModule`: trains on a :class:`~lightning_curate.data.DataSource`'s
  labelled train split, validates on its held-out split.

Every network maps images ``[n, C, H, W]`` to logits ``[n, num_classes]`` and
exposes ``features(x)`` ``[n, num_features]`` (the penultimate activations,
used by :mod:`lightning_curate.metrics.image`).

A checkpoint is self-describing: the networks record the arguments they were
built with (:class:`RebuildableNet`), and :class:`ClassifierModule` writes
them to ``checkpoint["classifier_net"]``, so :func:`load_classifier` rebuilds
the net from the file alone, whether the net was built in Python or by
LightningCLI from YAML.

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

import copy
import functools
import importlib
import inspect
import math
import os
import pickle
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from lightning_curate.data.source import DataSource

__all__ = [
    "RebuildableNet",
    "SmallCNN",
    "MLPClassifier",
    "ClassifierModule",
    "ClassifierDataModule",
    "load_classifier",
    "ensure_checkpoint",
    "train_command",
    "TrainedClassifier",
    "random_shift",
    "DEFAULT_TRAIN_HINT",
    "CHECKPOINT_KEY",
]

DEFAULT_TRAIN_HINT = "lightning-curate fit -c configs/digits_classifier.yaml"
CHECKPOINT_KEY = "classifier_net"
_FORMAT_VERSION = 1


# -- networks that remember how they were built ---------------------------------
def _plain(value: Any) -> bool:
    """Whether ``value`` is plain data (safe to store in a checkpoint and rebuild from)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _listify(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


class RebuildableNet(nn.Module):
    """An ``nn.Module`` that records the arguments it was constructed with.

    Every subclass's ``__init__`` is wrapped (its signature is kept, so
    LightningCLI / jsonargparse see the real parameters): the outermost
    constructor call stores its bound arguments, defaults included, as
    :attr:`init_args`. ``type(net)(**net.init_args)`` then rebuilds the same
    architecture, which is what :func:`load_classifier` does. Arguments that
    are not plain data (a module, a tensor) make the net not rebuildable by
    itself: ``init_args`` is then ``None``, and ``load_classifier`` needs the
    net passed in.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None or getattr(init, "_records_init_args", False):
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def __init__(self, *args, **kw):
            if "_recorded_init_args" not in self.__dict__:  # outermost constructor only
                object.__setattr__(self, "_recorded_init_args", _bind_init_args(signature, self, args, kw))
            init(self, *args, **kw)

        __init__._records_init_args = True
        cls.__init__ = __init__

    @property
    def init_args(self) -> Optional[dict[str, Any]]:
        """The constructor arguments (a copy, plain data), or ``None`` when they are not plain."""
        recorded = self.__dict__.get("_recorded_init_args")
        return copy.deepcopy(recorded)


def _bind_init_args(signature: inspect.Signature, self, args, kwargs) -> Optional[dict[str, Any]]:
    try:
        bound = signature.bind(self, *args, **kwargs)
    except TypeError:
        return None  # the real __init__ raises the proper error next
    bound.apply_defaults()
    out: dict[str, Any] = {}
    for i, (name, value) in enumerate(bound.arguments.items()):
        if i == 0:
            continue  # self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                return None  # *args cannot be rebuilt from keywords
            continue
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
            continue
        out[name] = value
    if not _plain(out):
        return None
    return _listify(out)


def _check_images(x: Tensor, channels: int, who: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != channels:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who} expects images of shape [n, {channels}, H, W], got {shape}")


def _check_net_args(dropout: float, **sizes: int) -> None:
    """Sizes are positive ints, at least 2 classes, dropout in [0, 1): errors name the argument."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if sizes["num_classes"] < 2:
        raise ValueError(f"num_classes must be >= 2, got {sizes['num_classes']}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


class SmallCNN(RebuildableNet):
    """A VGG-style classifier: stages of two conv3x3-BN-ReLU blocks and a 2x2 max pool.

    The number of stages is how many times ``image_size`` halves while it stays
    even and at least 4 (at most 4 stages): two for 8x8 digits (8 -> 4 -> 2),
    four for 32x32 CIFAR-10 (32 -> 16 -> 8 -> 4 -> 2). Channels double per
    stage from ``width`` (capped at ``8 * width``). Global average pooling
    gives the features (``num_features`` = the last stage's channels); dropout
    and a linear layer give the logits.

    Args:
        in_channels: image channels (1 for digits, 3 for CIFAR-10).
        num_classes: number of classes (logits per image).
        width: channels of the first stage.
        image_size: the images' height (= width); sets the number of stages.
            Other sizes still run (global pooling), with the same stages.
        dropout: dropout before the linear head.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, image_size: int = 8,
                 dropout: float = 0.1):
        super().__init__()
        _check_net_args(dropout, in_channels=in_channels, num_classes=num_classes, width=width,
                         image_size=image_size)
        self.in_channels, self.num_classes = in_channels, num_classes
        stages, size = 0, image_size
        while stages < 4 and size >= 4 and size % 2 == 0:
            size //= 2
            stages += 1
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(max(stages, 1)):
            out = width * min(2 ** stage, 8)
            for _ in range(2):
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                channels = out
            if stage < stages:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = channels
        self.head = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(channels, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[n, num_features]`` (globally pooled last conv stage)."""
        _check_images(x, self.in_channels, type(self).__name__)
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class MLPClassifier(RebuildableNet):
    """A plain MLP on flattened images: ``depth`` hidden Linear-LayerNorm-ReLU layers and a linear head.

    A second architecture for a judge independent of the reward's CNN.
    ``features(x)`` is the last hidden layer ``[n, hidden]``.
    """

    def __init__(self, in_features: int = 64, num_classes: int = 10, hidden: int = 256, depth: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        _check_net_args(dropout, in_features=in_features, num_classes=num_classes, hidden=hidden, depth=depth)
        self.in_features, self.num_classes, self.num_features = in_features, num_classes, hidden
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(float(dropout)), nn.Linear(hidden, num_classes))

    def features(self, x: Tensor) -> Tensor:
        """Last hidden activations ``[n, hidden]``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != self.in_features:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects inputs [n, ...] with {self.in_features} values per "
                             f"sample, got {shape}")
        return self.body(x.reshape(x.shape[0], -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# -- training -------------------------------------------------------------------
def _class_path(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class ClassifierModule(L.LightningModule):
    """Trains a classifier ``net`` (images -> logits) with cross-entropy and AdamW.

    Logs ``train/loss``, ``train/acc``, ``val/loss`` and ``val/acc`` (and
    ``test/*``). Checkpoints carry ``checkpoint["classifier_net"]`` (the net's
    class path and constructor arguments), so :func:`load_classifier` rebuilds
    the net from the file alone.

    Args:
        net: the network; a :class:`RebuildableNet` (e.g. :class:`SmallCNN`) to be loadable by path alone.
        lr, weight_decay: AdamW settings.
        label_smoothing: cross-entropy label smoothing.
        num_classes: for the accuracy metric; defaults to ``net.num_classes``.
        lr_schedule: ``"cosine"`` (per step from ``lr`` to 0 over the run's
            ``max_epochs``/``max_steps``) or ``"constant"``.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, label_smoothing: float = 0.0,
                 num_classes: Optional[int] = None, lr_schedule: str = "cosine"):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if num_classes is None:
            num_classes = getattr(net, "num_classes", None)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (give it, or use a net with a num_classes "
                             f"attribute), got {num_classes!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {lr_schedule!r}")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.num_classes = num_classes
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch, stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        acc.update(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train",
                 batch_size=x.shape[0])
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> Tensor:
        return self._step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.net(x).float(), dim=1)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if self.hparams.lr_schedule == "constant" or not math.isfinite(total) or total < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "format": _FORMAT_VERSION,
            "class_path": _class_path(self.net),
            "init_args": getattr(self.net, "init_args", None),
            "num_classes": self.num_classes,
        }


def random_shift(x: Tensor, max_shift: int, generator: Optional[torch.Generator] = None,
                 fill: float = -1.0) -> Tensor:
    """Shift each image ``[n, C, H, W]`` by its own random offset in ``-max_shift..max_shift`` (both axes).

    Pads by ``max_shift`` with ``fill`` (-1: black in ``[-1, 1]`` images) and
    crops back to ``H x W``. Offsets are drawn on the CPU from ``generator``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shift expects images [n, C, H, W], got {tuple(x.shape)}")
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill).permute(0, 2, 3, 1)  # [n, H+2p, W+2p, C]
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # [n, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [n, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class ClassifierDataModule(L.LightningDataModule):
    """Labelled real data of a :class:`~lightning_curate.data.DataSource` for classifier training.

    Trains on ``source.load().train`` / ``train_labels`` (shuffled from
    ``seed``), validates and tests on ``heldout`` / ``heldout_labels``.

    Args:
        source: a labelled data source (e.g. ``lightning_curate.data.Digits``).
        batch_size: batch size of every loader.
        augment: random shifts of training images by up to ``max_shift`` pixels
            (pad with -1, crop), done in torch on the batch's device.
        max_shift: largest shift; default ``max(1, H // 8)`` (1 for 8x8, 4 for 32x32).
        hflip: also flip training images left-right at random (CIFAR-10, not digits).
        seed: seeds the shuffling and the augmentation.
    """

    def __init__(self, source: DataSource, batch_size: int = 128, augment: bool = False, seed: int = 0,
                 max_shift: Optional[int] = None, hflip: bool = False):
        super().__init__()
        if not isinstance(source, DataSource):
            raise TypeError(f"source must be a lightning_curate.data.DataSource, got {type(source).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if max_shift is not None and max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.source, self.batch_size, self.augment, self.seed = source, batch_size, bool(augment), int(seed)
        self.max_shift, self.hflip = max_shift, bool(hflip)
        self._train: Optional[TensorDataset] = None
        self._heldout: Optional[TensorDataset] = None
        self._aug_gen = torch.Generator().manual_seed(self.seed + 1)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._train is not None:
            return
        data = self.source.load()
        name = type(self.source).__name__
        if data.train_labels is None or data.heldout_labels is None:
            raise ValueError(f"{name} gives no labels: a classifier needs a labelled source "
                             f"(train_labels and heldout_labels)")
        for what, x, y in (("train", data.train, data.train_labels), ("heldout", data.heldout, data.heldout_labels)):
            if x.shape[0] != y.shape[0] or y.dim() != 1:
                raise ValueError(f"{name}: {what} has {x.shape[0]} samples but labels of shape {tuple(y.shape)}")
            if x.shape[0] == 0:
                raise ValueError(f"{name}: the {what} set is empty")
        if (self.augment or self.hflip) and data.train.dim() != 4:
            raise ValueError(f"augment/hflip need images [n, C, H, W], got train shape {tuple(data.train.shape)}")
        self._train = TensorDataset(data.train.float(), data.train_labels.long())
        self._heldout = TensorDataset(data.heldout.float(), data.heldout_labels.long())

    def train_dataloader(self) -> DataLoader:
        self.setup()
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self._heldout, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        trainer = self.trainer
        if trainer is None or not trainer.training or not (self.augment or self.hflip):
            return batch
        x, y = batch
        if self.augment:
            shift = self.max_shift if self.max_shift is not None else max(1, x.shape[-2] // 8)
            x = random_shift(x, shift, self._aug_gen)
        if self.hflip:
            flip = (torch.rand(x.shape[0], generator=self._aug_gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y


# -- loading --------------------------------------------------------------------
def _import_class(class_path: str):
    module_name, _, name = class_path.rpartition(".")
    parts = class_path.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"cannot import {class_path!r} (module {module_name!r}, name {name!r})")


def _read_checkpoint(path: Path, map_location) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        pass  # a Lightning checkpoint with non-tensor objects in it (e.g. hyperparameters): see below
    except Exception as err:
        raise ValueError(f"classifier checkpoint {str(path)!r} is not a readable PyTorch checkpoint: {err}") from err
    try:
        # As Lightning's own load_from_checkpoint does: the file runs pickled code, load only your own files.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"classifier checkpoint {str(path)!r} is not a readable PyTorch checkpoint: {err}") from err


def load_classifier(path: Union[str, Path], map_location: Any = "cpu", train_hint: str = DEFAULT_TRAIN_HINT,
                    net: Optional[nn.Module] = None) -> nn.Module:
    """The classifier network saved in a :class:`ClassifierModule` checkpoint, frozen, in eval mode.

    The net is rebuilt from ``checkpoint["classifier_net"]`` (class path and
    constructor arguments) unless ``net`` is given (then its weights are
    replaced by the checkpoint's). All parameters have ``requires_grad=False``.

    Raises:
        FileNotFoundError: ``path`` does not exist; the message names it and ``train_hint``,
            the command that trains it.
        ValueError: the file is not a ClassifierModule checkpoint, or its weights do not fit the net.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a directory, not a checkpoint file" if p.is_dir() else "does not exist"
        raise FileNotFoundError(f"classifier checkpoint {str(p)!r} {what}. Train the classifier first: {train_hint}")
    ckpt = _read_checkpoint(p, map_location)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or CHECKPOINT_KEY not in ckpt:
        raise ValueError(f"{str(p)!r} is not a checkpoint of lightning_curate.classifiers.ClassifierModule "
                         f"(no {CHECKPOINT_KEY!r} entry). Train one with: {train_hint}")
    record = ckpt[CHECKPOINT_KEY]
    class_path = record.get("class_path", "?")
    if net is None:
        init_args = record.get("init_args")
        if init_args is None:
            raise ValueError(f"{str(p)!r}: the net {class_path} did not record plain constructor arguments "
                             f"(subclass lightning_curate.classifiers.RebuildableNet), so it cannot be rebuilt "
                             f"from the file; pass net= to load_classifier")
        try:
            cls = _import_class(class_path)
            net = cls(**init_args)
        except Exception as err:
            raise ValueError(f"{str(p)!r}: cannot rebuild the classifier {class_path}(**{init_args}): {err}") from err
    state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    if not state:
        raise ValueError(f"{str(p)!r} holds no classifier weights (no 'net.*' entries in its state_dict)")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{str(p)!r}: the saved weights do not fit {_class_path(net)} "
                         f"(missing, unexpected or mismatched tensors): {err}") from err
    net.eval().requires_grad_(False)
    return net


# -- a checkpoint that trains itself when missing -------------------------------
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

    An existing file is returned as it is (it is not checked here:
    :func:`load_classifier` does that). A missing one is trained by running
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
    if path.is_file():
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} checkpoint {str(path)!r} is a directory, not a checkpoint file")
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
    """

    def __init__(self, checkpoint: str, train_config: Optional[str] = None, train_hint: Optional[str] = None):
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
        object.__setattr__(self, "_net", None)  # outside the module tree (see the class docstring)
        self.register_buffer("_placement", torch.zeros(0), persistent=False)  # follows .to() before loading

    def prepare(self) -> "TrainedClassifier":
        """Train the checkpoint if it is missing (and ``train_config`` is set), then load it. Returns ``self``."""
        ensure_checkpoint(self.checkpoint, self.train_config, what="judge", train_hint=self.train_hint)
        _ = self.net
        return self

    @property
    def loaded(self) -> bool:
        return self._net is not None

    @property
    def net(self) -> nn.Module:
        """The classifier network (the checkpoint is read on first access)."""
        if self._net is None:
            net = load_classifier(self.checkpoint, map_location="cpu", train_hint=self.train_hint)
            net.to(self._placement.device)
            object.__setattr__(self, "_net", net)
        return self._net

    @property
    def num_classes(self) -> Optional[int]:
        return getattr(self.net, "num_classes", None)

    @property
    def num_features(self) -> Optional[int]:
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
        net, x = self._ready(x)
        with torch.no_grad():
            return net(x)

    def features(self, x: Tensor) -> Tensor:
        net, x = self._ready(x)
        with torch.no_grad():
            return net.features(x)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._net is not None:
            self._net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "TrainedClassifier":
        super().train(mode)
        if self._net is not None:
            self._net.eval()  # a fixed judge: batch-norm statistics and dropout stay off
        return self

    def extra_repr(self) -> str:
        return f"checkpoint={self.checkpoint!r}, train_config={self.train_config!r}, loaded={self.loaded}"
