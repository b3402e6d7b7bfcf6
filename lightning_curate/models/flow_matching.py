"""The generative models that the curated retraining loop trains and samples.

The loop needs only three things from a model, gathered in :class:`Generator`:
a training loss on a batch of data, reproducible sampling, and a hook after
each optimizer step (for weight averaging). :class:`FlowMatching` is the
built-in model: conditional flow matching with a linear interpolant, sampled by
integrating the learned velocity field with ``torchdiffeq``.

These are plain ``nn.Module``\\ s, with no Lightning in them, so that custom
trainers can use them as they are.
"""

import warnings
from contextlib import nullcontext
from typing import Callable, Optional

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchdiffeq import odeint

from lightning_curate.models.generator import Generator
from lightning_curate.models.likelihood import SOLVERS, flow_log_prob
from lightning_curate.utils.compat import foreach_copy_, foreach_lerp_
from lightning_curate.utils.validation import check_choice

__all__ = ["AUTOCAST_DTYPES", "EMA_RESETS", "FlowMatching", "SOLVERS", "ot_permutation"]

EMA_RESETS = ("never", "round")
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def ot_permutation(x0: Tensor, x1: Tensor) -> Tensor:
    """Minibatch optimal-transport pairing: ``x1[perm]`` is the partner of ``x0``, row by row.

    Solves the exact assignment (``ot.emd``, uniform marginals) on the squared
    Euclidean cost between the flattened batches. Pairing source and data this
    way straightens the flow's paths (Tong et al., 2023), so fewer ODE steps
    are needed at sampling time.
    """
    if x0.shape[0] != x1.shape[0]:
        raise ValueError(f"x0 and x1 must have the same batch size, got {x0.shape[0]} and {x1.shape[0]}")
    import ot  # POT and its SciPy parts load only for a run that pairs by OT (0.4 s of every start otherwise)

    n = x0.shape[0]
    # Float64 on the CPU: the exact solver works there, and ties in float32 costs
    # could otherwise turn an optimal plan into a non-permutation.
    flat0 = x0.detach().reshape(n, -1).double().cpu()
    flat1 = x1.detach().reshape(n, -1).double().cpu()
    cost = torch.cdist(flat0, flat1) ** 2
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    plan = ot.emd(uniform, uniform, cost, numItermax=max(100_000, 50 * n * n))
    perm = plan.argmax(dim=1)
    if not torch.equal(perm.sort().values, torch.arange(n)):
        raise RuntimeError(f"ot.emd did not return a permutation for a batch of {n}; use a smaller batch size")
    return perm.to(x1.device)


class FlowMatching(Generator):
    """Conditional flow matching with the linear (rectified-flow) interpolant.

    Training draws a source ``x0 ~ N(0, I)`` and a time ``t ~ U(0, 1)`` for each
    data point ``x1``, forms ``x_t = (1 - t) x0 + t x1 (+ sigma * eps)`` and
    regresses ``velocity(x_t, t)`` on ``x1 - x0`` (mean squared error over all
    elements). Sampling integrates ``dx/dt = velocity(x, t)`` from ``t = 0`` to 1.

    Args:
        velocity: network called as ``velocity(x_t, t)`` with ``t`` of shape ``[B]``.
        data_shape: shape of one sample, e.g. ``[2]`` or ``[1, 8, 8]``.
        solver: ``euler``, ``midpoint``, ``rk4`` (fixed ``steps``) or ``dopri5`` (adaptive).
        steps: number of steps of the fixed-step solvers.
        rtol: relative tolerance of ``dopri5``.
        atol: absolute tolerance of ``dopri5``.
        sigma: standard deviation of Gaussian noise added to ``x_t`` in training.
        ot_pairing: pair ``x0`` with ``x1`` by minibatch optimal transport.
        ema_decay: decay of the exponential moving average of the velocity
            weights used for sampling; 0 disables it.
        ema_reset: ``never`` (one average over the whole run) or ``round``: the
            average restarts from the live weights when each curated round's
            training begins, so the sampled model holds no memory of earlier
            rounds' data (with ``never`` it keeps ``ema_decay ** steps`` of it).
        sample_batch_size: samples integrated together, which bounds memory.
        compile: sample with ``torch.compile`` of the velocity network. The
            network is compiled lazily, on the first ``sample`` call, and
            cached (one compiled wrapper for the live network, one for the
            EMA copy); the registered modules are untouched, so ``state_dict``
            keys and checkpoints are the same with or without it. Training
            (``loss``) is never compiled.
        autocast: ``"bfloat16"`` or ``"float16"``: run the velocity network
            under ``torch.autocast`` of that dtype while sampling, on CUDA only
            (the ODE state stays float32). Off by default; ignored, with one
            warning, on other devices.
    """

    fidelity_hint = ("For FlowMatching: train more per round (RetrainingLoop epochs_per_round, or a larger lr), "
                     "shorten the EMA memory (ema_decay closer to 0, or ema_reset: round); `lightning-curate "
                     "diagnose solver RUN_DIR` measures how much of the lag is the ODE sampler's (solver and steps).")
    # Class-level defaults, so a FlowMatching pickled before these switches existed still samples.
    compile_sampling: bool = False
    autocast: Optional[str] = None
    _autocast_warned: bool = False

    def __init__(
        self,
        velocity: nn.Module,
        data_shape: list[int],
        solver: str = "euler",
        steps: int = 50,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        sigma: float = 0.0,
        ot_pairing: bool = False,
        ema_decay: float = 0.999,
        ema_reset: str = "never",
        sample_batch_size: int = 65536,
        compile: bool = False,
        autocast: Optional[str] = None,
    ) -> None:
        super().__init__()
        shape: tuple[int, ...] = tuple(data_shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"data_shape must be a non-empty list of positive ints, got {list(shape)}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if rtol <= 0:
            raise ValueError(f"rtol must be > 0, got {rtol}")
        if atol <= 0:
            raise ValueError(f"atol must be > 0, got {atol}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if sample_batch_size < 1:
            raise ValueError(f"sample_batch_size must be >= 1, got {sample_batch_size}")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be true or false, got {compile!r}")
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be null or one of {sorted(AUTOCAST_DTYPES)}, got {autocast!r}")
        self.velocity = velocity
        self.data_shape = shape
        self.solver = solver
        self.steps = steps
        self.rtol = rtol
        self.atol = atol
        self.sigma = sigma
        self.ot_pairing = ot_pairing
        self.ema_decay = ema_decay
        self.ema_reset = check_choice("ema_reset", ema_reset, EMA_RESETS)
        self.sample_batch_size = sample_batch_size
        # Not `self.compile`: that would hide nn.Module.compile().
        self.compile_sampling = compile
        self.autocast = autocast
        # Compiled wrappers of the sampling networks, keyed by role ("live", "ema"):
        # a plain dict, so they are never registered as submodules (state_dict unchanged).
        self._compiled: dict[str, tuple[nn.Module, Callable[..., Tensor]]] = {}
        self._autocast_warned = False
        self.ema: Optional[AveragedModel] = None
        self._ema_groups: Optional[list] = None  # (averaged, live, floating) tensor lists, see update_ema
        self._ema_started: Optional[bool] = None  # None: read n_averaged
        if ema_decay > 0:
            # A submodule, so it follows .to(device) and is saved in state_dict;
            # frozen, so optimizers and parameter counts ignore it.
            self.ema = AveragedModel(velocity, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    def loss(self, x: Tensor) -> Tensor:
        """Flow-matching loss on data ``x``; draws ``x0``, then ``t``, then the noise, from the global RNG."""
        if tuple(x.shape[1:]) != self.data_shape:
            expected = ", ".join(map(str, self.data_shape))
            raise ValueError(f"expected a batch of shape [B, {expected}], got {list(x.shape)}")
        x1 = x
        x0 = torch.randn_like(x1)
        if self.ot_pairing:
            x1 = x1[ot_permutation(x0, x1)]
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        t_ = t.reshape(-1, *([1] * len(self.data_shape)))
        x_t = (1 - t_) * x0 + t_ * x1
        if self.sigma > 0:
            x_t = x_t + self.sigma * torch.randn_like(x_t)
        return torch.mean((self.velocity(x_t, t) - (x1 - x0)) ** 2)

    def update_ema(self) -> None:
        """Move the averaged weights toward the live ones: ``ema = decay * ema + (1 - decay) * live``.

        The first call copies the live weights. The result is ``AveragedModel.update_parameters``'s,
        bit for bit (the same ``torch._foreach_lerp_`` on parameters and buffers), without its
        per-call list building, grouping and device sync: the tensor lists are built once (again
        after ``.to()`` or a checkpoint load) and whether averaging has started is kept in Python.
        """
        ema = self.ema
        if ema is None:
            return
        groups = self._ema_groups
        if groups is None:
            groups = self._ema_groups = _ema_tensor_groups(ema.module, self.velocity)
            if groups is None:  # live and averaged weights on different devices: the general path
                ema.update_parameters(self.velocity)
                self._ema_started = True
                return
        if self._ema_started is None:
            self._ema_started = bool(ema.n_averaged.item() > 0)
        with torch.no_grad():
            for averaged, live, floating in groups:
                if not self._ema_started:
                    foreach_copy_(averaged, live)
                elif floating:
                    foreach_lerp_(averaged, live, 1.0 - self.ema_decay)
                else:  # get_ema_multi_avg_fn's rule for integer buffers
                    for a, b in zip(averaged, live):
                        a.copy_(a * self.ema_decay + b * (1.0 - self.ema_decay))
            ema.n_averaged += 1
        if not self._ema_started:
            self._ema_started = True

    @torch.no_grad()
    def start_round(self, round_idx: int) -> None:
        """With ``ema_reset: round``, restart the average from the live weights (see the class)."""
        if self.ema is None or self.ema_reset != "round":
            return
        for averaged, live in zip(self.ema.module.state_dict().values(), self.velocity.state_dict().values()):
            averaged.copy_(live)
        if int(self.ema.n_averaged) == 0:
            self.ema.n_averaged += 1  # the copy is an average of one: sample from it from now on
            self._ema_started = None

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() replace buffers (and may replace parameters): rebuild the lists.
        self._ema_groups = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        # A checkpoint sets n_averaged (and load_state_dict(assign=True) replaces tensors): look again.
        self._ema_started, self._ema_groups = None, None
        return super()._load_from_state_dict(*args, **kwargs)

    @property
    def sampling_velocity(self) -> nn.Module:
        """The network sampling integrates: the EMA once it has been updated, else the live one."""
        if self.ema is not None and self.ema.n_averaged.item() > 0:
            return self.ema.module
        return self.velocity

    def _sampling_callable(self, net: nn.Module) -> Callable[..., Tensor]:
        """``net`` itself, or its cached ``torch.compile`` wrapper when ``compile`` is on."""
        if not self.compile_sampling:
            return net
        role = "ema" if self.ema is not None and net is self.ema.module else "live"
        cached = self._compiled.get(role)
        if cached is None or cached[0] is not net:
            cached = (net, torch.compile(net))
            self._compiled[role] = cached
        return cached[1]

    def _autocast_context(self, device: torch.device):
        """``torch.autocast`` for sampling on CUDA when ``autocast`` is set; otherwise nothing."""
        if self.autocast is None:
            return nullcontext()
        if device.type != "cuda":
            if not self._autocast_warned:
                warnings.warn(f"FlowMatching(autocast={self.autocast!r}) applies to CUDA only; sampling on "
                              f"{device.type} runs in float32", UserWarning, stacklevel=4)  # the caller of sample()
                self._autocast_warned = True
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=AUTOCAST_DTYPES[self.autocast])

    def __getstate__(self):
        # Compiled wrappers do not pickle or deepcopy; they are rebuilt on the next sample.
        state = dict(super().__getstate__())
        state["_compiled"] = {}
        state["_ema_groups"] = None
        return state

    # no_grad rather than inference_mode: the samples become training data, and
    # inference tensors cannot be saved for backward or edited in place later.
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
    ) -> Tensor:
        """``n`` float32 samples of shape ``[n, *data_shape]``, integrated in chunks of ``sample_batch_size``.

        The source noise is drawn at once on the generator's device and then
        moved, so a seeded CPU generator gives the same noise on every device
        and the result does not depend on the chunk size (exactly so for the
        fixed-step solvers; ``dopri5`` adapts its steps to each chunk).
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        net = self.sampling_velocity
        device = torch.device(device) if device is not None else _module_device(net)
        noise_device = generator.device if generator is not None else device
        x = torch.randn(n, *self.data_shape, generator=generator, device=noise_device).to(device)
        was_training = net.training
        net.eval()
        call = self._sampling_callable(net)
        try:
            with self._autocast_context(device):
                for start in range(0, n, self.sample_batch_size):
                    chunk = slice(start, start + self.sample_batch_size)
                    x[chunk] = self._integrate(call, x[chunk])
        finally:
            net.train(was_training)
        return x.float()

    def log_prob(self, x: Tensor, *, divergence: Optional[str] = None, probes: int = 1,
                 generator: Optional[torch.Generator] = None) -> Tensor:
        """The model's log-density at ``x`` (``[n, *data_shape]``): ``[n]`` on ``x``'s device.

        The instantaneous change of variables of the sampling ODE
        (:func:`~lightning_curate.models.likelihood.flow_log_prob`), with the network sampling uses
        (the EMA once averaged), its solver, steps and tolerances, integrated backward from the data
        to the source in chunks of ``sample_batch_size``. Float32 ``x`` is computed in float32;
        pass float64 for a tighter value.

        Args:
            x: the points.
            divergence: ``"exact"``, ``"hutchinson"`` or ``None`` (exact in low dimension; see
                :func:`~lightning_curate.models.likelihood.flow_log_prob`).
            probes: Hutchinson probes per point.
            generator: the probes' source (default: seeded with 0).
        """
        if tuple(x.shape[1:]) != self.data_shape:
            expected = ", ".join(map(str, self.data_shape))
            raise ValueError(f"log_prob: expected points of shape [n, {expected}], got {list(x.shape)}")
        net = self.sampling_velocity
        device = _module_device(net)
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        was_training = net.training
        net.eval()
        try:
            parts = [flow_log_prob(net, chunk.to(device), solver=self.solver, steps=self.steps, rtol=self.rtol,
                                   atol=self.atol, divergence=divergence, probes=probes,  # type: ignore[arg-type]
                                   generator=gen).to(x.device)
                     for chunk in x.split(self.sample_batch_size)]
        finally:
            net.train(was_training)
        return torch.cat(parts) if parts else x.new_zeros(0)

    def _integrate(self, net: Callable[..., Tensor], x0: Tensor) -> Tensor:
        def field(t: Tensor, x: Tensor) -> Tensor:
            # float32 state under autocast: the solver's sums stay in full precision.
            return net(x, t.expand(x.shape[0])).to(x.dtype)

        span = torch.tensor([0.0, 1.0], device=x0.device, dtype=x0.dtype)
        if self.solver == "dopri5":
            return odeint(field, x0, span, method="dopri5", rtol=self.rtol, atol=self.atol)[-1]
        # An explicit grid of exactly `steps` steps: torchdiffeq's
        # options={"step_size": 1 / steps} adds a spurious extra step for some
        # step counts (float rounding in its ceil), e.g. steps=61.
        grid = torch.linspace(0.0, 1.0, self.steps + 1, device=x0.device, dtype=x0.dtype)
        if self.solver == "euler":
            # torchdiffeq's Euler step, bit for bit (x + dt * v(x, t0) on the same grid),
            # without its per-step bookkeeping.
            x = x0
            for t0, t1 in zip(grid[:-1], grid[1:]):
                x = x + (t1 - t0) * field(t0, x)
            return x
        return odeint(field, x0, span, method=self.solver, options={"grid_constructor": lambda *_: grid})[-1]


def _ema_tensor_groups(averaged: nn.Module, live: nn.Module) -> Optional[list[tuple[list[Tensor], list[Tensor], bool]]]:
    """Parameters and buffers of the two networks, paired and grouped by (device, dtype).

    ``None`` when a pair is on different devices or the two do not match (``update_ema`` then
    takes ``AveragedModel``'s general path).
    """
    pairs_a = [*averaged.parameters(), *averaged.buffers()]
    pairs_b = [*live.parameters(), *live.buffers()]
    if len(pairs_a) != len(pairs_b):
        return None
    groups: dict[tuple, tuple[list[Tensor], list[Tensor], bool]] = {}
    for a, b in zip(pairs_a, pairs_b):
        if a.device != b.device or a.shape != b.shape:
            return None
        floating = a.is_floating_point() or a.is_complex()
        key = (a.device, a.dtype, b.dtype)
        groups.setdefault(key, ([], [], floating))
        groups[key][0].append(a.detach())
        groups[key][1].append(b.detach())
    return list(groups.values())


def _module_device(module: nn.Module) -> torch.device:
    """Where a module's weights live (the CPU for a module without any)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
