"""The log-likelihood of a flow: the ODE's instantaneous change of variables.

A flow ``dx/dt = v(x, t)`` carries the source ``p_0 = N(0, I)`` at ``t = 0`` to the model
``p_1`` at ``t = 1``, and along a path the log-density changes by the velocity's divergence,
``d/dt log p_t(x_t) = -div v(x_t, t)`` (Chen et al., 2018, "Neural ODEs"). So integrating a data
point backward, from ``t = 1`` to ``t = 0``, while accumulating the divergence gives its exact
log-likelihood up to the solver's error::

    log p_1(x_1) = log N(x_0; 0, I) - integral_0^1 div v(x_t, t) dt

The divergence is the trace of the velocity's Jacobian in ``x``: :func:`flow_log_prob` computes
it exactly (one backward pass per dimension, for low-dimensional data) or estimates it with
Hutchinson's estimator ``E[e^T J e]`` over Rademacher probes ``e`` (one backward pass per probe,
for images; Grathwohl et al., 2019, "FFJORD"). The probes are drawn once per point and held
fixed along its path, so the estimate of the whole integral is unbiased, and the draw comes from
a seeded generator, so a call is reproducible.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import torch
from torch import Tensor
from torchdiffeq import odeint

from lightning_curate.utils.validation import check_choice, check_int

__all__ = ["DIVERGENCES", "EXACT_MAX_DIM", "SOLVERS", "divergence_exact", "divergence_hutchinson", "flow_log_prob",
           "standard_normal_log_prob"]

DIVERGENCES = ("exact", "hutchinson")
# The ODE solvers of sampling (FlowMatching) and of the likelihood: fixed-step, then adaptive.
SOLVERS = ("euler", "midpoint", "rk4", "dopri5")
# The automatic choice takes the exact divergence up to this many dimensions (one backward pass each).
EXACT_MAX_DIM = 32
Velocity = Callable[[Tensor, Tensor], Tensor]


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """``log N(x; 0, I)`` per row of ``x`` ``[n, *shape]``: ``[n]``.

    Example:
        >>> round(float(standard_normal_log_prob(torch.zeros(1, 2))[0]), 6)  # -log(2 pi)
        -1.837877
    """
    flat = x.reshape(x.shape[0], -1)
    return -0.5 * (flat * flat).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)


def divergence_exact(v: Tensor, x: Tensor) -> Tensor:
    """The trace of ``dv/dx`` per row, exactly: one backward pass per dimension.

    Args:
        v: the velocity ``[n, *shape]``, computed from ``x`` with grad enabled.
        x: the points ``[n, *shape]`` (``requires_grad``).

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> divergence_exact(2.0 * x, x).tolist()  # div of 2x in the plane
        [4.0, 4.0, 4.0]
    """
    flat_v = v.reshape(v.shape[0], -1)
    div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        div = div + grad.reshape(grad.shape[0], -1)[:, i]
    return div


def divergence_hutchinson(v: Tensor, x: Tensor, probes: Tensor) -> Tensor:
    """Hutchinson's estimate of the trace of ``dv/dx`` per row: the mean of ``e^T (dv/dx) e`` over the probes.

    Args:
        v: the velocity ``[n, *shape]``, computed from ``x`` with grad enabled.
        x: the points ``[n, *shape]`` (``requires_grad``).
        probes: ``[m, n, *shape]``, one set of ``m`` probes per row (Rademacher: unbiased, and of
            the smallest variance among independent-coordinate probes).

    Example:
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> e = torch.ones(1, 3, 2)
        >>> divergence_hutchinson(2.0 * x, x, e).tolist()  # a diagonal Jacobian: exact for any sign probe
        [4.0, 4.0, 4.0]
    """
    total = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for e in probes:
        (vjp,) = torch.autograd.grad((v * e).sum(), x, retain_graph=True)
        total = total + (vjp * e).reshape(e.shape[0], -1).sum(1)
    return total / probes.shape[0]


def _rademacher(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    draw = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2 * draw - 1).to(device=like.device, dtype=like.dtype)


def flow_log_prob(
    velocity: Velocity,
    x: Tensor,
    *,
    solver: str = "euler",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: Optional[Literal["exact", "hutchinson"]] = None,
    probes: int = 1,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """The log-density at ``x`` of the flow of ``velocity`` from ``N(0, I)``: ``[n]``, in ``x``'s dtype.

    Integrates ``(x, L)`` backward in time, from the data at ``t = 1`` to the source at ``t = 0``,
    with ``dx/dt = v(x, t)`` and ``L`` the integral of ``div v`` along the path, then returns
    ``log N(x_0; 0, I) - L``. The grid is the sampler's (``steps`` equal steps, reversed) for the
    fixed-step solvers; ``dopri5`` controls the error of the augmented state ``(x, L)``.

    Args:
        velocity: called as ``velocity(x_t, t)`` with ``t`` of shape ``[n]``; differentiable in ``x_t``, and
            each row's output may depend on its own row only (a network in eval mode: batch statistics
            would mix the rows' divergences).
        x: the points ``[n, *shape]``.
        solver: ``euler``, ``midpoint``, ``rk4`` (``steps`` fixed steps) or ``dopri5`` (adaptive).
        steps: the fixed-step solvers' number of steps (``>= 1``).
        rtol: relative tolerance of ``dopri5``.
        atol: absolute tolerance of ``dopri5``.
        divergence: ``"exact"`` (the Jacobian's trace, one backward pass per dimension),
            ``"hutchinson"`` (the estimator, one backward pass per probe), or ``None``: exact up to
            ``EXACT_MAX_DIM`` dimensions, Hutchinson beyond.
        probes: Rademacher probes per point for Hutchinson (``>= 1``), held fixed along the path.
        generator: the source of the probes (drawn on its device, then moved); default a CPU
            generator seeded with 0, so the estimate is reproducible. Unused by ``"exact"``.

    Example:
        The flow of ``v(x, t) = x`` scales the source by ``e``, so its density is ``N(0, e^2 I)``::

            >>> x = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
            >>> lp = flow_log_prob(lambda y, t: y, x, solver="rk4", steps=20)
            >>> expected = -0.5 * (x / math.e).square().sum() - 2 - math.log(2 * math.pi)
            >>> abs(float(lp[0]) - float(expected)) < 1e-6
            True
    """
    solver = check_choice("solver", solver, SOLVERS)
    steps = check_int("steps", steps, minimum=1)
    probes = check_int("probes", probes, minimum=1)
    dim = x[0].numel() if x.dim() > 0 and x.shape[0] > 0 else 0
    if divergence is None:
        divergence = "exact" if dim <= EXACT_MAX_DIM else "hutchinson"
    divergence = check_choice("divergence", divergence, DIVERGENCES)
    if x.dim() < 2:
        raise ValueError(f"x must be a batch [n, *shape], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if x.shape[0] == 0:
        return x.new_zeros(0)
    if divergence == "hutchinson":
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        e = _rademacher((probes, *x.shape), gen, x)

    def field(s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        # Reversed time s = 1 - t: dx/ds = -v(x, 1 - s), dL/ds = div v(x, 1 - s).
        y = state[0].detach()
        t = (1.0 - s).to(y.dtype).expand(y.shape[0])
        with torch.enable_grad():
            y.requires_grad_(True)
            v = velocity(y, t).to(y.dtype)
            div = divergence_exact(v, y) if divergence == "exact" else divergence_hutchinson(v, y, e)
        return -v.detach(), div.detach()

    state = (x.detach(), x.new_zeros(x.shape[0]))
    grid = torch.linspace(0.0, 1.0, steps + 1, device=x.device, dtype=x.dtype)
    if solver == "euler":
        for s0, s1 in zip(grid[:-1], grid[1:]):
            dx, dl = field(s0, state)
            state = (state[0] + (s1 - s0) * dx, state[1] + (s1 - s0) * dl)
    elif solver == "dopri5":
        span = grid[[0, -1]]
        x0, l0 = odeint(field, state, span, method="dopri5", rtol=rtol, atol=atol)
        state = (x0[-1], l0[-1])
    else:
        x0, l0 = odeint(field, state, grid[[0, -1]], method=solver, options={"grid_constructor": lambda *_: grid})
        state = (x0[-1], l0[-1])
    return standard_normal_log_prob(state[0]) - state[1]
