"""Velocity networks ``v(x_t, t)`` for :class:`~lightning_curate.models.FlowMatching`.

Every network here takes ``x`` of shape ``[B, *data_shape]`` and ``t`` of shape
``[B]`` (values in ``[0, 1]``) and returns a tensor shaped like ``x``. That is
the whole contract, so an image network (a UNet on ``[B, C, H, W]``) can sit
beside :class:`MLPVelocity` without changing the generator.
"""

import math

import torch
from torch import Tensor, nn

from lightning_curate.utils.validation import check_choice, check_float, check_int

__all__ = ["MLPVelocity", "SinusoidalTimeEmbedding"]

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def check_even(name: str, value: int) -> int:
    """A sinusoidal embedding's width: an even int >= 2 (one sine and one cosine per frequency)."""
    if check_int(name, value, minimum=2) % 2:
        raise ValueError(f"{name} must be an even int >= 2, got {value!r}")
    return value


class SinusoidalTimeEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar time.

    ``t`` lives in ``[0, 1]``, so it is multiplied by ``scale`` first: without
    it the low frequencies would barely change over the whole interval.
    """

    frequencies: Tensor

    def __init__(self, dim: int, scale: float = 1000.0, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = check_even("dim", dim)
        self.scale = check_float("scale", scale, minimum=0.0, strict_minimum=True)
        max_period = check_float("max_period", max_period, minimum=0.0, strict_minimum=True)
        half = dim // 2
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("frequencies", frequencies, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """``t`` of shape ``[B]`` -> embedding of shape ``[B, dim]``."""
        angles = (t.to(self.frequencies.dtype) * self.scale)[:, None] * self.frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class MLPVelocity(nn.Module):
    """A multilayer perceptron velocity field for low-dimensional data.

    The time embedding is concatenated to the (flattened) input. Input of any
    shape ``[B, *s]`` with ``prod(s) == dim`` is accepted and the output has the
    input's shape, so a small image can use it too.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 256,
        depth: int = 3,
        time_dim: int = 32,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("depth (the number of hidden layers)", depth, minimum=1)
        check_even("time_dim", time_dim)
        check_choice("activation", activation, sorted(ACTIVATIONS))
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        layers: list[nn.Module] = []
        width = dim + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity shaped like ``x`` ``[B, *s]`` at times ``t`` ``[B]``."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"MLPVelocity(dim={self.dim}) got input of shape {tuple(x.shape)}")
        features = torch.cat([flat, self.time_embedding(t).to(flat.dtype)], dim=-1)
        return self.net(features).reshape(x.shape)
