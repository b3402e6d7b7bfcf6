"""A closed-form learner of your own: a Gaussian mixture fitted by EM on each round's data.

It has no trainable parameters, so the loop makes no optimizer: it calls
``fit(x)`` once per round with the round's whole training set
(docs/byo/generator.md, "closed-form learners"). The fitted mixture lives in
buffers, so checkpoints carry it and a resumed run continues exactly. Configs
name it as ``my_em_learner.GaussianMixtureEM``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lightning_curate import Generator

__all__ = ["GaussianMixtureEM"]


class GaussianMixtureEM(Generator):
    """A mixture of ``num_components`` diagonal Gaussians, fitted by ``iterations`` EM steps per round.

    Each fit starts afresh from ``num_components`` rows of the data chosen with ``seed``
    (the same rows for the same data), so the model after a round depends on that round's data
    alone, on every process and after a resume.

    Args:
        num_components: mixture components.
        dim: the dimension of a sample (``data_shape = (dim,)``).
        iterations: EM steps per fit.
        min_variance: a floor on every variance, so a component on a single point stays proper.
        seed: chooses the starting means.
    """

    weights: Tensor
    means: Tensor
    variances: Tensor
    fidelity_hint = ("For GaussianMixtureEM: a lag means EM does not reach the law of its data; raise iterations, "
                     "or num_components if the data has more modes.")

    def __init__(self, num_components: int = 4, dim: int = 2, iterations: int = 30, min_variance: float = 1e-3,
                 seed: int = 0) -> None:
        super().__init__()
        if num_components < 1 or dim < 1 or iterations < 1:
            raise ValueError(f"num_components, dim and iterations must be >= 1, got {num_components}, {dim}, "
                             f"{iterations}")
        self.data_shape = (dim,)
        self.iterations, self.min_variance, self.seed = iterations, min_variance, seed
        # Before the first fit: the standard normal (the fit-start check samples it).
        self.register_buffer("weights", torch.full((num_components,), 1.0 / num_components, dtype=torch.float64))
        self.register_buffer("means", torch.zeros(num_components, dim, dtype=torch.float64))
        self.register_buffer("variances", torch.ones(num_components, dim, dtype=torch.float64))

    def _log_joint(self, x: Tensor) -> Tensor:
        """``log(w_k N(x_i; mu_k, var_k))``, ``[N, K]``, in float64."""
        diff = x[:, None, :] - self.means[None]
        log_normal = -0.5 * (diff.pow(2) / self.variances + torch.log(2 * math.pi * self.variances)).sum(-1)
        return torch.log(self.weights) + log_normal

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """EM from ``num_components`` seeded rows of ``x`` (float ``[N, dim]``)."""
        x = x.to(self.means)
        k = self.weights.shape[0]
        pick = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(self.seed))[:k]
        means = x[pick.to(x.device)].clone()
        if means.shape[0] < k:  # fewer rows than components: repeat them
            means = means[torch.arange(k, device=x.device) % means.shape[0]]
        self.means.copy_(means)
        self.variances.copy_(x.var(dim=0, unbiased=False).clamp_min(self.min_variance).expand(k, -1))
        self.weights.fill_(1.0 / k)
        for _ in range(self.iterations):
            resp = torch.softmax(self._log_joint(x), dim=1)  # E-step: [N, K]
            mass = resp.sum(dim=0).clamp_min(1e-12)  # M-step
            self.weights.copy_(mass / mass.sum())
            self.means.copy_(resp.T @ x / mass[:, None])
            second = resp.T @ x.pow(2) / mass[:, None]
            self.variances.copy_((second - self.means.pow(2)).clamp_min(self.min_variance))

    def loss(self, x: Tensor) -> Tensor:
        """The batch's mean negative log-likelihood: logged as ``train/loss``; nothing trains on it."""
        return -torch.logsumexp(self._log_joint(x.to(self.means)), dim=1).mean().float()

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """``n`` samples ``[n, dim]``: components and noise drawn from ``generator``, on its device."""
        draw = generator.device if generator is not None else self.means.device
        component = torch.multinomial(self.weights.to(draw), n, replacement=True, generator=generator)
        noise = torch.randn(n, *self.data_shape, generator=generator, device=draw, dtype=torch.float64)
        component, noise = component.to(self.means.device), noise.to(self.means.device)
        x = self.means[component] + self.variances[component].sqrt() * noise
        return x.float().to(device if device is not None else self.means.device)
