"""Argument checks shared by every layer, so each error reads the same way.

Each check names the argument and says what was expected, and returns the
value (converted where that is the point, e.g. ``check_float`` returns a
``float``), so a constructor can check and assign in one line::

    self.num_slots = check_int("num_slots", num_slots, minimum=1)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["BETA_SPREAD_MAX", "MODES", "BetaRangeError", "atom_indices", "check_beta", "check_beta_spread",
           "check_choice", "check_float", "check_int", "check_vector", "is_int"]

# The K-choice rules (Bradley-Terry / Plackett-Luce, best-of-K, uniform): here so that
# the op (ops) and its exact laws (theory) name them from one place.
MODES = ("softmax", "argmax", "uniform")


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer and not a ``bool`` (``True`` is an ``int`` to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``value`` as an ``int``, or a ``ValueError`` naming ``name`` and the allowed range.

    Example:
        >>> check_int("num_slots", 2000, minimum=1)
        2000
    """
    low_ok = minimum is None or (is_int(value) and value >= minimum)
    high_ok = maximum is None or (is_int(value) and value <= maximum)
    if not is_int(value) or not low_ok or not high_ok:
        if minimum is not None and maximum is not None:
            expected = f"an int in {minimum}..{maximum}"
        elif minimum is not None:
            expected = f"an int >= {minimum}"
        elif maximum is not None:
            expected = f"an int <= {maximum}"
        else:
            expected = "an int"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def check_float(name: str, value: Any, minimum: Optional[float] = None, maximum: Optional[float] = None,
                *, strict_minimum: bool = False) -> float:
    """``value`` as a finite ``float``, or a ``ValueError`` naming ``name`` and the allowed range.

    ``strict_minimum`` makes the lower bound exclusive (``> minimum``).

    Example:
        >>> check_float("beta", 2, minimum=0.0)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict_minimum else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be a finite number <= {maximum}, got {value!r}")
    return value


def check_beta(beta: Any) -> float:
    """The choice's inverse temperature: a finite number ``>= 0`` (0 is uniform choice)."""
    return check_float("beta", beta, minimum=0.0)


# beta times the rewards' spread beyond which a float32 softmax draw is no longer reliable (kchoice's draw
# failed from about 1e10 on): there the choice is the argmax anyway, which mode: argmax computes exactly.
BETA_SPREAD_MAX = 1e8


class BetaRangeError(ValueError):
    """A softmax choice whose ``beta`` times the rewards' spread is beyond float32's reach."""


def check_beta_spread(beta: float, rewards: Tensor, mode: str, name: str = "beta") -> None:
    """Refuse a softmax choice whose ``beta * (max - min reward)`` exceeds :data:`BETA_SPREAD_MAX`.

    Example:
        >>> check_beta_spread(1e6, torch.tensor([0.0, 1.0]), "softmax")  # fine
        >>> try:
        ...     check_beta_spread(1e9, torch.tensor([0.0, 1.0]), "softmax")
        ... except ValueError as err:
        ...     print(str(err)[:49])
        beta: 1e+09 times the rewards' spread 1 is 1e+09,
    """
    if mode != "softmax" or rewards.numel() == 0:
        return
    spread = float(rewards.max() - rewards.min())
    if beta * spread > BETA_SPREAD_MAX:
        raise BetaRangeError(f"{name}: {beta:g} times the rewards' spread {spread:g} is {beta * spread:g}, above "
                         f"{BETA_SPREAD_MAX:g}: a float32 softmax draw cannot resolve it. Use mode: argmax (the "
                         f"beta -> infinity limit, computed exactly) or a smaller {name}")


def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """``value`` if it is one of ``allowed``, else a ``ValueError`` listing them."""
    if value not in tuple(allowed):
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return value


def check_vector(name: str, values: Iterable[Any]) -> Tensor:
    """A non-empty list of finite numbers as a float32 ``[D]`` tensor."""
    try:
        vec = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a list of numbers, got {values!r}") from err
    if vec.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not torch.isfinite(vec).all():
        raise ValueError(f"{name} must be finite, got {values!r}")
    return vec


def atom_indices(x: Tensor, num_atoms: int, who: str) -> Tensor:
    """The int64 atom indices ``[n]`` of a batch ``x`` of shape ``[n, 1]`` (or ``[n]``), checked.

    The exact learner, its data and its reward all store a sample as the index of
    an atom in a float tensor; this is the one place that reads one back.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a tensor of atom indices of shape [n, 1], got {type(x).__name__}")
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.dim() != 1:
        raise ValueError(f"{who} expects atom indices of shape [n, 1], got shape {tuple(x.shape)}")
    if x.is_floating_point():
        idx = x.round()
        if x.numel() and not torch.equal(idx, x):
            raise ValueError(f"{who}: atom indices must be whole numbers, got e.g. {float(x[idx != x][0])}")
        idx = idx.long()
    else:
        idx = x.long()
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= num_atoms):
        raise ValueError(f"{who}: atom indices must be in 0..{num_atoms - 1}, got values in "
                         f"{int(idx.min())}..{int(idx.max())}")
    return idx
