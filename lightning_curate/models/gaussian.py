"""The exact Gaussian learner: maximum-likelihood mean and full covariance, fitted in closed form.

"Collapse or Thrive?" (Kazdan, Schaeffer et al., ICML 2025) studies the
replace / accumulate workflows with learners whose refit is exact; a Gaussian
fitted by maximum likelihood is the simplest continuous one. Here it is a
closed-form :class:`~lightning_curate.models.generator.Generator`: the loop
calls :meth:`GaussianLearner.fit` once per round with the round's whole
training set, and no optimizer is made.

What the loop's ideal-learner prediction means for it: the ideal learner's next
model is the law of the round's training set (``rho p_data + (1 - rho) q_t``,
docs/THEORY.md section 2). A Gaussian cannot represent that law; its maximum-likelihood
fit is the law's *moment projection* (the Gaussian closest in ``KL(law || Gaussian)``),
so the ideal learner's mean and covariance are what it predicts exactly: the fitted
mean is an unbiased estimate of the law's mean, the fitted covariance estimates its
covariance (times ``(N - 1) / N``). Predictions of the reward or the mode shares,
which depend on the whole law, hold for the Gaussian only through these two moments.
:func:`gaussian_moments` with the weights ``H`` of
:func:`lightning_curate.theory.empirical_curation_weights` gives the exact moments of
the curated law of a round's candidates.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_curate.models.generator import Generator
from lightning_curate.utils.validation import check_float, check_int

__all__ = ["MAX_COORDINATE_COLUMNS", "SINGULAR_RTOL", "GaussianLearner", "gaussian_moments", "moment_columns"]

# Per-coordinate columns of round_metrics up to this dimension (beyond it, only the summaries).
MAX_COORDINATE_COLUMNS = 8
# A covariance whose smallest eigenvalue is below this fraction of its largest is refused as singular:
# points on a hyperplane give a rank-deficient covariance up to float64 rounding (about 1e-16 relative).
SINGULAR_RTOL = 1e-12


def gaussian_moments(x: Tensor, weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The maximum-likelihood mean and covariance of (weighted) points, in float64.

    Args:
        x: points ``[N, d]``.
        weights: masses ``[N]`` (``>= 0``, positive sum; normalised), default uniform.

    Returns:
        ``(mean [d], cov [d, d])``: ``sum_i w_i x_i`` and ``sum_i w_i (x_i - mean)(x_i - mean)^T``
        (the biased, maximum-likelihood covariance: ``torch.cov(x.T, correction=0)`` for uniform weights).

    Example:
        >>> import torch
        >>> mean, cov = gaussian_moments(torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> mean.tolist(), cov.tolist()
        ([1.0, 2.0], [[1.0, 1.0], [1.0, 1.0]])
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty [N, d] tensor of points, got shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64)
    if weights is None:
        w = torch.full((x64.shape[0],), 1.0 / x64.shape[0], dtype=torch.float64, device=x64.device)
    else:
        w = weights.detach().to(device=x64.device, dtype=torch.float64).reshape(-1)
        if w.numel() != x64.shape[0] or (w < 0).any() or not float(w.sum()) > 0:
            raise ValueError(f"weights must be {x64.shape[0]} masses >= 0 with a positive sum, got shape "
                             f"{tuple(weights.shape)}")
        w = w / w.sum()
    mean = w @ x64
    centred = x64 - mean
    cov = (centred * w[:, None]).T @ centred
    return mean, (cov + cov.T) / 2


def moment_columns(mean: Tensor, cov: Tensor) -> dict[str, float]:
    """``rounds.csv`` columns of a model's exact mean and covariance.

    ``model_cov_trace`` and ``model_cov_logdet`` always; ``model_mean_<i>`` and ``model_var_<i>`` for
    each coordinate up to ``MAX_COORDINATE_COLUMNS`` dimensions. Under the replace workflow the trace
    shrinks round after round (collapse); under accumulate it stays.

    Example:
        >>> moment_columns(torch.zeros(1), torch.eye(1))
        {'model_cov_trace': 1.0, 'model_cov_logdet': 0.0, 'model_mean_0': 0.0, 'model_var_0': 1.0}
    """
    cov = cov.detach().double().cpu()
    row = {"model_cov_trace": float(cov.trace()), "model_cov_logdet": float(torch.linalg.slogdet(cov)[1])}
    if mean.numel() <= MAX_COORDINATE_COLUMNS:
        for i, (m, v) in enumerate(zip(mean.tolist(), cov.diagonal().tolist())):
            row[f"model_mean_{i}"], row[f"model_var_{i}"] = m, v
    return row


class GaussianLearner(Generator):
    """A Gaussian ``N(mean, cov)`` on ``R^dim`` whose training is exact maximum likelihood.

    :meth:`fit` sets the mean to the training set's mean and the covariance to its
    maximum-likelihood (biased) covariance plus ``ridge * I``, in float64 buffers, so a checkpoint
    carries the fitted model and a resumed run continues exactly. Before the first fit the model
    is ``N(0, I)``. See the module docstring for what the loop's ideal-learner prediction
    means for this learner.

    Args:
        dim: the dimension of a sample (``data_shape = (dim,)``).
        ridge: added to the covariance's diagonal at each fit. ``0`` (default) is the exact MLE, which
            needs at least ``dim + 1`` points in general position; a fit whose covariance is singular
            then raises a ``ValueError`` that suggests a ``ridge > 0``.

    Example:
        >>> import torch
        >>> model = GaussianLearner(dim=2)
        >>> model.fit(torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
        >>> model.mean.tolist(), model.cov.tolist()
        ([1.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
        >>> model.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
    """

    mean: Tensor
    cov: Tensor
    scale_tril: Tensor
    fits: Tensor
    fidelity_hint = ("GaussianLearner is an exact learner of the training set's mean and covariance: it cannot "
                     "follow a multimodal curated law, so a shortfall against the ideal learner's reward or mode "
                     "shares is the Gaussian family's, not training's; compare its mean and covariance instead.")

    def __init__(self, dim: int, ridge: float = 0.0) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=1)
        self.ridge = check_float("ridge", ridge, minimum=0.0)
        self.data_shape = (self.dim,)
        self.register_buffer("mean", torch.zeros(self.dim, dtype=torch.float64))
        self.register_buffer("cov", torch.eye(self.dim, dtype=torch.float64))
        self.register_buffer("scale_tril", torch.eye(self.dim, dtype=torch.float64))  # cov = L L^T
        self.register_buffer("fits", torch.zeros((), dtype=torch.int64))  # one per round in the loop

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set the model to the maximum-likelihood Gaussian of ``x`` (float ``[N, dim]``), plus ``ridge * I``.

        Raises:
            ValueError: ``x`` has the wrong shape, fewer than 2 points, non-finite values, or a singular
                covariance (smallest eigenvalue at most ``SINGULAR_RTOL`` times the largest: fewer than
                ``dim + 1`` distinct points, or points on a hyperplane); the model is left unchanged.
        """
        name = type(self).__name__
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name}.fit: x must be [N, {self.dim}], got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"{name}.fit: a maximum-likelihood covariance needs at least 2 samples, got "
                             f"{x.shape[0]}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}.fit: the training set has non-finite values")
        mean, cov = gaussian_moments(x)
        cov = cov + self.ridge * torch.eye(self.dim, dtype=cov.dtype, device=cov.device)
        tril, info = torch.linalg.cholesky_ex(cov)
        eig = torch.linalg.eigvalsh(cov)
        if int(info) != 0 or float(eig[0]) <= SINGULAR_RTOL * float(eig[-1]):
            rank = int((eig > SINGULAR_RTOL * eig[-1]).sum())
            raise ValueError(f"{name}.fit: the covariance of the {x.shape[0]} training samples is singular (rank "
                             f"{rank} < dim {self.dim}: too few samples, or samples on a hyperplane); set "
                             "ridge > 0 (e.g. ridge: 1e-6) to add it to the diagonal")
        self.mean.copy_(mean)
        self.cov.copy_(cov)
        self.scale_tril.copy_(tril)
        self.fits += 1

    def log_prob(self, x: Tensor) -> Tensor:
        """The model's log-density at ``x`` (``[N, dim]``), float64 ``[N]``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__}.log_prob: x must be [N, {self.dim}], got shape {tuple(x.shape)}")
        d = (x.to(self.mean) - self.mean).T
        z = torch.linalg.solve_triangular(self.scale_tril, d, upper=False)
        half_log_det = torch.log(torch.diagonal(self.scale_tril)).sum()
        return -0.5 * (z * z).sum(0) - half_log_det - 0.5 * self.dim * math.log(2 * math.pi)

    def loss(self, x: Tensor) -> Tensor:
        """The batch's mean negative log-likelihood (a score to log; nothing trains on it)."""
        return -self.log_prob(x).mean().float()

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device | str] = None) -> Tensor:
        """``mean + L z``, ``z ~ N(0, I)`` drawn (float64) from ``generator`` on its device; float32 ``[n, dim]``."""
        check_int("n", n, minimum=0)
        device = torch.device(device) if device is not None else self.mean.device
        draw_device = generator.device if generator is not None else self.mean.device
        z = torch.randn(n, self.dim, generator=generator, device=draw_device, dtype=torch.float64)
        x = self.mean + z.to(self.mean.device) @ self.scale_tril.T
        return x.to(device=device, dtype=torch.float32)

    def round_metrics(self, reward: nn.Module, source: nn.Module, *, beta: float, num_candidates: int,
                      real_fraction: float, round_idx: int, **_: Any) -> dict[str, float]:
        """The fitted model's exact mean and covariance (:func:`moment_columns`), for ``rounds.csv``."""
        return moment_columns(self.mean, self.cov)

    def extra_repr(self) -> str:
        """The dimension and ridge, for ``print(model)``."""
        return f"dim={self.dim}, ridge={self.ridge}"
