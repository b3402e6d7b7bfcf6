"""Tests of the flow-matching generator and its velocity networks (CPU, seeded)."""

import copy
import math
import warnings

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from lightning_curate.models.flow_matching import SOLVERS, FlowMatching, ot_permutation
from lightning_curate.models.generator import Generator
from lightning_curate.models.mlp import MLPVelocity, SinusoidalTimeEmbedding

FIXED_STEP = ("euler", "midpoint", "rk4")


class Constant(nn.Module):
    """dx/dt = c: every solver must land on x0 + c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.full_like(x, self.c)


class Linear(nn.Module):
    """dx/dt = a x: each method's one-step amplification factor is known in closed form."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.a * x


class Recorder(nn.Module):
    """Returns ``x + t`` and remembers what it was called with and in which mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Tensor, Tensor, bool]] = []

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls.append((x.clone(), t.clone(), self.training))
        return x + t.reshape(-1, *([1] * (x.dim() - 1)))


def flow(velocity: nn.Module, data_shape=(2,), **kwargs) -> FlowMatching:
    kwargs.setdefault("ema_decay", 0.0)
    return FlowMatching(velocity, list(data_shape), **kwargs)



def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- interface


def test_generator_interface_methods_say_what_to_implement():
    base = Generator()
    with pytest.raises(NotImplementedError, match="loss"):
        base.loss(torch.zeros(1, 2))
    with pytest.raises(NotImplementedError, match="sample"):
        base.sample(1)
    assert base.update_ema() is None


# ----------------------------------------------------------------- loss


@pytest.mark.parametrize("data_shape", [(2,), (1, 4, 4)])
def test_loss_is_finite_scalar_with_gradients(data_shape):
    torch.manual_seed(0)
    dim = math.prod(data_shape)
    model = flow(MLPVelocity(dim=dim, hidden=16, depth=2), data_shape)
    loss = model.loss(torch.randn(8, *data_shape))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.velocity.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_loss_with_zero_velocity_is_mean_squared_displacement():
    x1 = torch.randn(32, 2, generator=seeded(1))
    model = flow(Constant(0.0))
    torch.manual_seed(0)
    loss = model.loss(x1)
    torch.manual_seed(0)
    x0 = torch.randn_like(x1)
    torch.testing.assert_close(loss, ((x1 - x0) ** 2).mean())


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_loss_regresses_on_x1_minus_x0_at_the_linear_interpolant(sigma):
    """Hand computation with a net that returns x_t + t; draw order is x0, t, noise."""
    x1 = torch.randn(16, 3, generator=seeded(2))
    recorder = Recorder()
    model = flow(recorder, (3,), sigma=sigma)
    torch.manual_seed(0)
    loss = model.loss(x1)
    torch.manual_seed(0)
    x0 = torch.randn_like(x1)
    t = torch.rand(16)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1 + sigma * torch.randn_like(x1)
    torch.testing.assert_close(loss, ((x_t + t[:, None] - (x1 - x0)) ** 2).mean())
    seen_x, seen_t, _ = recorder.calls[0]
    assert seen_t.shape == (16,)
    torch.testing.assert_close(seen_x, x_t)


def test_loss_rejects_data_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        flow(Constant(0.0)).loss(torch.zeros(4, 3))


# ----------------------------------------------------------------- OT pairing


def test_ot_permutation_is_an_optimal_permutation():
    x0 = torch.randn(64, 2, generator=seeded(3))
    x1 = torch.randn(64, 2, generator=seeded(4)) + 3.0
    perm = ot_permutation(x0, x1)
    assert torch.equal(perm.sort().values, torch.arange(64))

    def cost(p: Tensor) -> float:
        return ((x0 - x1[p]) ** 2).sum(1).mean().item()

    random_costs = [cost(torch.randperm(64, generator=seeded(s))) for s in range(20)]
    assert cost(perm) < min(random_costs)
    assert cost(perm) < cost(torch.arange(64))
    squared = torch.cdist(x0.double(), x1.double()) ** 2
    rows, cols = linear_sum_assignment(squared.numpy())
    assert cost(perm) == pytest.approx(squared[rows, cols].mean().item(), rel=1e-6)


def test_ot_pairing_trains_on_the_paired_batch():
    x1 = torch.randn(32, 1, 2, 2, generator=seeded(5))
    model = flow(Constant(0.0), (1, 2, 2), ot_pairing=True)
    torch.manual_seed(0)
    loss = model.loss(x1)
    torch.manual_seed(0)
    x0 = torch.randn_like(x1)
    paired = x1[ot_permutation(x0, x1)]
    torch.testing.assert_close(loss, ((paired - x0) ** 2).mean())
    assert loss < ((x1 - x0) ** 2).mean()


def test_ot_permutation_rejects_unequal_batches():
    with pytest.raises(ValueError, match="batch size"):
        ot_permutation(torch.zeros(3, 2), torch.zeros(4, 2))


# ----------------------------------------------------------------- solvers


@pytest.mark.parametrize("solver", SOLVERS)
def test_constant_velocity_moves_every_sample_by_c(solver):
    model = flow(Constant(0.7), (3,), solver=solver, steps=5)
    x0 = torch.randn(10, 3, generator=seeded(6))
    x1 = model.sample(10, generator=seeded(6))
    tolerance = 1e-6 if solver in FIXED_STEP else 1e-4
    torch.testing.assert_close(x1, x0 + 0.7, atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    "solver, growth",
    [
        ("euler", lambda h: 1 + h),
        ("midpoint", lambda h: 1 + h + h**2 / 2),
        ("rk4", lambda h: 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24),
    ],
)
def test_fixed_step_solvers_match_their_closed_form_on_a_linear_ode(solver, growth):
    a, steps = -1.5, 7
    model = flow(Linear(a), solver=solver, steps=steps)
    x0 = torch.randn(6, 2, generator=seeded(7), dtype=torch.float32)
    expected = x0 * growth(a / steps) ** steps
    torch.testing.assert_close(model.sample(6, generator=seeded(7)), expected, atol=1e-6, rtol=1e-5)


def test_dopri5_solves_a_linear_ode_within_tolerance():
    model = flow(Linear(-1.5), solver="dopri5", rtol=1e-7, atol=1e-7)
    x0 = torch.randn(6, 2, generator=seeded(8))
    torch.testing.assert_close(model.sample(6, generator=seeded(8)), x0 * math.exp(-1.5), atol=1e-5, rtol=1e-5)


class TimeOnly(nn.Module):
    """dx/dt = t, checking that t arrives with one entry per sample."""

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        assert t.shape == (x.shape[0],)
        return t[:, None].expand_as(x)


def test_solvers_pass_the_time_of_each_stage():
    """On dx/dt = t, euler's left sums give (N-1)/(2N); midpoint is exact (1/2)."""
    steps = 4
    x0 = torch.randn(3, 1, generator=seeded(9))
    euler = flow(TimeOnly(), (1,), solver="euler", steps=steps)
    torch.testing.assert_close(euler.sample(3, generator=seeded(9)), x0 + (steps - 1) / (2 * steps))
    midpoint = flow(TimeOnly(), (1,), solver="midpoint", steps=steps)
    torch.testing.assert_close(midpoint.sample(3, generator=seeded(9)), x0 + 0.5)


@pytest.mark.parametrize("steps", [1, 7, 24, 61])
def test_euler_is_torchdiffeqs_euler_bit_for_bit(steps):
    from torchdiffeq import odeint

    torch.manual_seed(0)
    net = MLPVelocity(dim=2, hidden=16, depth=2).eval()
    x0 = torch.randn(64, 2)
    grid = torch.linspace(0.0, 1.0, steps + 1)
    with torch.no_grad():
        expected = odeint(lambda t, x: net(x, t.expand(x.shape[0])), x0, torch.tensor([0.0, 1.0]),
                          method="euler", options={"grid_constructor": lambda *_: grid})[-1]
        got = flow(net, steps=steps)._integrate(net, x0)
    assert torch.equal(got, expected)


def test_fixed_step_solver_takes_exactly_steps_steps():
    """torchdiffeq's step_size option would take 62 steps here; the explicit grid takes 61."""
    recorder = Recorder()
    flow(recorder, solver="euler", steps=61).sample(2, generator=seeded(0))
    times = [t[0].item() for _, t, _ in recorder.calls]
    assert len(times) == 61
    assert times == pytest.approx([k / 61 for k in range(61)], abs=1e-6)


# ----------------------------------------------------------------- sampling


def test_sample_shape_dtype_and_seeding():
    torch.manual_seed(0)
    model = flow(MLPVelocity(dim=16, hidden=16, depth=1), (1, 4, 4), steps=4)
    first = model.sample(5, generator=seeded(11))
    assert first.shape == (5, 1, 4, 4) and first.dtype == torch.float32
    assert torch.equal(first, model.sample(5, generator=seeded(11)))
    assert not torch.allclose(first, model.sample(5, generator=seeded(12)))
    assert model.sample(0).shape == (0, 1, 4, 4)


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_sampling_in_chunks_matches_one_chunk(solver):
    torch.manual_seed(0)
    velocity = MLPVelocity(dim=2, hidden=32, depth=2)
    whole = flow(velocity, solver=solver, steps=8).sample(50, generator=seeded(13))
    chunked = flow(velocity, solver=solver, steps=8, sample_batch_size=7).sample(50, generator=seeded(13))
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-6)


def test_sampling_runs_the_net_in_eval_mode_and_restores_its_mode():
    recorder = Recorder()
    model = flow(recorder, steps=3)
    model.train()
    model.sample(4)
    assert recorder.calls and not any(training for _, _, training in recorder.calls)
    assert recorder.training
    model.eval()
    model.sample(4)
    assert not recorder.training


def test_samples_do_not_track_gradients_and_can_be_trained_on():
    torch.manual_seed(0)
    model = flow(MLPVelocity(dim=2, hidden=8, depth=1), steps=2)
    samples = model.sample(16)
    assert not samples.requires_grad and not samples.is_inference()
    model.loss(samples).backward()


# ----------------------------------------------------------------- EMA


def ema_model(decay: float = 0.9) -> FlowMatching:
    torch.manual_seed(0)
    return FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), [2], steps=3, ema_decay=decay)


def test_ema_update_moves_toward_live_weights_by_decay():
    model = ema_model(0.9)
    live = model.velocity.net[0].weight
    averaged = model.ema.module.net[0].weight
    model.update_ema()  # the first update copies the live weights
    torch.testing.assert_close(averaged, live)
    before = averaged.detach().clone()
    with torch.no_grad():
        live.add_(1.0)
    model.update_ema()
    torch.testing.assert_close(averaged, 0.9 * before + 0.1 * live.detach())
    assert not averaged.requires_grad
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.velocity.parameters()}


def test_sampling_uses_ema_weights_once_updated():
    model = ema_model()
    live_only = flow(model.velocity, steps=3)
    assert torch.equal(model.sample(8, generator=seeded(14)), live_only.sample(8, generator=seeded(14)))
    model.update_ema()
    with torch.no_grad():
        for p in model.velocity.parameters():
            p.add_(0.5)
    model.update_ema()
    ema_only = flow(copy.deepcopy(model.ema.module), steps=3)
    from_model = model.sample(8, generator=seeded(14))
    assert torch.equal(from_model, ema_only.sample(8, generator=seeded(14)))
    assert not torch.allclose(from_model, live_only.sample(8, generator=seeded(14)))


def test_state_dict_round_trip_restores_the_ema():
    model = ema_model()
    model.update_ema()
    with torch.no_grad():
        for p in model.velocity.parameters():
            p.mul_(2.0)
    model.update_ema()
    state = model.state_dict()
    assert "ema.n_averaged" in state and any(k.startswith("ema.module.") for k in state)

    torch.manual_seed(123)
    restored = FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), [2], steps=3, ema_decay=0.9)
    restored.load_state_dict(state)
    assert restored.ema.n_averaged.item() == 2
    for a, b in zip(restored.ema.module.parameters(), model.ema.module.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(restored.sample(8, generator=seeded(15)), model.sample(8, generator=seeded(15)))


class NormedVelocity(nn.Module):
    """A velocity net with float and integer buffers (BatchNorm), to average both kinds."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = MLPVelocity(dim=2, hidden=8, depth=1)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.norm(self.mlp(x, t))


def test_ema_update_is_averaged_model_bit_for_bit_through_training_and_a_reload():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(0)
    model = FlowMatching(NormedVelocity(), [2], ema_decay=0.95)
    oracle = AveragedModel(model.velocity, multi_avg_fn=get_ema_multi_avg_fn(0.95), use_buffers=True)
    opt = torch.optim.AdamW(model.velocity.parameters(), lr=0.05)

    def step(m, opt):
        loss = m.loss(torch.randn(32, 2) * 3)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for i in range(6):
        step(model, opt)
        model.update_ema()
        oracle.update_parameters(model.velocity)
        if i == 2:
            model.to(torch.float32)  # .to() replaces buffers: the update must follow them
    assert model.ema.n_averaged.item() == 6
    for (key, a), b in zip(model.ema.state_dict().items(), oracle.state_dict().values()):
        assert torch.equal(a, b), key
    # A reloaded model (a resume) continues exactly.
    torch.manual_seed(1)
    restored = FlowMatching(NormedVelocity(), [2], ema_decay=0.95)
    restored.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in restored.velocity.parameters():
            p.add_(0.25)
    restored.update_ema()
    oracle.update_parameters(restored.velocity)
    for (key, a), b in zip(restored.ema.state_dict().items(), oracle.state_dict().values()):
        assert torch.equal(a, b), key


def test_first_ema_update_after_loading_an_unstarted_ema_copies():
    model = ema_model(0.5)
    fresh = ema_model(0.5)
    model.update_ema()
    model.load_state_dict(fresh.state_dict())  # n_averaged back to 0
    with torch.no_grad():
        model.velocity.net[0].weight.add_(1.0)
    model.update_ema()
    assert torch.equal(model.ema.module.net[0].weight, model.velocity.net[0].weight)


def test_zero_decay_disables_ema():
    model = ema_model(0.0)
    model.update_ema()
    assert model.ema is None
    assert not any(k.startswith("ema.") for k in model.state_dict())


# ----------------------------------------------------------------- compile and autocast


@pytest.fixture
def compile_calls(monkeypatch):
    """Replace ``torch.compile`` by a spy that compiles with the ``eager`` backend.

    Inductor needs 30 s or more to compile on a busy 2-core machine; the eager
    backend still traces the network with TorchDynamo (guards, recompiles), in
    seconds, so the wrapper that sampling builds and calls is a real compiled one.
    """
    real_compile = torch.compile
    calls: list[nn.Module] = []

    def spy(model, **kwargs):
        calls.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", spy)
    return calls


def test_compile_wraps_the_sampling_net_lazily_and_samples_the_same(compile_calls):
    torch.manual_seed(0)
    velocity = MLPVelocity(dim=2, hidden=16, depth=1)
    eager = FlowMatching(velocity, [2], steps=4, ema_decay=0.9)
    compiled = FlowMatching(copy.deepcopy(velocity), [2], steps=4, ema_decay=0.9, compile=True)
    compiled.load_state_dict(eager.state_dict())
    keys = list(eager.state_dict())
    assert compile_calls == []  # lazy: nothing compiled before the first sample

    for n in (40, 40, 13):  # a new batch size recompiles inside the same wrapper
        torch.testing.assert_close(compiled.sample(n, generator=seeded(21)), eager.sample(n, generator=seeded(21)),
                                   atol=1e-5, rtol=1e-5)
    assert compile_calls == [compiled.velocity]  # compiled once, then cached
    assert list(compiled.state_dict()) == keys
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    assert {name for name, _ in compiled.named_modules()} == {name for name, _ in eager.named_modules()}

    # After an EMA update, sampling integrates the EMA copy: it gets its own wrapper,
    # and later weight updates reach the compiled wrappers (weights are not baked in).
    for _ in range(2):
        for model in (eager, compiled):
            with torch.no_grad():
                for p in model.velocity.parameters():
                    p.add_(0.05)
            model.update_ema()
        torch.testing.assert_close(compiled.sample(40, generator=seeded(22)), eager.sample(40, generator=seeded(22)),
                                   atol=1e-5, rtol=1e-5)
    assert compile_calls == [compiled.velocity, compiled.ema.module]
    assert list(compiled.state_dict()) == keys

    clone = copy.deepcopy(compiled)  # the cached wrappers are dropped, and rebuilt on demand
    assert clone._compiled == {}
    torch.testing.assert_close(clone.sample(8, generator=seeded(23)), eager.sample(8, generator=seeded(23)),
                               atol=1e-5, rtol=1e-5)


def test_compile_off_never_calls_torch_compile(compile_calls):
    torch.manual_seed(0)
    flow(MLPVelocity(dim=2, hidden=8, depth=1), steps=2).sample(8)
    assert compile_calls == []


def test_autocast_is_ignored_on_cpu_with_one_warning():
    torch.manual_seed(0)
    velocity = MLPVelocity(dim=2, hidden=16, depth=1)
    plain = flow(velocity, steps=4)
    bf16 = flow(velocity, steps=4, autocast="bfloat16")
    with pytest.warns(UserWarning, match="CUDA only"):
        first = bf16.sample(16, generator=seeded(24))
    assert first.dtype == torch.float32
    assert torch.equal(first, plain.sample(16, generator=seeded(24)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per model, not per call
        assert torch.equal(bf16.sample(16, generator=seeded(24)), first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.sample(4)  # off by default: no warning at all


@pytest.mark.parametrize("name, dtype", [("bfloat16", torch.bfloat16), ("float16", torch.float16)])
def test_autocast_on_cuda_uses_the_configured_dtype(name, dtype):
    model = flow(Constant(0.0), autocast=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a CPU-only build warns that CUDA autocast is disabled
        context = model._autocast_context(torch.device("cuda"))
    assert isinstance(context, torch.autocast)
    assert context.device == "cuda" and context.fast_dtype == dtype


# ----------------------------------------------------------------- training


def eight_gaussians(n: int, generator: torch.Generator) -> Tensor:
    angles = torch.randint(0, 8, (n,), generator=generator) * (2 * math.pi / 8)
    centers = 2.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centers + 0.1 * torch.randn(n, 2, generator=generator)


def test_short_training_run_learns_the_eight_gaussians():
    torch.manual_seed(0)
    data_rng = seeded(16)
    model = FlowMatching(MLPVelocity(dim=2, hidden=64, depth=2), [2], steps=20, ema_decay=0.95)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(400):
        loss = model.loss(eight_gaussians(256, data_rng))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_ema()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.9 * sum(losses[:50]) / 50

    data = eight_gaussians(4000, seeded(17))
    samples = model.sample(4000, generator=seeded(18))
    assert torch.isfinite(samples).all()
    assert (samples.mean(0) - data.mean(0)).abs().max() < 0.15
    assert (samples.std(0) / data.std(0) - 1).abs().max() < 0.1
    radius = samples.norm(dim=1)
    assert ((radius - 2.0).abs() < 0.5).float().mean() > 0.8


# ----------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "name, value",
    [
        ("data_shape", []),
        ("data_shape", [2, 0]),
        ("data_shape", [-1]),
        ("solver", "heun"),
        ("steps", 0),
        ("rtol", 0.0),
        ("atol", -1e-5),
        ("sigma", -0.1),
        ("ema_decay", 1.0),
        ("ema_decay", -0.1),
        ("sample_batch_size", 0),
        ("compile", "yes"),
        ("autocast", "fp8"),
        ("autocast", "float32"),
    ],
)
def test_bad_flow_matching_arguments_raise_naming_them(name, value):
    kwargs = {"velocity": Constant(0.0), "data_shape": [2], name: value}
    with pytest.raises(ValueError, match=name):
        FlowMatching(**kwargs)


def test_unknown_solver_lists_the_valid_ones():
    with pytest.raises(ValueError, match="euler.*midpoint.*rk4.*dopri5"):
        FlowMatching(Constant(0.0), [2], solver="heun")


def test_negative_sample_count_raises():
    with pytest.raises(ValueError, match="n must be"):
        flow(Constant(0.0)).sample(-1)


# ----------------------------------------------------------------- nets


def test_time_embedding_shape_and_distinct_times():
    embedding = SinusoidalTimeEmbedding(16)
    features = embedding(torch.tensor([0.0, 0.5, 1.0]))
    assert features.shape == (3, 16)
    assert torch.cdist(features, features)[~torch.eye(3, dtype=torch.bool)].min() > 0.1


def test_mlp_velocity_keeps_the_input_shape():
    torch.manual_seed(0)
    assert MLPVelocity(dim=2, hidden=8, depth=1)(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)
    image_net = MLPVelocity(dim=12, hidden=8, depth=3, activation="gelu")
    assert image_net(torch.randn(5, 3, 2, 2), torch.rand(5)).shape == (5, 3, 2, 2)
    with pytest.raises(ValueError, match="dim=2"):
        MLPVelocity(dim=2)(torch.randn(5, 3), torch.rand(5))


@pytest.mark.parametrize(
    "name, value",
    [("dim", 0), ("hidden", 0), ("depth", 0), ("time_dim", 7), ("time_dim", 0), ("activation", "swish")],
)
def test_bad_mlp_arguments_raise_naming_them(name, value):
    with pytest.raises(ValueError, match=name):
        MLPVelocity(**{name: value})


def test_bad_time_embedding_dim_raises():
    with pytest.raises(ValueError, match="dim"):
        SinusoidalTimeEmbedding(5)


@pytest.mark.parametrize("reset", ["never", "round"])
def test_ema_reset_each_round_forgets_earlier_rounds(reset):
    torch.manual_seed(0)
    model = FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), data_shape=[2], ema_decay=0.9, ema_reset=reset)
    opt = torch.optim.SGD(model.velocity.parameters(), lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        model.loss(torch.randn(16, 2)).backward()
        opt.step()
        model.update_ema()
    live = {k: v.clone() for k, v in model.velocity.state_dict().items()}
    before = {k: v.clone() for k, v in model.ema.module.state_dict().items()}
    assert any(not torch.equal(before[k], live[k]) for k in live)  # the average lags the live weights
    model.start_round(1)
    after = model.ema.module.state_dict()
    expected = live if reset == "round" else before
    assert all(torch.equal(after[k], expected[k]) for k in expected)
    # The next update moves from there with the usual rule.
    model.update_ema()
    if reset == "round":
        assert all(torch.equal(model.ema.module.state_dict()[k], live[k]) for k in live)  # no step since


def test_ema_reset_is_checked():
    with pytest.raises(ValueError, match=r"ema_reset must be one of \('never', 'round'\), got 'epoch'"):
        FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), data_shape=[2], ema_reset="epoch")
