"""A gradient-trained generator of your own: a mixture of Gaussians whose weights, means and scales are learned.

It implements the :class:`lightning_curate.Generator` contract (docs/byo/generator.md):
``data_shape``, ``loss`` (a scalar the loop's optimizer minimises) and ``sample``
(every random number from the ``generator`` argument). Configs name it as
``my_generator.LearnedMixture`` when this folder is the working directory.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from lightning_curate import Generator

__all__ = ["LearnedMixture"]


class LearnedMixture(Generator):
    """``num_components`` diagonal Gaussians, fitted by maximum likelihood with the loop's AdamW.

    Args:
        num_components: mixture components.
        dim: the dimension of a sample (``data_shape = (dim,)``).
        spread: the starting means are drawn with this standard deviation.
    """

    fidelity_hint = "For LearnedMixture: train more per round (epochs_per_round, or a larger lr)."

    def __init__(self, num_components: int = 4, dim: int = 2, spread: float = 1.0) -> None:
        super().__init__()
        self.data_shape = (dim,)
        start = torch.Generator().manual_seed(0)  # the same starting point on every process
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.means = nn.Parameter(spread * torch.randn(num_components, dim, generator=start))
        self.log_scales = nn.Parameter(torch.full((num_components, dim), -1.0))

    def loss(self, x: Tensor) -> Tensor:
        """The batch's mean negative log-likelihood (a scalar that requires grad)."""
        z = (x[:, None, :] - self.means) * torch.exp(-self.log_scales)
        log_normal = -(0.5 * z.pow(2) + self.log_scales + 0.5 * math.log(2 * math.pi)).sum(-1)
        return -torch.logsumexp(torch.log_softmax(self.logits, 0) + log_normal, dim=1).mean()

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """``n`` samples ``[n, dim]``. Components and noise are drawn from ``generator`` on its own device,
        then moved to the model's, so a seed gives the same samples on every device."""
        draw = generator.device if generator is not None else self.means.device
        component = torch.multinomial(torch.softmax(self.logits, 0).to(draw), n, replacement=True,
                                      generator=generator).to(self.means.device)
        noise = torch.randn(n, *self.data_shape, generator=generator, device=draw).to(self.means.device)
        x = self.means[component] + torch.exp(self.log_scales[component]) * noise
        return x.to(device if device is not None else self.means.device)
