"""Two-reward curation (lightning_curate.experiments.field_two_rewards): the weighted Nash bargaining solution
against a brute-force search of the simplex, the K -> infinity iteration converging to it, and the loop's
limit against the exact finite-K theory in a tiny setting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_curate.experiments.field_two_rewards import (
    TwoRewardSetting,
    exact_limit,
    loop_run,
    nash_bargaining_map,
    nash_objective,
    two_rewards,
    weighted_nash_bargaining,
)


def simplex_grid(n_atoms: int, steps: int) -> torch.Tensor:
    """Every law on n_atoms atoms with masses in multiples of 1/steps."""
    counts = [c for c in itertools.product(range(steps + 1), repeat=n_atoms - 1) if sum(c) <= steps]
    grid = torch.tensor([[*c, steps - sum(c)] for c in counts], dtype=torch.float64)
    return grid / steps


@pytest.mark.parametrize("r1,r2,q", [
    ([3.0, 0.0, 1.5, 0.0], [0.0, 3.0, 1.5, 0.0], 0.7),  # the reproduction's rewards: inside the edge A-B
    ([2.0, 0.0, 1.6, 0.0], [0.0, 2.0, 1.6, 0.3], 0.5),  # the vertex C, the compromise
    ([1.0, 0.0, 0.2], [0.0, 0.4, 0.9], 0.6),  # inside the edge A-C
    ([1.0, 0.0, 0.2], [0.0, 0.4, 0.9], 0.9),  # the vertex A
])
def test_nash_bargaining_is_the_maximum_over_the_simplex(r1, r2, q):
    beta = 1.0
    p = weighted_nash_bargaining(r1, r2, beta, q)
    u = torch.tensor(r1, dtype=torch.float64).mul(beta).exp()
    v = torch.tensor(r2, dtype=torch.float64).mul(beta).exp()
    grid = simplex_grid(len(r1), 80 if len(r1) == 3 else 40)
    best = nash_objective(grid, u, v, q).max()
    ours = nash_objective(p, u, v, q)
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12) and (p >= 0).all()
    assert ours >= best - 1e-12  # no law of the grid does better
    # and the optimum is a maximum: a small step towards any atom does not improve it (KKT, exactly)
    grad = q * u / (p @ u) + (1 - q) * v / (p @ v)
    assert float(grad.max()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(grad[p > 0], torch.ones_like(grad[p > 0]), atol=1e-9)


def test_two_point_closed_form_and_its_conditions():
    e = math.exp(3.0)
    p = weighted_nash_bargaining([3.0, 0.0], [0.0, 3.0], 1.0, 0.7)
    assert float(p[0]) == pytest.approx((0.7 * e - 0.3) / (e - 1), abs=1e-12)
    # E = e^0.5 < q / (1 - q) = 9: no mixture, all on r1's favourite
    assert weighted_nash_bargaining([0.5, 0.0], [0.0, 0.5], 1.0, 0.9).tolist() == [1.0, 0.0]
    # atoms of one reward pair share the mass in proportion to p_data
    split = weighted_nash_bargaining([3.0, 0.0, 3.0], [0.0, 3.0, 0.0], 1.0, 0.7, p_data=[0.1, 0.5, 0.3])
    assert float(split[0] / split[2]) == pytest.approx(1 / 3, abs=1e-12)
    with pytest.raises(ValueError, match="q must be in"):
        weighted_nash_bargaining([1.0], [0.0], 1.0, 1.0)
    with pytest.raises(ValueError, match="rewards_1 and rewards_2"):
        weighted_nash_bargaining([1.0, 0.0], [0.0], 1.0, 0.5)


def test_the_k_infinity_iteration_converges_to_the_nash_bargaining_solution():
    """The derivation in the module, checked: the fixed point of the K -> infinity map is the maximiser."""
    r1 = torch.tensor([2.0, 0.0, 1.6, 0.0, 1.0], dtype=torch.float64)
    r2 = torch.tensor([0.0, 2.0, 1.6, 0.3, 0.2], dtype=torch.float64)
    p_data = torch.tensor([0.3, 0.1, 0.2, 0.2, 0.2], dtype=torch.float64)
    for q in (0.5, 0.8):
        p = p_data
        for _ in range(20000):
            p = nash_bargaining_map(p, r1, r2, 1.0, q)
        want = weighted_nash_bargaining(r1.tolist(), r2.tolist(), 1.0, q, p_data.tolist())
        assert torch.allclose(p, want, atol=1e-4), (q, p, want)


def test_the_loop_follows_the_exact_theory_and_the_rows_pass_in_a_tiny_setting(tmp_path):
    setting = TwoRewardSetting(seeds=[0, 1, 2], rounds=8, ks=(2, 4), num_slots=1000)
    laws = loop_run(setting, 4, seed=0)
    assert laws.shape == (9, 4) and torch.allclose(laws[0], torch.tensor(setting.p_data, dtype=torch.float64))
    theory = exact_limit(setting, 4)
    assert (laws - theory).abs().max() < 0.05  # 1000 slots a round: a few standard errors
    result = two_rewards(tmp_path, setting=setting)
    decided = {row.what.split(" [")[0]: row.passed for row in result.rows if row.passed is not None}
    assert decided["K=2: the loop's law at round 8 is our exact theory's, within 5 standard errors of the seeds' "
                   "mean"] is True
    assert decided["K=4: the loop's law at round 8 is our exact theory's, within 5 standard errors of the seeds' "
                   "mean"] is True
    # K = 4, the largest K here: its limit is far from the bargaining solution (the K -> infinity limit)
    nbs_row = "K=4: the loop's limit is within 0.03 of the weighted Nash bargaining solution (every atom)"
    assert decided[nbs_row] is False
    assert result.figures == [tmp_path / "two_rewards.png"] and result.figures[0].stat().st_size > 0


def test_one_seed_is_decided_on_the_sampling_noise(tmp_path):
    setting = TwoRewardSetting(seeds=[0], rounds=4, ks=(4,), num_slots=800)
    result = two_rewards(tmp_path, setting=setting)
    assert "nan" not in result.rows[0].numbers and result.rows[0].passed is True
