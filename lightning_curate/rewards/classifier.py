"""Classifier rewards for images: ``r(x) = gamma * f(softmax(classifier(x)))``, float32 ``[N]``.

The paper's image experiments (docs/THEORY.md section 5) curate with a classifier
``q``: :class:`ClassProbabilityReward` (``gamma * q_c(x)``, bias toward a
target class), :class:`ConfidenceReward` (``gamma * max_i q_i(x)``, bias
toward whatever the classifier is sure of) and :class:`LogProbabilityReward`
(``gamma * log q_c(x)``). In a config::

    reward:
      class_path: lightning_curate.rewards.ClassProbabilityReward
      init_args:
        checkpoint: checkpoints/digits_classifier.ckpt
        train_config: configs/digits_classifier.yaml
        target_class: 0
        gamma: 5.0

The classifier is a :class:`~lightning_curate.classifiers.ClassifierModule`
checkpoint (loaded by :func:`~lightning_curate.classifiers.load_classifier`)
or a module given directly (``classifier=``). A checkpoint is read lazily, on
the first call (or :meth:`ClassifierReward.check`): configs are parsed before
a run has had the chance to train the classifier, and a missing file is then a
``FileNotFoundError`` naming the path and the command that trains it.
With ``train_config`` set, :meth:`ClassifierReward.prepare` (called by
``CurationModule.prepare_data``) trains a missing checkpoint first, running
``lightning-curate fit -c <train_config>`` in a subprocess
(:func:`~lightning_curate.classifiers.ensure_checkpoint`), so a new user's
first run is a single command.

The classifier is a fixed judge, not part of the reward's learnable state: it
is kept out of ``parameters()`` and ``state_dict()`` (a run's checkpoints do
not copy it, and resuming does not depend on whether it had been loaded yet),
but it follows the reward's ``.to(device)`` / ``.cuda()`` / ``.half()``, and
each call moves it to the input's device if needed. Rewards are computed in
eval mode under ``torch.inference_mode``, ``batch_size`` images at a time, and
are not differentiable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_curate.classifiers import DEFAULT_TRAIN_HINT, ensure_checkpoint, load_classifier, train_command
from lightning_curate.rewards.base import RewardModel
from lightning_curate.utils.compat import set_unregistered
from lightning_curate.utils.validation import check_int

__all__ = ["ClassifierReward", "ClassProbabilityReward", "ConfidenceReward", "LogProbabilityReward"]


def _module_device_dtype(module: nn.Module) -> tuple[Optional[torch.device], Optional[torch.dtype]]:
    for p in module.parameters():
        return p.device, p.dtype
    for b in module.buffers():
        return b.device, (b.dtype if b.is_floating_point() else None)
    return None, None


class ClassifierReward(RewardModel):
    """Base of the classifier rewards: holds the classifier and maps its log-softmax to a score.

    Subclasses implement :meth:`score_from_log_probs` (``[n, C]`` log
    probabilities in float32 -> ``[n]``).

    Args:
        checkpoint: path of a ClassifierModule checkpoint (exactly one of ``checkpoint`` / ``classifier``).
        classifier: a module mapping images ``[n, ...]`` to logits ``[n, num_classes]``.
        gamma: the reward scale.
        batch_size: images per classifier call.
        train_hint: the command that trains the missing checkpoint (shown in the error; default:
            ``lightning-curate fit -c <train_config>`` when ``train_config`` is set).
        train_config: the config that trains ``checkpoint``; :meth:`prepare` runs it when the
            checkpoint does not exist. ``None``: a missing checkpoint is an error naming ``train_hint``.
        trusted_classes: class paths outside lightning_curate that the checkpoint may name (your own
            net classes); anything else is refused (see :func:`~lightning_curate.classifiers.load_classifier`).
    """

    _classifier: Optional[nn.Module]  # set with set_unregistered: outside the module tree
    _placement: Tensor

    def __init__(self, checkpoint: Optional[str] = None, classifier: Optional[nn.Module] = None,
                 gamma: float = 1.0, batch_size: int = 4096, train_hint: Optional[str] = None,
                 train_config: Optional[str] = None, trusted_classes: Optional[list[str]] = None):
        super().__init__(gamma)
        if (checkpoint is None) == (classifier is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of checkpoint (a path) and classifier "
                             f"(a module), got {'both' if checkpoint is not None else 'neither'}")
        if classifier is not None and not isinstance(classifier, nn.Module):
            raise TypeError(f"classifier must be a torch.nn.Module, got {type(classifier).__name__}")
        if checkpoint is not None and not isinstance(checkpoint, (str, Path)):
            raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if train_config is not None and not isinstance(train_config, (str, Path)):
            raise TypeError(f"train_config must be a path or None, got {type(train_config).__name__}")
        if train_config is not None and checkpoint is None:
            raise ValueError(f"{type(self).__name__}: train_config needs a checkpoint path to train")
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.batch_size = batch_size
        self.train_config = None if train_config is None else str(train_config)
        if train_hint is None:
            train_hint = train_command(self.train_config) if self.train_config is not None else DEFAULT_TRAIN_HINT
        self.train_hint = train_hint
        self.trusted_classes = None if trusted_classes is None else list(trusted_classes)
        # Held outside the module tree (see the module docstring); _apply keeps it on the reward's device.
        self._set_classifier(None if classifier is None else classifier.eval().requires_grad_(False))
        # Follows .to()/.cuda()/.half() made before a lazy load; not saved (non-persistent, empty).
        self.register_buffer("_placement", torch.zeros(0), persistent=False)

    def _set_classifier(self, net: Optional[nn.Module]) -> None:
        set_unregistered(self, "_classifier", net)

    # -- loading --------------------------------------------------------------
    @property
    def classifier(self) -> nn.Module:
        """The classifier (loading the checkpoint on first access)."""
        net = self._classifier
        if net is None:
            assert self.checkpoint is not None  # exactly one of checkpoint / classifier (checked in __init__)
            net = load_classifier(self.checkpoint, map_location="cpu", train_hint=self.train_hint,
                                  trusted_classes=self.trusted_classes)
            net.to(self._placement.device)
            if self._placement.dtype != torch.float32:
                net.to(self._placement.dtype)
            self._set_classifier(net)
            self._validate_num_classes(getattr(net, "num_classes", None), f"the classifier in {self.checkpoint!r}")
        return net

    @property
    def loaded(self) -> bool:
        """Whether the classifier is in memory (given, or its checkpoint read)."""
        return self._classifier is not None

    def prepare(self) -> "ClassifierReward":
        """Train a missing checkpoint (when ``train_config`` is set), then load it. Returns ``self``.

        Called once by ``CurationModule.prepare_data``; a missing checkpoint without
        ``train_config`` raises the ``FileNotFoundError`` naming the command that trains it.
        """
        if self._classifier is None:
            assert self.checkpoint is not None  # no classifier given: then a checkpoint was
            ensure_checkpoint(self.checkpoint, self.train_config, what="reward classifier",
                              train_hint=self.train_hint)
        return self.check()

    def check(self) -> "ClassifierReward":
        """Load the classifier now: a missing or mismatched checkpoint raises here. Returns ``self``."""
        _ = self.classifier
        return self

    def _validate_num_classes(self, num_classes: Optional[int], what: str) -> None:
        """Subclasses check their target class against the classifier's number of classes."""

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self._classifier is not None:
            self._classifier._apply(fn)
        return self

    def train(self, mode: bool = True):
        """Set the mode; the classifier itself stays in eval mode."""
        super().train(mode)
        if self._classifier is not None:
            self._classifier.eval()  # a fixed judge: dropout and batch-norm statistics stay off
        return self

    # -- scoring --------------------------------------------------------------
    def score_from_log_probs(self, log_probs: Tensor) -> Tensor:
        """Scores ``[n]`` from log-probabilities ``[n, C]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_from_log_probs(log_probs) -> [n]")

    def score(self, x: Tensor) -> Tensor:
        """Unscaled scores ``[N]`` (float32, on ``x``'s device)."""
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"{type(self).__name__} expects a tensor of images [N, ...], got {type(x).__name__}")
        net = self.classifier
        device, dtype = _module_device_dtype(net)
        if device is not None and device != x.device:
            net.to(x.device)
        if net.training:
            net.eval()
        in_dtype = dtype if dtype is not None and x.is_floating_point() else None
        out = []
        with torch.inference_mode():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start:start + self.batch_size]
                logits = net(chunk if in_dtype is None else chunk.to(in_dtype))
                if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != chunk.shape[0]:
                    shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                    raise ValueError(f"{type(self).__name__}: the classifier must map {chunk.shape[0]} images to "
                                     f"logits [{chunk.shape[0]}, num_classes], got {shape}")
                self._validate_num_classes(logits.shape[1], "the classifier's output")
                out.append(self.score_from_log_probs(torch.log_softmax(logits.float(), dim=1)))
            scores = torch.cat(out) if out else torch.empty(0, device=x.device)
        if scores.is_inference() and not torch.is_inference_mode_enabled():
            scores = scores.clone()  # an ordinary tensor: callers may edit it in place
        return scores.to(device=x.device, dtype=torch.float32)

    def extra_repr(self) -> str:
        """Where the classifier comes from, ``gamma`` and whether it is loaded."""
        source = f"checkpoint={self.checkpoint!r}" if self.checkpoint is not None else "classifier=<module>"
        if self.train_config is not None:
            source += f", train_config={self.train_config!r}"
        return f"{source}, gamma={self.gamma}, loaded={self.loaded}"


class _TargetClassMixin:
    target_class: int
    _classifier: Optional[nn.Module]

    def _init_target(self, target_class: int) -> None:
        self.target_class = check_int("target_class", target_class, minimum=0)
        if self._classifier is not None:
            self._validate_num_classes(getattr(self._classifier, "num_classes", None), "the classifier")

    def extra_repr(self) -> str:
        """The target class, then the base reward's description."""
        return f"target_class={self.target_class}, " + super().extra_repr()  # type: ignore[misc]

    def _validate_num_classes(self, num_classes: Optional[int], what: str) -> None:
        if isinstance(num_classes, int) and not self.target_class < num_classes:
            raise ValueError(f"target_class={self.target_class} is out of range: {what} has {num_classes} "
                             f"classes (0..{num_classes - 1})")


class ClassProbabilityReward(_TargetClassMixin, ClassifierReward):
    """The paper's reward ``r(x) = gamma * q_c(x)``: the classifier's probability of ``target_class``."""

    def __init__(self, checkpoint: Optional[str] = None, target_class: int = 0, gamma: float = 5.0,
                 classifier: Optional[nn.Module] = None, batch_size: int = 4096,
                 train_hint: Optional[str] = None, train_config: Optional[str] = None,
                 trusted_classes: Optional[list[str]] = None):
        super().__init__(checkpoint=checkpoint, classifier=classifier, gamma=gamma, batch_size=batch_size,
                         train_hint=train_hint, train_config=train_config, trusted_classes=trusted_classes)
        self._init_target(target_class)

    def score_from_log_probs(self, log_probs: Tensor) -> Tensor:
        """``q_c(x)``."""
        return log_probs[:, self.target_class].exp()


class ConfidenceReward(ClassifierReward):
    """Classifier confidence ``r(x) = gamma * max_i q_i(x)`` (bias toward what the classifier is sure of)."""

    def __init__(self, checkpoint: Optional[str] = None, gamma: float = 5.0, classifier: Optional[nn.Module] = None,
                 batch_size: int = 4096, train_hint: Optional[str] = None, train_config: Optional[str] = None,
                 trusted_classes: Optional[list[str]] = None):
        super().__init__(checkpoint=checkpoint, classifier=classifier, gamma=gamma, batch_size=batch_size,
                         train_hint=train_hint, train_config=train_config, trusted_classes=trusted_classes)

    def score_from_log_probs(self, log_probs: Tensor) -> Tensor:
        """``max_i q_i(x)``."""
        return log_probs.amax(dim=1).exp()


class LogProbabilityReward(_TargetClassMixin, ClassifierReward):
    """``r(x) = gamma * log q_c(x)`` (unbounded below: exponential tilting by ``q_c^(beta * gamma)``)."""

    def __init__(self, checkpoint: Optional[str] = None, target_class: int = 0, gamma: float = 1.0,
                 classifier: Optional[nn.Module] = None, batch_size: int = 4096,
                 train_hint: Optional[str] = None, train_config: Optional[str] = None,
                 trusted_classes: Optional[list[str]] = None):
        super().__init__(checkpoint=checkpoint, classifier=classifier, gamma=gamma, batch_size=batch_size,
                         train_hint=train_hint, train_config=train_config, trusted_classes=trusted_classes)
        self._init_target(target_class)

    def score_from_log_probs(self, log_probs: Tensor) -> Tensor:
        """``log q_c(x)``."""
        return log_probs[:, self.target_class]
