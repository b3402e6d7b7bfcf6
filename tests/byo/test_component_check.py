"""The fit-start check: each broken contract is one line that names the component at fault."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from torch import Tensor, nn

from lightning_curate.data import RealData, Toy2D
from lightning_curate.loop.component_check import (
    CHECK_SAMPLES,
    ComponentError,
    DataSourceError,
    GeneratorError,
    RewardError,
    check_components,
)
from lightning_curate.models import ExactCategorical, FlowMatching, Generator, MLPVelocity
from lightning_curate.rewards import AtomReward, ClippedDistanceReward

N = CHECK_SAMPLES


class Gauss(Generator):
    """A correct 2-D generator; the subclasses below each break one rule."""

    def __init__(self):
        super().__init__()
        self.data_shape = (2,)
        self.mean = nn.Parameter(torch.zeros(2))

    def loss(self, x):
        return ((x - self.mean) ** 2).sum(1).mean()

    def draw(self, n, generator):
        return torch.randn(n, 2, generator=generator)

    def sample(self, n, *, generator=None, device=None):
        return (self.draw(n, generator) + self.mean.detach()).to(device or "cpu")


class ExtraAxis(Gauss):
    def draw(self, n, generator):
        return torch.randn(n, 1, 2, generator=generator)


class GlobalRng(Gauss):
    def draw(self, n, generator):
        return torch.randn(n, 2)  # ignores its generator


class FixedSeed(Gauss):
    def draw(self, n, generator):
        return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))


class Integers(Gauss):
    def sample(self, n, *, generator=None, device=None):
        return torch.randint(0, 3, (n, 2), generator=generator)


class WithNan(Gauss):
    def draw(self, n, generator):
        x = torch.randn(n, 2, generator=generator)
        x[1, 0] = float("nan")
        return x


class Raises(Gauss):
    def draw(self, n, generator):
        raise RuntimeError("the velocity net is missing\nsecond line")


class DetachedLoss(Gauss):
    def loss(self, x):
        return ((x - self.mean.detach()) ** 2).sum(1).mean()


class NoShape(Generator):
    def sample(self, n, *, generator=None, device=None):
        return torch.zeros(n, 2)


class PointMass(Gauss):
    def draw(self, n, generator):  # one possible sample: it cannot show its seed, and need not
        return torch.ones(n, 2)


def two_d(**kwargs):
    return Toy2D(name="mog8", num_train=64, num_heldout=32, **kwargs)


REWARD = ClippedDistanceReward(dataset="mog8", targets=[0])


def test_a_correct_setup_passes_and_leaves_rng_and_modes_as_they_were():
    gen, source, reward = Gauss().train(), two_d(), ClippedDistanceReward(dataset="mog8", targets=[0]).train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check_components(gen, reward, source)
    assert torch.equal(torch.rand(3), expected)  # the global RNG is where it was
    assert gen.training and reward.training  # sampled and scored in eval mode, then put back
    assert gen.mean.grad is None
    flow = FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), data_shape=[2], steps=2)
    check_components(flow, REWARD, source)
    check_components(PointMass(), REWARD, source)
    check_components(ExactCategorical(num_atoms=1), AtomReward([1.0]))  # every sample the same: allowed


@pytest.mark.parametrize("generator, message", [
    (ExtraAxis(), r"generator ExtraAxis: sample\(8, generator=\.\.\., device='cpu'\) returned shape \[8, 1, 2\]; "
                  r"expected \[8, 2\] \(\[n, \*data_shape\] with data_shape \(2,\)\)"),
    (GlobalRng(), "gave different samples for the same seed: draw every random number from the `generator`"),
    (FixedSeed(), "gave the same samples for 4 different seeds"),
    (Integers(), "returned dtype torch.int64; expected a floating dtype"),
    (WithNan(), "returned 1 non-finite values"),
    (Raises(), r"sample\(8, generator=\.\.\., device='cpu'\) raised RuntimeError: the velocity net is missing$"),
    (DetachedLoss(), r"loss\(x\) on a real batch of shape \[8, 2\] returned a tensor that does not require grad"),
    (NoShape(), r"generator NoShape: data_shape must be the shape of one sample.*got None"),
])
def test_a_broken_generator_is_named(generator, message):
    with pytest.raises(GeneratorError, match=message) as info:
        check_components(generator, REWARD, two_d())
    assert "\n" not in str(info.value)


def test_parameters_and_fit_must_agree():
    class Frozen(Gauss):
        def __init__(self):
            super().__init__()
            self.mean.requires_grad_(False)

    with pytest.raises(GeneratorError, match="Frozen has no trainable parameters.*implement fit"):
        check_components(Frozen(), REWARD)

    class Both(Gauss):
        def fit(self, x):
            pass

    with pytest.raises(GeneratorError, match=r"Both implements fit\(x\).*but has 2 trainable parameters"):
        check_components(Both(), REWARD)


class Rewards:
    @staticmethod
    def column(x):
        return x[:, :1]

    @staticmethod
    def nan(x):
        return x[:, 0] * float("nan")

    @staticmethod
    def ints(x):
        return (x[:, 0] > 0).long()

    @staticmethod
    def crash(x):
        raise KeyError("target")


class FnReward(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn, message", [
    (Rewards.column, r"reward FnReward on 8 generator samples of shape \[8, 2\] returned shape \[8, 1\]; "
                     r"expected one reward per sample, shape \[8\]"),
    (Rewards.nan, "returned 8 non-finite rewards"),
    (Rewards.ints, "returned dtype torch.int64"),
    (Rewards.crash, "raised KeyError: 'target'"),
])
def test_a_broken_reward_is_named(fn, message):
    with pytest.raises(RewardError, match=message):
        check_components(Gauss(), FnReward(fn), two_d())


def test_a_curators_reward_is_named_as_such():
    with pytest.raises(RewardError, match="curator 'rival''s reward FnReward"):
        check_components(Gauss(), REWARD, other_rewards={"curator 'rival''s reward": FnReward(Rewards.column)})


class Source(Toy2D):
    """Toy2D with its data or its labels replaced."""

    def __init__(self, real: Optional[RealData] = None, labels=None):
        super().__init__(name="mog8", num_train=64, num_heldout=32)
        self.real, self.labels = real, labels

    def load(self):
        return self.real if self.real is not None else super().load()

    def label(self, x: Tensor):
        return self.labels(x) if self.labels is not None else super().label(x)


@pytest.mark.parametrize("source, message", [
    (Source(RealData(torch.zeros(10, 3), torch.zeros(5, 3))),
     r"data source Source: load\(\).train has samples of shape \[3\] \(shape \[10, 3\]\) but the generator Gauss "
     r"has data_shape \(2,\)"),
    (Source(RealData(torch.zeros(10, 2), torch.full((5, 2), float("inf")))), r"load\(\).heldout holds 10 non-finite"),
    (Source(RealData(torch.zeros(10, 2, dtype=torch.int64), torch.zeros(5, 2))), "train has dtype torch.int64"),
    (Source(RealData(torch.zeros(0, 2), torch.zeros(5, 2))), r"load\(\).train is shape \[0, 2\]; expected a non-empty"),
    (Source(labels=lambda x: torch.full((x.shape[0],), 8)), r"label\(x\) on 8 generator samples returned label 8; "
                                                            r"class_names has 8 names, so labels must be in 0\.\.7"),
    (Source(labels=lambda x: torch.full((x.shape[0],), -1)), "returned label -1"),
    (Source(labels=lambda x: torch.zeros(x.shape[0], 1, dtype=torch.long)), r"expected integer labels of shape \[8\]"),
    (Source(labels=lambda x: torch.zeros(x.shape[0])), r"returned shape \[8\] of torch.float32; expected integer"),
])
def test_a_broken_data_source_is_named(source, message):
    with pytest.raises(DataSourceError, match=message):
        check_components(Gauss(), REWARD, source)


def test_every_error_is_a_component_error_and_a_value_error():
    for cls in (GeneratorError, RewardError, DataSourceError):
        assert issubclass(cls, ComponentError) and issubclass(cls, ValueError)


def test_a_run_is_checked_from_its_module_and_data_module():
    from lightning_curate.data import BlendingDataModule
    from lightning_curate.loop import CurationModule, Curator
    from lightning_curate.loop.component_check import check_run_components

    rival = Curator(FnReward(Rewards.column), name="rival")
    module = CurationModule(Gauss(), REWARD, num_slots=10, curators=[Curator(REWARD, name="honest"), rival])
    data = BlendingDataModule(two_d())
    with pytest.raises(RewardError, match="curator 'rival''s reward FnReward"):
        check_run_components(module, data)  # not attached to a Trainer: checked where it is
    assert module.device == torch.device("cpu")
    check_run_components(CurationModule(Gauss(), REWARD, num_slots=10), data)
    with pytest.raises(DataSourceError, match="has data_shape \\(1,\\)"):
        check_run_components(CurationModule(ExactCategorical(num_atoms=3), AtomReward([1.0, 0, 0])), data)
