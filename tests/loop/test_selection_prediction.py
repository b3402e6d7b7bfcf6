"""What the ideal learner predicts under each selection rule, or that it predicts nothing."""

import torch
from loop_helpers import build_module

from lightning_curate.data import Atoms
from lightning_curate.loop import CurationModule, ManifoldProjection, PoolFraction
from lightning_curate.loop.prediction import exact_metrics, predict_next, predicts
from lightning_curate.models import ExactCategorical
from lightning_curate.rewards import AtomReward
from lightning_curate.rewards.geometric import ClippedDistanceReward
from lightning_curate.theory.truncation import truncation_trajectory

REWARD = ClippedDistanceReward(dataset="mog8", targets=[0, 1])
PROBE = {"probe_rewards": torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])}


def _predict(module):
    return predict_next(module, PROBE, class_names=None, real_fraction=0.0, real_rewards=None, real_labels=None,
                        real_samples=torch.zeros(4, 2), round_idx=1)


def test_top_and_bottom_by_reward_predict_the_truncated_probe():
    top = _predict(build_module(REWARD, selection=PoolFraction("top", 0.5)))
    assert top["predicted_curated_reward_mean"] == 4.0 and top["predicted_reward_mean"] == 4.0
    bottom = _predict(build_module(REWARD, selection=PoolFraction("bottom", 1 / 3)))
    assert bottom["predicted_reward_mean"] == 0.5
    assert "exp_reward_lower_bound" not in top  # the K-choice's bound is no claim of a pool selection


def test_random_predicts_no_move_and_likelihood_or_a_transform_predict_nothing():
    assert _predict(build_module(REWARD, selection=PoolFraction("random", 0.2)))["predicted_reward_mean"] == 2.5
    quiet = [build_module(REWARD, transform=ManifoldProjection()),
             build_module(REWARD, selection=PoolFraction("top", 0.5), transform=ManifoldProjection())]
    for module in quiet:
        assert not predicts(module) and _predict(module) == {}
    kchoice = _predict(build_module(REWARD))
    assert "exp_reward_lower_bound" in kchoice  # the default's prediction is untouched


def test_the_exact_learner_is_compared_with_the_truncation_trajectory():
    rewards = [3.0, 2.0, 1.0, 0.0]
    source = Atoms([0.1, 0.2, 0.3, 0.4], names=["a", "b", "c", "d"])
    generator = ExactCategorical(4)
    generator.fit(torch.tensor([[0.0], [1.0], [1.0], [3.0]]))
    module = CurationModule(generator, AtomReward(rewards), num_slots=10, selection=PoolFraction("top", 0.25))
    row = exact_metrics(module, source, 0.0, round_idx=2)
    ideal = truncation_trajectory(source.p_data, torch.tensor(rewards), 0.25, "top", 0.0, rounds=2)[-1]
    assert [row[f"ideal_share_{n}"] for n in "abcd"] == ideal.tolist()
    assert [row[f"exact_share_{n}"] for n in "abcd"] == [0.25, 0.5, 0.0, 0.25]
    assert row["exact_reward_mean"] == 0.25 * 3 + 0.5 * 2
    assert "kl_to_rlhf_optimum" not in row  # the K-choice's optimum is no claim here
    assert exact_metrics(build_module(REWARD, selection=PoolFraction("top", 0.5)), source, 0.0, 1) == {}
