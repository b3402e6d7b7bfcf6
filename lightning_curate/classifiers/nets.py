"""Classifier networks that remember how they were built, so a checkpoint can rebuild them from plain data.

- :class:`SmallCNN`: a VGG-style conv net (conv-BN-ReLU blocks, max pooling,
  global average pooling, linear head) for 8x8 digits and 32x32 CIFAR-10;
- :class:`MLPClassifier`: a plain MLP, a second architecture for a judge that
  does not share the reward model's inductive biases.

Every network maps images ``[n, C, H, W]`` to logits ``[n, num_classes]`` and
exposes ``features(x)`` ``[n, num_features]`` (the penultimate activations,
used by :mod:`lightning_curate.metrics.image`). Their constructor arguments
(:attr:`RebuildableNet.init_args`) are plain JSON data: that, plus the weights,
is all a checkpoint needs (see :mod:`lightning_curate.classifiers.checkpoint`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from typing import Any, Optional

from torch import Tensor, nn

from lightning_curate.utils.compat import set_unregistered
from lightning_curate.utils.validation import check_float, check_int

__all__ = ["MLPClassifier", "RebuildableNet", "SmallCNN"]


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
                set_unregistered(self, "_recorded_init_args", _bind_init_args(signature, self, args, kw))
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
    """Sizes are ints >= 1, at least 2 classes, dropout in [0, 1): errors name the argument."""
    for name, value in sizes.items():
        check_int(name, value, minimum=2 if name == "num_classes" else 1)
    if check_float("dropout", dropout, minimum=0.0) >= 1.0:
        raise ValueError(f"dropout must be a finite number in [0, 1), got {dropout!r}")


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
        """Logits ``[n, num_classes]``."""
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
        """Logits ``[n, num_classes]``."""
        return self.head(self.features(x))


