"""Pool selection in law: truncation to the top or bottom quantile, against a brute-force oracle."""

import pytest
import torch

from lightning_curate.theory.truncation import predict_pool_round, truncate, truncation_trajectory


def brute_truncate(p, r, f, largest):
    """Fill mass ``f`` level by level (best level first), splitting the boundary level pro rata."""
    q = torch.zeros_like(p)
    left = f
    for level in sorted(set(r.tolist()), reverse=largest):
        at = r == level
        mass = float(p[at].sum())
        take = min(mass, left)
        if mass > 0:
            q[at] = p[at] * take / mass
        left -= take
    return q / q.sum()


@pytest.mark.parametrize("rule", ["top", "bottom"])
@pytest.mark.parametrize("f", [0.05, 0.3, 0.5, 0.99, 1.0])
def test_truncate_matches_the_level_by_level_oracle(rule, f):
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(40, generator=gen, dtype=torch.float64)
    p /= p.sum()
    r = torch.randint(0, 7, (40,), generator=gen).double()  # many ties
    q = truncate(p, r, f, rule)
    assert torch.allclose(q, brute_truncate(p, r, f, rule == "top"), atol=1e-15)
    assert float(q.sum()) == pytest.approx(1.0)


def test_random_keeps_the_law_and_one_keeps_everything():
    p = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    r = torch.tensor([1.0, 0.0, 2.0])
    assert torch.equal(truncate(p, r, 0.1, "random"), p)
    assert torch.allclose(truncate(p, r, 1.0, "top"), p)


def test_the_trajectory_mixes_the_real_data_each_round():
    p0 = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64)
    r = torch.tensor([0.0, 1.0, 2.0])
    laws = truncation_trajectory(p0, r, 0.5, "top", 0.5, rounds=2)
    assert torch.allclose(laws[1], 0.5 * p0 + 0.5 * torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(laws[2], 0.5 * p0 + 0.5 * truncate(laws[1], r, 0.5, "top"))


def test_predict_pool_round_on_candidates_with_labels_and_real_data():
    rewards = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    labels = torch.tensor([[0, 0], [1, 1]])
    out = predict_pool_round(rewards, 0.25, "bottom", labels=labels, class_names=["a", "b"], real_fraction=0.5,
                             real_rewards=torch.tensor([4.0, 6.0]), real_labels=torch.tensor([1, 1]))
    assert out["predicted_curated_reward_mean"] == 0.0
    assert out["predicted_reward_mean"] == 0.5 * 5.0
    assert out["predicted_curated_share_a"] == 1.0 and out["predicted_share_a"] == 0.5
    assert out["selection_reward_sd"] == 0.0
    assert "selection_reward_sd" not in predict_pool_round(rewards, 0.5, "random")
    with pytest.raises(ValueError, match="real_rewards"):
        predict_pool_round(rewards, 0.5, "top", real_fraction=0.5)
