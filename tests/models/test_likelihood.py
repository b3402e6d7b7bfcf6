"""Log-likelihoods of the generators against closed forms: the Gaussian and KDE learners against scipy,
and the flow's change of variables against a flow whose density is a known Gaussian.

The oracle flow: with the linear path ``x_t = (1 - t) x_0 + t x_1``, ``x_0 ~ N(0, I)`` and
``x_1 ~ N(mu, Sigma)``, the marginal velocity ``E[x_1 - x_0 | x_t = x]`` is, with
``S_t = (1 - t)^2 I + t^2 Sigma``, ``v(x, t) = mu + (t Sigma - (1 - t) I) S_t^{-1} (x - t mu)``;
its flow carries ``N(0, I)`` to ``N(mu, Sigma)`` exactly, so the flow's log-density is the Gaussian's.
Its Jacobian ``J_t = (t Sigma - (1 - t) I) S_t^{-1}`` does not depend on ``x``, so Hutchinson's estimate
with given probes ``e`` is exactly ``log p + tr(M) - mean e^T M e`` with ``M = integral_0^1 J_t dt``.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats
from torch import Tensor, nn

from lightning_curate.models import (
    ExactCategorical,
    FlowMatching,
    GaussianLearner,
    KDELearner,
    flow_log_prob,
    has_log_prob,
)
from lightning_curate.models.likelihood import EXACT_MAX_DIM, divergence_exact, divergence_hutchinson


class GaussianPathVelocity(nn.Module):
    """The exact marginal velocity of the linear path from N(0, I) to N(mu, Sigma), in the data's shape."""

    def __init__(self, mu: Tensor, cov: Tensor, shape: tuple[int, ...]):
        super().__init__()
        lam, q = torch.linalg.eigh(cov.double())
        self.register_buffer("mu", mu.double())
        self.register_buffer("lam", lam)
        self.register_buffer("q", q)
        self.shape = shape
        self.probe = nn.Parameter(torch.zeros(()))  # a parameter, so FlowMatching has something to train

    def coefficients(self, t: Tensor) -> Tensor:
        return (t[:, None] * self.lam - (1 - t[:, None])) / ((1 - t[:, None]) ** 2 + t[:, None] ** 2 * self.lam)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1).double()
        t = t.double()
        centred = (flat - t[:, None] * self.mu) @ self.q
        v = self.mu + (self.coefficients(t) * centred) @ self.q.T
        return v.to(x.dtype).reshape(x.shape)

    def integrated_jacobian(self) -> Tensor:
        """M = integral_0^1 J_t dt, by adaptive quadrature per eigenvalue."""
        a = [integrate.quad(lambda t, lam=float(lam): (t * lam - (1 - t)) / ((1 - t) ** 2 + t * t * lam), 0.0, 1.0,
                            epsabs=1e-13, epsrel=1e-13)[0] for lam in self.lam]
        return self.q @ torch.diag(torch.tensor(a, dtype=torch.float64)) @ self.q.T


def gaussian_case(dim: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    cov = a @ a.T / dim + 0.3 * torch.eye(dim, dtype=torch.float64)  # full, not diagonal
    mu = torch.randn(dim, generator=gen, dtype=torch.float64)
    return mu, cov


def points(mu: Tensor, cov: Tensor, n: int = 64, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mu.numel(), generator=gen, dtype=torch.float64) * 1.5  # tails too
    return mu + z @ torch.linalg.cholesky(cov).T


def gaussian_log_density(x: Tensor, mu: Tensor, cov: Tensor) -> Tensor:
    return torch.as_tensor(stats.multivariate_normal(mu.numpy(), cov.numpy()).logpdf(x.numpy()), dtype=torch.float64)


@pytest.mark.parametrize("solver,steps,tol", [("rk4", 40, 1e-6), ("dopri5", 1, 1e-6), ("midpoint", 400, 1e-4),
                                              ("euler", 1000, 0.1)])
def test_exact_divergence_gives_the_gaussians_log_density(solver, steps, tol):
    mu, cov = gaussian_case(3)
    v = GaussianPathVelocity(mu, cov, (3,))
    x = points(mu, cov)
    got = flow_log_prob(v, x, solver=solver, steps=steps, rtol=1e-10, atol=1e-10, divergence="exact")
    want = gaussian_log_density(x, mu, cov)
    assert got.dtype == torch.float64 and got.shape == (64,)
    assert (got - want).abs().max() < tol
    # The solver's error shrinks with its step: a coarse grid is visibly worse (the tolerance is not slack).
    if solver in ("rk4", "euler"):
        coarse = flow_log_prob(v, x, solver=solver, steps=4 if solver == "rk4" else 10, divergence="exact")
        assert (coarse - want).abs().max() > 10 * tol


def test_hutchinson_with_given_probes_is_exactly_the_estimators_value():
    mu, cov = gaussian_case(3)
    v = GaussianPathVelocity(mu, cov, (3,))
    x = points(mu, cov, n=16)
    m = v.integrated_jacobian()
    exact = flow_log_prob(v, x, solver="rk4", steps=40, divergence="exact")
    est = flow_log_prob(v, x, solver="rk4", steps=40, divergence="hutchinson", probes=3,
                        generator=torch.Generator().manual_seed(7))
    # The probes the call drew: Rademacher, [probes, n, *shape], from the generator in that order.
    e = 2.0 * torch.randint(0, 2, (3, 16, 3), generator=torch.Generator().manual_seed(7)).double() - 1.0
    quad = torch.einsum("kni,ij,knj->kn", e, m, e).mean(0)
    torch.testing.assert_close(est, exact + m.trace() - quad, atol=1e-7, rtol=0)
    assert (est - exact).abs().max() > 0.05  # three probes of a full Jacobian: far from exact


def test_hutchinson_mean_over_many_probes_agrees_with_exact():
    mu, cov = gaussian_case(4)
    v = GaussianPathVelocity(mu, cov, (4,))
    x = points(mu, cov, n=8)
    m = v.integrated_jacobian()
    probes = 2000
    # J does not depend on x, so two rk4 steps integrate both estimates on the same nodes
    exact = flow_log_prob(v, x, solver="rk4", steps=2, divergence="exact")
    est = flow_log_prob(v, x, solver="rk4", steps=2, divergence="hutchinson", probes=probes,
                        generator=torch.Generator().manual_seed(0))
    # Var(e^T M e) = 2 sum_{i != j} M_ij^2 for Rademacher e: the mean of 2000 probes is within 4 sd.
    off = m - torch.diag(m.diagonal())
    sd = math.sqrt(2 * float((off * off).sum()) / probes)
    assert sd > 1e-3 and (est - exact).abs().max() < 4 * sd


def test_flow_matching_log_prob_uses_the_sampling_ode_and_chooses_the_divergence_by_dimension():
    shape = (1, 3, 3)  # image-shaped, 9 dimensions: exact by default
    mu, cov = gaussian_case(9, seed=3)
    fm = FlowMatching(GaussianPathVelocity(mu, cov, shape), list(shape), solver="rk4", steps=40, ema_decay=0.0,
                      sample_batch_size=5)
    assert has_log_prob(fm) and not has_log_prob(nn.Linear(1, 1))
    x = points(mu, cov, n=12).reshape(12, *shape)
    got = fm.log_prob(x)
    torch.testing.assert_close(got, gaussian_log_density(x.reshape(12, -1), mu, cov), atol=1e-6, rtol=0)
    # chunks of sample_batch_size give the one-chunk answer
    fm.sample_batch_size = 100
    torch.testing.assert_close(fm.log_prob(x), got, atol=1e-12, rtol=0)
    hutch = fm.log_prob(x, divergence="hutchinson", probes=2)
    assert not torch.allclose(hutch, got, atol=1e-3)
    assert torch.equal(fm.log_prob(x, divergence="hutchinson", probes=2), hutch)  # seeded: reproducible
    # the model's own samples: the same density
    sample = fm.sample(6, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(fm.log_prob(sample), gaussian_log_density(sample.reshape(6, -1), mu, cov),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"expected points of shape \[n, 1, 3, 3\]"):
        fm.log_prob(x.reshape(12, 9))


def test_above_the_exact_limit_the_default_is_hutchinson():
    dim = EXACT_MAX_DIM + 1
    mu, cov = gaussian_case(dim)
    v = GaussianPathVelocity(mu, cov, (dim,))
    x = points(mu, cov, n=3)
    auto = flow_log_prob(v, x, solver="euler", steps=3)
    assert torch.equal(auto, flow_log_prob(v, x, solver="euler", steps=3, divergence="hutchinson"))
    assert not torch.equal(auto, flow_log_prob(v, x, solver="euler", steps=3, divergence="exact"))


def test_divergences_of_a_known_field():
    w = torch.tensor([[1.0, 2.0], [3.0, -4.0]], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    v = torch.tanh(x) @ w.T  # J = W diag(1 - tanh^2)
    want = ((1 - torch.tanh(x) ** 2) * w.diagonal()).sum(1)
    torch.testing.assert_close(divergence_exact(v, x), want.detach())
    e = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)[:, None, :].expand(2, 5, 2)
    torch.testing.assert_close(divergence_hutchinson(v, x, e), want.detach())  # the two probes cancel J's off-diagonal


def test_bad_arguments_are_named():
    v = GaussianPathVelocity(torch.zeros(2), torch.eye(2), (2,))
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="divergence"):
        flow_log_prob(v, x, divergence="trace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="solver"):
        flow_log_prob(v, x, solver="heun")
    with pytest.raises(ValueError, match="probes"):
        flow_log_prob(v, x, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="batch"):
        flow_log_prob(v, torch.zeros(2))
    assert flow_log_prob(v, x[:0]).shape == (0,)


def test_gaussian_learner_log_prob_is_scipys():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(200, 3, generator=gen) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])
    model = GaussianLearner(dim=3)
    model.fit(data)
    x = torch.randn(10, 3, generator=gen)
    want = stats.multivariate_normal(model.mean.numpy(), model.cov.numpy()).logpdf(x.double().numpy())
    torch.testing.assert_close(model.log_prob(x), torch.as_tensor(want), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match=r"log_prob: x must be \[N, 3\]"):
        model.log_prob(x[:, :2])


def test_kde_learner_log_prob_is_scipys_gaussian_kde():
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(300, 2, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    model = KDELearner(dim=2, bandwidth="scott")
    model.fit(data.float())
    x = torch.randn(20, 2, generator=gen, dtype=torch.float64)
    kde = stats.gaussian_kde(model.points.double().numpy().T, bw_method="scott")
    torch.testing.assert_close(model.log_prob(x, chunk=64), torch.as_tensor(kde.logpdf(x.numpy().T)),
                               atol=1e-9, rtol=0)
    with pytest.raises(ValueError, match=r"log_prob: x must be \[M, 2\]"):
        model.log_prob(x[:, :1])


def test_exact_categorical_log_prob_is_the_log_of_its_frequencies():
    model = ExactCategorical(num_atoms=3)
    model.fit(torch.tensor([[0.0], [2.0], [2.0], [2.0]]))
    got = model.log_prob(torch.tensor([[2.0], [0.0], [1.0]]))
    assert got[:2].tolist() == [math.log(0.75), math.log(0.25)] and got[2] == -math.inf
    assert has_log_prob(model)
    with pytest.raises(ValueError):
        model.log_prob(torch.tensor([[3.0]]))
