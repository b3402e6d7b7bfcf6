"""The kernel density learner: a Gaussian KDE of the round's training set, fitted in closed form.

"Collapse or Thrive?" (Kazdan, Schaeffer et al., ICML 2025) uses a kernel
density estimate as an exact non-parametric learner. Fitting stores the round's
training set; a sample is one stored point, drawn uniformly, plus kernel noise.

What the loop's ideal-learner prediction means for it: the ideal learner's next
model is the law of the round's training set (docs/THEORY.md section 2). A KDE fitted on that
set *is* the set's empirical law smoothed by the kernel, ``p_{t+1} = (empirical law of the
training set) * N(0, Sigma_h)``: a sample is exactly an ideal-learner sample (a stored
training point) plus independent kernel noise. So the prediction holds exactly for
the stored points, and the model's law is the ideal learner's convolved with the
kernel (means are equal; covariances differ by ``Sigma_h``; a reward's prediction
holds up to the kernel's blur, which vanishes as the bandwidth does).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

import torch
from torch import Tensor, nn

from lightning_curate.models.gaussian import SINGULAR_RTOL, gaussian_moments, moment_columns
from lightning_curate.models.generator import Generator
from lightning_curate.utils.validation import check_float, check_int

__all__ = ["BANDWIDTH_RULES", "KDELearner", "bandwidth_factor"]

BANDWIDTH_RULES = ("scott", "silverman")


def bandwidth_factor(rule: str, n: int, dim: int) -> float:
    """The kernel's scale factor of a rule of thumb, as ``scipy.stats.gaussian_kde`` defines it.

    The kernel covariance is ``factor^2`` times the data's covariance, with
    ``scott``: ``n^(-1 / (dim + 4))`` and ``silverman``: ``(n (dim + 2) / 4)^(-1 / (dim + 4))``.

    Example:
        >>> round(bandwidth_factor("scott", 10000, 1), 6)
        0.158489
    """
    if rule not in BANDWIDTH_RULES:
        raise ValueError(f"bandwidth must be a number > 0 or one of {BANDWIDTH_RULES}, got {rule!r}")
    check_int("n", n, minimum=1)
    if rule == "scott":
        return n ** (-1.0 / (dim + 4))
    return (n * (dim + 2) / 4.0) ** (-1.0 / (dim + 4))


class KDELearner(Generator):
    """A Gaussian kernel density estimate over ``R^dim``, refitted on each round's whole training set.

    The fitted state (the training points and the kernel's Cholesky factor) lives in buffers, so a
    checkpoint carries it and a resumed run continues exactly. Before the first fit the model is
    ``N(0, I)`` (one point at the origin, unit kernel). See the module docstring for what the loop's
    ideal-learner prediction means for this learner.

    Args:
        dim: the dimension of a sample (``data_shape = (dim,)``).
        bandwidth: a number ``h > 0``: the kernel is ``N(0, h^2 I)``; or ``"scott"`` / ``"silverman"``:
            the kernel covariance is ``bandwidth_factor(rule, N, dim)^2`` times the training set's
            covariance (unbiased), as ``scipy.stats.gaussian_kde`` sets it.

    Example:
        >>> import torch
        >>> model = KDELearner(dim=1, bandwidth=0.5)
        >>> model.fit(torch.tensor([[0.0], [10.0]]))
        >>> model.kernel_cov.tolist()
        [[0.25]]
        >>> model.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1])
    """

    points: Tensor
    kernel_cov: Tensor
    kernel_tril: Tensor
    fits: Tensor
    fidelity_hint = ("KDELearner reproduces its training set exactly, blurred by its kernel: a shortfall against "
                     "the ideal learner comes from the bandwidth (set a smaller fixed bandwidth) or from the "
                     "curation's sampling noise (num_slots), not from training.")

    def __init__(self, dim: int, bandwidth: Union[float, Literal["scott", "silverman"]] = "scott") -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        if isinstance(bandwidth, str):
            if bandwidth not in BANDWIDTH_RULES:
                raise ValueError(f"bandwidth must be a number > 0 or one of {BANDWIDTH_RULES}, got {bandwidth!r}")
            self.bandwidth: Union[float, str] = bandwidth
        else:
            self.bandwidth = check_float("bandwidth", bandwidth, minimum=0.0, strict_minimum=True)
        self.data_shape = (self.dim,)
        self.register_buffer("points", torch.zeros(1, self.dim, dtype=torch.float32))
        self.register_buffer("kernel_cov", torch.eye(self.dim, dtype=torch.float64))
        self.register_buffer("kernel_tril", torch.eye(self.dim, dtype=torch.float64))
        self.register_buffer("fits", torch.zeros((), dtype=torch.int64))

    def kernel_covariance(self, x: Tensor) -> Tensor:
        """The kernel covariance ``[dim, dim]`` (float64) that fitting on ``x`` (``[N, dim]``) would set."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=x.device)
        if not isinstance(self.bandwidth, str):
            return self.bandwidth ** 2 * eye
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"{type(self).__name__}: bandwidth {self.bandwidth!r} scales the data's covariance, "
                             f"which needs at least 2 samples, got {n}; give a fixed bandwidth instead")
        _, cov = gaussian_moments(x)
        return bandwidth_factor(self.bandwidth, n, self.dim) ** 2 * cov * (n / (n - 1))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Store ``x`` (float ``[N, dim]``) as the kernels' centres and set the kernel covariance.

        Raises:
            ValueError: ``x`` has the wrong shape, no rows or non-finite values, or (a rule's bandwidth)
                a singular covariance: the error says to give a fixed bandwidth. The model is left unchanged.
        """
        name = type(self).__name__
        if x.dim() != 2 or x.shape[1] != self.dim or x.shape[0] == 0:
            raise ValueError(f"{name}.fit: x must be a non-empty [N, {self.dim}] tensor, got shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}.fit: the training set has non-finite values")
        cov = self.kernel_covariance(x)
        tril, info = torch.linalg.cholesky_ex(cov)
        eig = torch.linalg.eigvalsh(cov)
        if int(info) != 0 or float(eig[0]) <= SINGULAR_RTOL * float(eig[-1]):
            raise ValueError(f"{name}.fit: the covariance of the {x.shape[0]} training samples is singular, so "
                             f"bandwidth {self.bandwidth!r} gives a degenerate kernel; give a fixed bandwidth "
                             "(a number > 0) instead")
        self.points = x.detach().to(dtype=torch.float32).clone()
        self.kernel_cov.copy_(cov)
        self.kernel_tril.copy_(tril)
        self.fits += 1

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The number of stored points changes with each fit: take the checkpoint's shape.
        saved = state_dict.get(prefix + "points")
        if isinstance(saved, Tensor) and saved.shape != self.points.shape:
            self.points = torch.empty_like(saved, device=self.points.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def log_prob(self, x: Tensor, chunk: int = 1 << 22) -> Tensor:
        """The log-density at ``x`` (``[M, dim]``), float64 ``[M]``, in chunks of about ``chunk`` kernel terms."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}.log_prob: x must be [M, {self.dim}], got shape {tuple(x.shape)}")
        pts = self.points.to(torch.float64)
        inv_l = torch.linalg.inv(self.kernel_tril)
        zp = pts @ inv_l.T  # whitened centres
        const = (-torch.log(torch.diagonal(self.kernel_tril)).sum() - 0.5 * self.dim * math.log(2 * math.pi)
                 - math.log(pts.shape[0]))
        rows = max(1, chunk // pts.shape[0])
        out = []
        for part in x.to(pts).split(rows):
            d2 = torch.cdist(part @ inv_l.T, zp).square()
            out.append(torch.logsumexp(-0.5 * d2, dim=1) + const)
        return torch.cat(out) if out else pts.new_zeros(0)

    def loss(self, x: Tensor) -> Tensor:
        """The batch's mean negative log-likelihood (a score to log; nothing trains on it)."""
        return -self.log_prob(x).mean().float()

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """A stored point drawn uniformly, plus ``L z`` with ``z ~ N(0, I)``; both drawn from ``generator``
        on its device. Float32 ``[n, dim]``."""
        check_int("n", n, minimum=0)
        device = torch.device(device) if device is not None else self.points.device
        draw_device = generator.device if generator is not None else self.points.device
        idx = torch.randint(0, self.points.shape[0], (n,), generator=generator, device=draw_device)
        z = torch.randn(n, self.dim, generator=generator, device=draw_device, dtype=torch.float64)
        home = self.points.device
        x = self.points[idx.to(home)].to(torch.float64) + z.to(home) @ self.kernel_tril.T
        return x.to(device=device, dtype=torch.float32)

    def round_metrics(self, reward: nn.Module, source: nn.Module, *, beta: float, num_candidates: int,
                      real_fraction: float, round_idx: int, **_: Any) -> dict[str, float]:
        """The model's exact mean and covariance (the stored points' mean; their maximum-likelihood
        covariance plus the kernel's), as :func:`~lightning_curate.models.gaussian.moment_columns`, and
        ``kernel_cov_trace``, for ``rounds.csv``."""
        mean, cov = gaussian_moments(self.points)
        row = moment_columns(mean, cov + self.kernel_cov.to(cov))
        row["kernel_cov_trace"] = float(self.kernel_cov.trace())
        return row

    def extra_repr(self) -> str:
        """The dimension, bandwidth and number of stored points, for ``print(model)``."""
        return f"dim={self.dim}, bandwidth={self.bandwidth!r}, points={self.points.shape[0]}"
