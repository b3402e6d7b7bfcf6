"""The interface between the retraining loop and a generative model.

The loop needs only a few things from a model: a way to fit it to a round's
data, reproducible sampling, and a few optional hooks. These are plain
``nn.Module``\\ s, with no Lightning in them, so custom trainers can use them as
they are. A generator is fitted in one of two ways:

* **gradient-trained** (it has trainable parameters): the loop's optimizer
  minimises :meth:`Generator.loss`, one step per training batch;
* **closed-form** (no trainable parameters, e.g. an exact or EM learner): the
  loop calls :meth:`Generator.fit` once per round with the round's whole
  training set; no optimizer is made.

docs/byo/generator.md states the contract with runnable examples.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["Generator", "has_log_prob", "is_closed_form"]


class Generator(nn.Module):
    """Interface of a generative model that the retraining loop can drive.

    Subclasses set ``data_shape`` and implement :meth:`sample`, and either
    :meth:`loss` (a gradient-trained model: it has trainable parameters) or
    :meth:`fit` (a closed-form learner: no trainable parameters). The other
    methods are optional hooks.

    Attributes:
        data_shape: the shape of one sample, e.g. ``(2,)`` for points in the plane or
            ``(1, 28, 28)`` for images. :meth:`sample` returns ``[n, *data_shape]``, training
            batches are ``[B, *data_shape]``, and it must match the data source's samples.
        fidelity_hint: optional advice the end-of-run fidelity warning gives for this kind of
            model (which of its settings make it follow its training data more closely); a
            class attribute or a property. ``None``: generic advice.

    When the loop calls what, within one ``Trainer.fit``:

    * at fit start, before any training: :meth:`sample` a few points, twice with the same seed
      and once with another, and :meth:`loss` once on a real batch (in eval mode), to check the
      contract (:mod:`lightning_curate.loop.component_check`);
    * every training batch: :meth:`loss` in training mode, then an optimizer step and
      :meth:`update_ema` (gradient-trained); or, at the first batch of each round,
      :meth:`fit` with the round's training set, then :meth:`loss` under ``torch.no_grad``
      for the logged ``train/loss`` if the model implements it (closed-form);
    * at each round's first epoch (round ``t >= 1``): :meth:`start_round`;
    * at each round's end: :meth:`sample` in eval mode (the curation's candidates and the
      preview), then :meth:`round_metrics`; :meth:`finish_round` instead of sampling when the
      round was already stored (a resumed run).

    An optional protocol: :meth:`log_prob`, the model's own log-density. Selection by the model's
    likelihood (keeping the top, bottom or a random share of a pool ranked by it) calls it, and
    refuses a generator without it (:func:`has_log_prob`). The built-in learners have it: in closed
    form for ``ExactCategorical``, ``GaussianLearner`` and ``KDELearner``, by the ODE's change of variables for
    ``FlowMatching`` (:mod:`lightning_curate.models.likelihood`).

    Example:
        A Gaussian whose mean is learned by gradient descent::

            class ShiftedGaussian(Generator):
                def __init__(self, dim: int = 2):
                    super().__init__()
                    self.data_shape = (dim,)
                    self.mean = nn.Parameter(torch.zeros(dim))

                def loss(self, x):
                    return ((x - self.mean) ** 2).sum(dim=1).mean()

                def sample(self, n, *, generator=None, device=None):
                    noise = torch.randn(n, *self.data_shape, generator=generator,
                                        device=generator.device if generator is not None else None)
                    return (noise.to(self.mean.device) + self.mean).to(device or self.mean.device)
    """

    data_shape: tuple[int, ...]
    fidelity_hint: Optional[str] = None

    def loss(self, x: Tensor) -> Tensor:
        """The scalar training loss on a batch (gradient-trained models).

        Args:
            x: a training batch, float ``[B, *data_shape]`` on the model's device (real data and
                curated samples of earlier rounds, mixed).

        Returns:
            A scalar tensor that requires grad; the loop's optimizer (AdamW on every trainable
            parameter) steps on it. A closed-form learner may implement it too, as a score to log
            (e.g. its negative log-likelihood); it is then called under ``torch.no_grad``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement loss(x) -> scalar Tensor")

    def fit(self, x: Tensor) -> None:
        """Fit the model to a round's whole training set in closed form (models with no trainable parameters).

        Override it for an exact or EM learner: the loop then makes no optimizer and calls it once
        per round, at the first training batch of the round, with every row the round trains on (the
        same tensor on every process). Keep the fitted state in buffers (``register_buffer``), so a
        checkpoint carries it and a resumed run continues exactly. A model that overrides it must
        have no trainable parameters.

        Args:
            x: the round's training set, float ``[N, *data_shape]`` on the model's device.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement fit(x) (it has no trainable parameters)")

    def sample(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
    ) -> Tensor:
        """Draw ``n`` samples.

        Args:
            n: how many samples (``n >= 0``).
            generator: the source of every random draw. The loop passes a seeded CPU
                ``torch.Generator``; the same generator state must give the same samples, and a
                differently seeded one different samples. Draw from it (e.g. ``torch.randn(...,
                generator=generator, device=generator.device)``), then move the draws to the model's
                device, so a seed gives the same samples on every device. Never use the global RNG.
            device: where the returned tensor must live (default: the model's device).

        Returns:
            Float ``[n, *data_shape]``, finite, on ``device``.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement sample(n, *, generator=None, device=None) -> Tensor"
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """The model's log-density at each point (optional; likelihood-ranked selection needs it).

        Args:
            x: points ``[n, *data_shape]`` on any device.

        Returns:
            ``[n]`` log-densities (natural log, with respect to Lebesgue measure for continuous data,
            to the counting measure for atoms), finite where the model has mass. Deterministic for a
            given model and ``x``: an estimator that draws (e.g. Hutchinson's probes) seeds its draws.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement log_prob(x) -> Tensor[n], which "
                                  "likelihood-ranked selection needs; implement it, or select by a reward")

    def update_ema(self) -> None:
        """Called after each optimizer step; a model that averages its weights updates them here."""

    def start_round(self, round_idx: int) -> None:
        """Called when training on round ``round_idx``'s data begins (``round_idx >= 1``).

        A model that averages its weights may restart the average here, so it holds no memory of
        earlier rounds.
        """

    def finish_round(self) -> None:
        """Called when a round's data is complete without this model having sampled it (a stored
        round reused after a crash); a model that refits lazily refits here."""

    def round_metrics(self, reward: nn.Module, source: nn.Module, *, beta: float, num_candidates: int,
                      real_fraction: float, round_idx: int) -> dict[str, float]:
        """Extra ``rounds.csv`` columns this model can compute exactly (e.g. its KL to the ideal learner)."""
        return {}


def has_log_prob(generator: nn.Module) -> bool:
    """Whether ``generator`` implements the optional :meth:`Generator.log_prob`.

    Example:
        >>> from torch import nn
        >>> from lightning_curate.models import GaussianLearner
        >>> has_log_prob(GaussianLearner(dim=2)), has_log_prob(nn.Linear(2, 1))
        (True, False)
    """
    return callable(getattr(generator, "log_prob", None)) and getattr(type(generator), "log_prob", None) is not \
        Generator.log_prob


def is_closed_form(generator: nn.Module) -> bool:
    """Whether the loop fits ``generator`` by :meth:`Generator.fit` (no optimizer) rather than by gradient.

    A generator is closed-form when it overrides ``fit``; it must then have no trainable
    parameters. A generator without trainable parameters must override ``fit``.

    Raises:
        TypeError: naming the generator, when the two disagree.

    Example:
        >>> from lightning_curate.models import ExactCategorical
        >>> is_closed_form(ExactCategorical(num_atoms=3))
        True
    """
    overrides_fit = getattr(type(generator), "fit", None) not in (None, Generator.fit)
    trainable = sum(p.numel() for p in generator.parameters() if p.requires_grad)
    name = type(generator).__name__
    if overrides_fit and trainable:
        raise TypeError(f"generator {name} implements fit(x) (a closed-form learner) but has {trainable} trainable "
                        "parameters: a generator is fitted either by its loss (trainable parameters) or by fit "
                        "(none); freeze them (requires_grad_(False)) or remove fit")
    if not overrides_fit and not trainable:
        raise TypeError(f"generator {name} has no trainable parameters, so no optimizer can train it: implement "
                        "fit(x), which the loop calls with each round's training set (an exact or EM learner), "
                        "or give it parameters that loss(x) trains")
    return overrides_fit
