"""The fit-start check of a run's components: a few samples drawn and scored before any training.

A generator, reward or data source that breaks its contract would otherwise
fail after round 0's training, and often blame another component (a sample of
shape ``[n, 1, 2]`` surfaces as a reward of the wrong shape). The loop calls
:func:`check_components` in ``RetrainingLoop.setup``, before any training and
before anything is written to the run directory, and each failure is one line
naming the component at fault and what was expected:

* :class:`GeneratorError`: ``data_shape``; ``sample``'s shape, dtype, finiteness and device;
  ``sample`` honouring its ``generator`` argument (the same seed gives the same samples,
  another seed others); ``loss`` giving a scalar that requires grad; trainable parameters
  versus ``fit`` (:func:`~lightning_curate.models.generator.is_closed_form`);
* :class:`RewardError`: one finite floating reward per sample, shape ``[n]``;
* :class:`DataSourceError`: ``load()``'s samples (floating, finite, shaped like the
  generator's ``data_shape``) and ``label()``'s labels (integers ``[n]`` in
  ``0..len(class_names) - 1``).

The check draws from seeded generators of its own and restores the global RNG
state, the modules' train/eval modes and their gradients, so a checked run
trains exactly as an unchecked one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from lightning_curate.data.source import DataSource, RealData
from lightning_curate.models.generator import is_closed_form
from lightning_curate.utils.seeding import generator as make_generator

__all__ = ["CHECK_SAMPLES", "ComponentError", "DataSourceError", "GeneratorError", "RewardError",
           "check_components", "check_run_components"]

CHECK_SAMPLES = 8  # samples drawn per call: enough to see a generator ignore its seed, cheap for a UNet
_SEEDS = (20240601, 20240602, 20240603, 20240604)  # the check's own seeds: the first twice, then the others


class ComponentError(ValueError):
    """A generator, reward or data source breaks its contract (docs/byo); the message names it."""


class GeneratorError(ComponentError):
    """The generator breaks its contract (``data_shape``, ``sample``, ``loss`` or ``fit``)."""


class RewardError(ComponentError):
    """A reward model breaks its contract: one finite reward per sample, shape ``[n]``."""


class DataSourceError(ComponentError):
    """The data source breaks its contract (``load`` or ``label``), or disagrees with the generator."""


def _shape(value: Any) -> str:
    return f"shape {list(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"


@contextmanager
def _untouched(modules: list[nn.Module], device: torch.device) -> Iterator[None]:
    """Eval mode and the caller's RNG state inside; the modules' modes and the RNG restored after."""
    modes = [[(m, m.training) for m in module.modules()] for module in modules]
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for module in modules:
                module.eval()
            yield
    finally:
        for saved in modes:
            for m, training in saved:
                m.training = training


def _call(error: type[ComponentError], what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, an exception in it reported as ``error`` naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except ComponentError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure of a user's component, named
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise error(f"{what} raised {type(err).__name__}: {message}") from err


def _check_data_shape(generator: nn.Module, name: str) -> tuple[int, ...]:
    shape = getattr(generator, "data_shape", None)
    if not isinstance(shape, (tuple, list)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise GeneratorError(f"generator {name}: data_shape must be the shape of one sample, a tuple of positive "
                             f"ints such as (2,) or (1, 28, 28); got {shape!r} (set self.data_shape in __init__)")
    return tuple(shape)


def _check_samples(generator: nn.Module, name: str, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """The first draw, after checking shape, dtype, finiteness, device and the ``generator`` rule."""
    n = CHECK_SAMPLES
    call = f"generator {name}: sample({n}, generator=..., device='{device}')"

    def draw(seed: int) -> Tensor:
        return _call(GeneratorError, call, generator.sample, n, generator=make_generator(seed), device=device)

    x = draw(_SEEDS[0])
    expected = [n, *shape]
    if not isinstance(x, Tensor) or list(x.shape) != expected:
        raise GeneratorError(f"{call} returned {_shape(x)}; expected {expected} ([n, *data_shape] with data_shape "
                             f"{shape})")
    if not x.is_floating_point():
        raise GeneratorError(f"{call} returned dtype {x.dtype}; expected a floating dtype (e.g. torch.float32)")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise GeneratorError(f"{call} returned {bad} non-finite values (NaN or inf) in {x.numel()}")
    if x.device != device:
        raise GeneratorError(f"{call} returned a tensor on {x.device}; expected it on the device it was asked for")
    if not torch.equal(x, draw(_SEEDS[0])):
        raise GeneratorError(f"{call} gave different samples for the same seed: draw every random number from the "
                             "`generator` argument, never from the global RNG")
    varied = bool((x != x[:1]).any())  # a generator with one possible sample cannot show its seed
    if varied and all(torch.equal(x, draw(seed)) for seed in _SEEDS[1:]):
        raise GeneratorError(f"{call} gave the same samples for {len(_SEEDS)} different seeds: draw the random "
                             "numbers from the `generator` argument")
    return x


def _check_loss(generator: nn.Module, name: str, batch: Tensor) -> None:
    """``loss`` of a gradient-trained generator: a finite scalar that requires grad."""
    call = f"generator {name}: loss(x) on a real batch of {_shape(batch)}"
    with torch.enable_grad():
        loss = _call(GeneratorError, call, generator.loss, batch)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise GeneratorError(f"{call} returned {_shape(loss)}; expected a scalar tensor (shape [])")
    if not loss.requires_grad:
        raise GeneratorError(f"{call} returned a tensor that does not require grad: the optimizer could not train "
                             "the generator (compute the loss from its parameters)")
    if not bool(torch.isfinite(loss.detach())):
        raise GeneratorError(f"{call} returned {float(loss.detach())}; expected a finite number")


def _check_reward(reward: nn.Module, what: str, x: Tensor) -> None:
    n = x.shape[0]
    call = f"{what} {type(reward).__name__} on {n} generator samples of {_shape(x)}"
    with torch.inference_mode():
        r = _call(RewardError, call, reward, x)
    if not isinstance(r, Tensor) or list(r.shape) != [n]:
        raise RewardError(f"{call} returned {_shape(r)}; expected one reward per sample, shape [{n}]")
    if not r.is_floating_point():
        raise RewardError(f"{call} returned dtype {r.dtype}; expected a floating dtype (e.g. torch.float32)")
    bad = int((~torch.isfinite(r)).sum())
    if bad:
        raise RewardError(f"{call} returned {bad} non-finite rewards (NaN or inf) out of {n}")


def _check_real(real: Any, source_name: str, shape: tuple[int, ...], generator_name: str) -> None:
    if not isinstance(real, RealData):
        raise DataSourceError(f"data source {source_name}: load() returned a {type(real).__name__}; expected a "
                              "lightning_curate.data.RealData")
    for part in ("train", "heldout"):
        x = getattr(real, part)
        what = f"data source {source_name}: load().{part}"
        if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
            raise DataSourceError(f"{what} is {_shape(x)}; expected a non-empty tensor [N, *data_shape]")
        if list(x.shape[1:]) != list(shape):
            raise DataSourceError(f"{what} has samples of shape {list(x.shape[1:])} ({_shape(x)}) but the generator "
                                  f"{generator_name} has data_shape {shape}: a sample of the data and one of the "
                                  "model must have the same shape")
        if not x.is_floating_point():
            raise DataSourceError(f"{what} has dtype {x.dtype}; expected a floating dtype (e.g. torch.float32)")
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise DataSourceError(f"{what} holds {bad} non-finite values (NaN or inf)")


def _check_labels(source: nn.Module, name: str, x: Tensor, what: str) -> None:
    names = getattr(source, "class_names", None)
    if not names:
        return
    call = f"data source {name}: label(x) on {x.shape[0]} {what}"
    with torch.inference_mode():
        labels = _call(DataSourceError, call, source.label, x)
    if labels is None:
        return
    n = x.shape[0]
    if not isinstance(labels, Tensor) or list(labels.shape) != [n] or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        got = f"{_shape(labels)}" + (f" of {labels.dtype}" if isinstance(labels, Tensor) else "")
        raise DataSourceError(f"{call} returned {got}; expected integer labels of shape [{n}] (or None)")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise DataSourceError(f"{call} returned label {bad}; class_names has {len(names)} names, so labels must be "
                              f"in 0..{len(names) - 1}")


def check_components(generator: nn.Module, reward: nn.Module, source: Optional[DataSource] = None, *,
                     real: Optional[RealData] = None, device: torch.device | str = "cpu",
                     other_rewards: Optional[Mapping[str, nn.Module]] = None) -> None:
    """Draw a few samples from ``generator``, score them, and check every contract on the way.

    Args:
        generator: the :class:`~lightning_curate.models.Generator` of the run.
        reward: the reward model: any ``nn.Module`` mapping ``[n, *data_shape]`` to ``[n]``.
        source: the :class:`~lightning_curate.data.DataSource`; its data is checked when given.
        real: the source's data, if already loaded (else ``source.load()`` is called).
        device: where the generator and the reward are (``sample`` is asked for this device).
        other_rewards: more rewards to check, by how the error should name them (a population's
            curators).

    Raises:
        GeneratorError, RewardError, DataSourceError: one line naming the component and what was
            expected (all are :class:`ComponentError`, a ``ValueError``).

    Example:
        >>> from lightning_curate.models import ExactCategorical
        >>> from lightning_curate.rewards import AtomReward
        >>> check_components(ExactCategorical(num_atoms=3), AtomReward([1.0, 0.0, 0.0]))
        >>> try:
        ...     check_components(ExactCategorical(num_atoms=3), nn.Identity())
        ... except RewardError as err:
        ...     print(str(err).split("; ")[1])
        expected one reward per sample, shape [8]
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = type(generator).__name__
    shape = _check_data_shape(generator, name)
    try:
        closed_form = is_closed_form(generator)
    except TypeError as err:
        raise GeneratorError(str(err)) from None
    rewards = {"reward": reward, **(other_rewards or {})}
    with _untouched([generator, *rewards.values()], device), torch.no_grad():
        x = _check_samples(generator, name, shape, device)
        for what, r in rewards.items():
            _check_reward(r, what, x)
        if source is None:
            return
        source_name = type(source).__name__
        if real is None:
            real = _call(DataSourceError, f"data source {source_name}: load()", source.load)
        _check_real(real, source_name, shape, name)
        assert real is not None
        _check_labels(source, source_name, x, "generator samples")
        _check_labels(source, source_name, real.train[:CHECK_SAMPLES], "real samples")
        if not closed_form:
            _check_loss(generator, name, real.train[:CHECK_SAMPLES].to(device))


def check_run_components(pl_module: Any, datamodule: Any, device: Optional[torch.device] = None) -> None:
    """:func:`check_components` of a ``CurationModule`` (its generator, reward and curators' rewards) and a
    ``BlendingDataModule`` (its source and data); what ``RetrainingLoop.setup`` runs.

    At setup Lightning has not yet moved the module to its device: it is moved there for the check
    (a large generator samples in a second on a GPU, in minutes on a CPU) and back after.
    """
    if device is None:
        try:
            device = pl_module.trainer.strategy.root_device
        except RuntimeError:  # not attached to a Trainer
            device = pl_module.device
    previous = pl_module.device
    others = {f"curator {c.name!r}'s reward": c.reward for c in getattr(pl_module, "curators", None) or []}
    try:
        pl_module.to(device)
        check_components(pl_module.generator, pl_module.reward, datamodule.source, real=datamodule.real,
                         device=device, other_rewards=others)
    finally:
        pl_module.to(previous)
