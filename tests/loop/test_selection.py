"""Selection beyond the per-slot K-choice: the top, bottom or a random fraction of a round's pool,
by reward or by the generator's own likelihood, checked against full-pool oracles."""

import math

import pytest
import torch
from loop_helpers import assert_same_outcome, build_module
from torch import nn

from lightning_curate.loop import PoolFraction, SlotChoice
from lightning_curate.loop.curation_module import SLOT_BLOCK, CurationModule
from lightning_curate.loop.selection import kept_mask
from lightning_curate.models.generator import Generator
from lightning_curate.rewards.geometric import ClippedDistanceReward
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator

NUM_SLOTS = 1100  # three blocks of slots (512 + 512 + 76): chunk boundaries inside the pool
K = 3
SEED = 7


class CoarseReward(nn.Module):
    """The first coordinate rounded to a half: many exact ties across the pool."""

    def forward(self, x):
        return torch.round(2 * x[:, 0]) / 2


class GaussianGenerator(Generator):
    """An isotropic Gaussian ``N(mean, scale^2 I)`` with its closed-form log-density."""

    def __init__(self, mean=(0.5, -1.0), scale=1.5):
        super().__init__()
        self.data_shape = (2,)
        self.register_buffer("mean", torch.tensor(mean))
        self.scale = scale

    def fit(self, x):
        pass

    def sample(self, n, *, generator=None, device=None):
        noise = torch.randn(n, 2, generator=generator, device=generator.device if generator is not None else None)
        return (self.mean + self.scale * noise.to(self.mean.device)).to(device or self.mean.device)

    def log_prob(self, x):
        z = (x - self.mean) / self.scale
        return -0.5 * z.square().sum(dim=1) - 2 * math.log(self.scale) - math.log(2 * math.pi)


def pool_of(module, n_slots=NUM_SLOTS, seed=SEED):
    """The whole pool ``[n_slots * K, 2]``, drawn block by block from the loop's seeds (the oracle's)."""
    sizes = [min(SLOT_BLOCK, n_slots - b * SLOT_BLOCK) for b in range(math.ceil(n_slots / SLOT_BLOCK))]
    with torch.no_grad():
        return torch.cat([module.generator.sample(nb * K, generator=make_generator(derive_seed(seed, "candidates", b)))
                          for b, nb in enumerate(sizes)])


def lexicographic(keys, keep, largest):
    """The oracle: indices sorted by (score, then the lower index), the first ``keep``, in pool order."""
    order = sorted(range(len(keys)), key=lambda i: ((-keys[i] if largest else keys[i]), i))
    return sorted(order[:keep])


def curate(module, **kwargs):
    return module.curate_round(0, seed=SEED, **kwargs)


def test_kchoice_is_the_default_bit_for_bit():
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1])
    a = curate(build_module(reward, num_slots=NUM_SLOTS, num_candidates=K))
    b = curate(build_module(reward, num_slots=NUM_SLOTS, num_candidates=K, selection=SlotChoice()))
    assert_same_outcome(a, b)


@pytest.mark.parametrize("rule", ["top", "bottom"])
@pytest.mark.parametrize("chunk_size", [512, 8192])  # three chunks (two passes, regenerated) or one (kept)
def test_top_and_bottom_keep_the_pools_extremes(rule, chunk_size):
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1])
    module = build_module(reward, num_slots=NUM_SLOTS, num_candidates=K, chunk_size=chunk_size,
                          selection=PoolFraction(rule, 0.2))
    out = curate(module)
    pool = pool_of(module)
    r = reward(pool)
    keep = math.floor(0.2 * NUM_SLOTS * K)
    oracle = torch.topk(r if rule == "top" else -r, keep).indices.sort().values
    assert out.tensors["x"].shape == (keep, 2)
    assert torch.equal(out.tensors["x"], pool[oracle])
    assert torch.equal(out.tensors["slot"], oracle // K)
    assert torch.equal(out.tensors["rewards"], r[oracle])


@pytest.mark.parametrize("rule", ["top", "bottom"])
def test_ties_are_broken_by_the_lower_candidate_index_across_chunks(rule):
    module = build_module(CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K, chunk_size=512,
                          selection=PoolFraction(rule, 0.3))
    out = curate(module)
    pool = pool_of(module)
    r = CoarseReward()(pool)
    keep = math.floor(0.3 * NUM_SLOTS * K)
    assert len(torch.unique(r)) < 20  # the threshold falls inside a level of many ties
    oracle = torch.tensor(lexicographic(r.tolist(), keep, largest=rule == "top"))
    assert torch.equal(out.tensors["x"], pool[oracle])


def test_the_round_is_the_same_whatever_the_chunk_size():
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1])
    rounds = [curate(build_module(reward, num_slots=NUM_SLOTS, num_candidates=K, chunk_size=c,
                                  selection=PoolFraction("random", 0.1)))
              for c in (512, 1024, 8192)]
    for other in rounds[1:]:
        assert_same_outcome(rounds[0], other)


def test_random_keeps_a_seeded_draw_of_the_pool_whatever_the_reward():
    kept = []
    for reward in (ClippedDistanceReward(dataset="mog8", targets=[0, 1]), CoarseReward()):
        out = curate(build_module(reward, num_slots=NUM_SLOTS, num_candidates=K, chunk_size=512,
                                  selection=PoolFraction("random", 0.1)))
        kept.append(out.tensors["x"])
    assert torch.equal(kept[0], kept[1])
    assert kept[0].shape == (330, 2)
    other = build_module(CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K,
                         selection=PoolFraction("random", 0.1)).curate_round(0, seed=SEED + 1)
    assert not torch.equal(other.tensors["x"], kept[0])
    assert len(torch.unique(kept[0], dim=0)) == 330  # a draw without replacement


def test_pool_metrics_and_the_preview():
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1])
    module = build_module(reward, num_slots=NUM_SLOTS, num_candidates=K, selection=PoolFraction("top", 0.25))
    out = curate(module)
    r = reward(pool_of(module)).double()
    assert out.row["reward_mean"] == pytest.approx(float(r.mean()), rel=1e-6)
    assert out.row["curated_reward_mean"] == pytest.approx(float(r.sort(descending=True).values[:825].mean()),
                                                           rel=1e-6)
    assert math.isnan(out.row["selection_entropy"])  # a per-slot notion
    assert out.tensors["probe_rewards"].shape == (100, K)  # preview_size slots, all K rewards, as the K-choice
    assert torch.equal(out.tensors["probe_rewards"].reshape(-1), reward(pool_of(module)[:300]))


def test_likelihood_keeps_the_most_and_least_likely_candidates():
    for rule in ("top", "bottom"):
        module = CurationModule(GaussianGenerator(), CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K,
                                chunk_size=512, preview_size=10, selection=PoolFraction(rule, 0.1, "likelihood"))
        out = curate(module)
        pool = pool_of(module)
        # closed form: the density falls with the distance to the mean, so the likeliest are the nearest
        dist = (pool - torch.tensor([0.5, -1.0])).square().sum(dim=1)
        oracle = torch.topk(-dist if rule == "top" else dist, 330).indices.sort().values
        assert torch.equal(out.tensors["x"], pool[oracle]), rule


class PlainGaussian(GaussianGenerator):
    """The same Gaussian without a density: the base class's ``log_prob`` (it raises NotImplementedError)."""

    log_prob = Generator.log_prob


def test_a_generator_without_log_prob_is_refused_by_name():
    with pytest.raises(TypeError, match=r"selection.score 'likelihood'.*PlainGaussian has none"):
        CurationModule(PlainGaussian(), CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K,
                       selection=PoolFraction("top", 0.5, "likelihood"))
    # a generator with one (the flow's change of variables) is accepted
    build_module(CoarseReward(), selection=PoolFraction("top", 0.5, "likelihood"))


@pytest.mark.parametrize("kwargs, pattern", [
    ({"rule": "best"}, "selection.rule"), ({"fraction": 0.0}, "selection.fraction"),
    ({"fraction": 1.5}, "selection.fraction"), ({"score": "elbo"}, "selection.score")])
def test_bad_settings_name_the_parameter(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        PoolFraction(**kwargs)


def test_pool_selection_refuses_per_slot_settings():
    with pytest.raises(ValueError, match="num_winners"):
        build_module(CoarseReward(), num_candidates=4, num_winners=2, selection=PoolFraction())
    with pytest.raises(ValueError, match="log_choices"):
        build_module(CoarseReward(), log_choices=4, selection=PoolFraction())
    with pytest.raises(TypeError, match="selection must be"):
        build_module(CoarseReward(), selection="top")


def test_several_ranks_without_torch_distributed_are_refused():
    module = build_module(CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K, selection=PoolFraction())
    with pytest.raises(RuntimeError, match="torch.distributed"):
        module.curate_round(0, seed=SEED, rank=0, world_size=2)


def test_kept_mask_orders_ties_by_index():
    keys = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    assert kept_mask(keys, 2, "top").tolist() == [False, True, True, False, False]
    assert kept_mask(keys, 2, "bottom").tolist() == [True, False, False, True, False]


def test_settings_are_recorded_only_when_set():
    assert build_module(CoarseReward()).population_settings() == {}
    settings = build_module(CoarseReward(), selection=PoolFraction("bottom", 0.5)).population_settings()
    assert settings == {"selection": {"class": "PoolFraction", "rule": "bottom", "fraction": 0.5, "score": "reward"}}


class UnseededGaussian(GaussianGenerator):
    """Breaks the sampling contract: draws from the global RNG, so a seed does not repeat its samples."""

    def sample(self, n, *, generator=None, device=None):
        return super().sample(n, generator=None, device=device)


def test_a_generator_that_does_not_repeat_its_samples_is_an_error_not_another_set():
    torch.manual_seed(0)
    module = CurationModule(UnseededGaussian(), CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K,
                            chunk_size=512, preview_size=10, selection=PoolFraction("top", 0.1))
    with pytest.raises(RuntimeError, match=r"regenerated blocks \[0\].*chunk_size >= num_slots"):
        curate(module)
    one_chunk = CurationModule(UnseededGaussian(), CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K,
                               chunk_size=NUM_SLOTS, preview_size=10, selection=PoolFraction("top", 0.1))
    assert curate(one_chunk).tensors["x"].shape == (330, 2)  # the pool kept from the first pass


class AutogradGaussian(GaussianGenerator):
    """The same density, its score found by autograd (as a flow's divergence would be): the round must let it."""

    def log_prob(self, x):
        with torch.enable_grad():
            x = x.detach().clone().requires_grad_(True)
            grad = torch.autograd.grad(super().log_prob(x).sum(), x)[0]  # -(x - mean) / scale^2
        return -0.5 * (grad * self.scale).square().sum(dim=1) - 2 * math.log(self.scale) - math.log(2 * math.pi)


def test_a_log_prob_that_needs_autograd_runs_inside_the_round():
    kept = [curate(CurationModule(gen, CoarseReward(), num_slots=NUM_SLOTS, num_candidates=K, preview_size=10,
                                  selection=PoolFraction("top", 0.1, "likelihood"))).tensors["x"]
            for gen in (GaussianGenerator(), AutogradGaussian())]
    assert torch.equal(kept[0], kept[1])
