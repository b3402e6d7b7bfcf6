"""Populations of curators: the mixture law, the two-curator reduction and its fixed points,
and adversarial thresholds, against exact oracles (single-curator laws, closed forms)."""

import math

import pytest
import torch

from lightning_curate.theory.laws import curated_distribution, curated_share_map
from lightning_curate.theory.population import (
    AtomCurator,
    adversarial_grid,
    adversarial_population,
    adversarial_threshold,
    classify_long_run,
    curator_weights,
    invasion_rate,
    population_curated_distribution,
    population_trajectory,
    two_curator_fixed_points,
    two_curator_fixed_points_k2,
    two_curator_map,
    two_curator_population,
)

TEN = torch.full((10,), 0.1, dtype=torch.float64)
HONEST10 = [5.0] + [0.0] * 9  # configs/discrete.yaml: reward 5 * 1{class 0}
TARGET10 = [0.0, 5.0] + [0.0] * 8  # adversaries want class 1


def test_one_curator_is_the_paper_law():
    # docs worked example: p = (0.5, 0.3, 0.2), r = (0, 1, 2), beta = 1, K = 2.
    q = population_curated_distribution([0.5, 0.3, 0.2], [AtomCurator([0, 1, 2], num_candidates=2, weight=3.0)])
    assert torch.allclose(q, torch.tensor([0.354523, 0.341591, 0.303886], dtype=torch.float64), atol=1e-6)


def test_mixture_is_weighted_sum_of_curator_laws():
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    crowd = [AtomCurator([0, 1, 2, 3], beta=0.7, num_candidates=3, weight=2.0),
             AtomCurator([3, 0, 0, 1], beta=2.0, num_candidates=5, weight=1.0),
             AtomCurator([0, 0, 0, 0], mode="uniform", weight=1.0)]
    expected = (0.5 * curated_distribution(p, [0, 1, 2, 3], 3, 0.7)
                + 0.25 * curated_distribution(p, [3, 0, 0, 1], 5, 2.0) + 0.25 * p)
    assert torch.allclose(population_curated_distribution(p, crowd), expected, atol=1e-14)


def test_argmax_weights_are_best_of_k():
    # Top set of mass s keeps 1 - (1 - s)^K of the winners.
    H = curator_weights([0.3, 0.7], AtomCurator([1.0, 0.0], mode="argmax", num_candidates=4))
    assert float(0.3 * H[0]) == pytest.approx(1 - 0.7**4, abs=1e-12)


def test_trajectory_matches_discrete_worked_example():
    traj = population_trajectory(TEN, [AtomCurator(HONEST10, num_candidates=4)], rounds=3)
    assert traj[1:, 0].tolist() == pytest.approx([0.338, 0.798, 0.996], abs=6e-4)
    real = population_trajectory(TEN, [AtomCurator(HONEST10, num_candidates=4)], real_fraction=0.5, rounds=3)
    assert real[1:, 0].tolist() == pytest.approx([0.219, 0.359, 0.461], abs=6e-4)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="mode"):
        AtomCurator([1.0], mode="best")
    with pytest.raises(ValueError, match="num_candidates"):
        AtomCurator([1.0], num_candidates=0)
    with pytest.raises(ValueError, match="2 rewards but the law has 3"):
        population_curated_distribution([0.2, 0.3, 0.5], [AtomCurator([1.0, 0.0])])
    with pytest.raises(ValueError, match="real_fraction"):
        population_trajectory([1.0], [AtomCurator([1.0])], real_fraction=1.5)


def test_reduction_to_shares_equals_full_iteration():
    # Ten classes, honest want class 0, adversaries class 1: the full law's shares of
    # classes 0 and 1 follow the 3-atom map exactly (class 2..9 stay proportional).
    for rho in (0.0, 0.5):
        crowd = adversarial_population(HONEST10, 0.25, "target", TARGET10, num_candidates=4)
        full = population_trajectory(TEN, crowd, rho, rounds=4)
        reduced = two_curator_population(0.75, 1.0, 1.0, 4, gap_a=5.0, gap_b=5.0)
        a, b = 0.1, 0.1
        for t in range(1, 5):
            a, b = two_curator_map(a, b, reduced, rho, 0.1, 0.1)
            assert (a, b) == pytest.approx((float(full[t, 0]), float(full[t, 1])), abs=1e-12)
            assert torch.allclose(full[t, 2:], full[t, 2:].mean().expand(8), atol=1e-14)


@pytest.mark.parametrize("mode", ["softmax", "argmax", "uniform"])
def test_k2_closed_form_map(mode):
    crowd = two_curator_population(0.6, 1.5, 0.8, num_candidates=2, mode=mode, gap_a=1.0, gap_b=2.0)
    d_a = {"softmax": math.tanh(0.75), "argmax": 1.0, "uniform": 0.0}[mode]
    d_b = {"softmax": math.tanh(0.8), "argmax": 1.0, "uniform": 0.0}[mode]
    alpha, beta_ = 0.6 * d_a, 0.4 * d_b
    for a, b in [(0.1, 0.2), (0.5, 0.4), (0.3, 0.0), (0.0, 0.9), (0.25, 0.25)]:
        got = two_curator_map(a, b, crowd)
        assert got == pytest.approx((a * (1 + alpha * (1 - a) - beta_ * b),
                                     b * (1 + beta_ * (1 - b) - alpha * a)), abs=1e-12)


def _iterate(crowd, a, b, steps):
    """The two-curator map from (a, b): the trajectory [steps + 1, 2]."""
    traj = [(a, b)]
    for _ in range(steps):
        a, b = two_curator_map(a, b, crowd)
        traj.append((a, b))
    return torch.tensor(traj)


def test_k2_fixed_points_closed_form_vs_numeric():
    crowd = two_curator_population(0.6, 1.0, 1.0, num_candidates=2)
    closed = two_curator_fixed_points_k2(0.6, math.tanh(0.5), math.tanh(0.5))
    numeric = two_curator_fixed_points(crowd)
    assert [(round(p["a"], 9), round(p["b"], 9)) for p in numeric] == sorted(closed["points"])
    stable = [(p["a"], p["b"]) for p in numeric if p["stable"]]
    assert closed["winner"] == "a" and stable == [(1.0, 0.0)]
    # The iteration from an interior start reaches the winner's consensus.
    traj = _iterate(crowd, 0.2, 0.5, 400)
    assert classify_long_run(traj) == "consensus_a"


def test_k4_symmetric_polarises_at_one_half():
    crowd = two_curator_population(0.5, 2.0, 2.0, num_candidates=4)
    points = two_curator_fixed_points(crowd)
    stable = [p for p in points if p["stable"]]
    assert len(stable) == 1 and (stable[0]["a"], stable[0]["b"]) == pytest.approx((0.5, 0.5), abs=1e-9)
    # Consensus is unstable: the rare set invades it at the closed-form rate.
    w = math.exp(2.0)
    rate = 0.5 * 4 * w / (w + 3) + 0.5 * 4 / (1 + 3 * w)
    assert invasion_rate(crowd, 1) == pytest.approx(rate, abs=1e-12) and rate > 1
    traj = _iterate(crowd, 0.02, 0.3, 60)
    assert classify_long_run(traj) == "polarised"
    assert tuple(traj[-1].tolist()) == pytest.approx((0.5, 0.5), abs=1e-6)


def test_argmax_invasion_rate_is_pi_k():
    crowd = two_curator_population(0.5, 1.0, 1.0, num_candidates=3, mode="argmax")
    assert invasion_rate(crowd, 0) == 1.5 and invasion_rate(crowd, 1) == 1.5
    stable = [(p["a"], p["b"]) for p in two_curator_fixed_points(crowd) if p["stable"]]
    assert len(stable) == 1 and stable[0] == pytest.approx((0.5, 0.5), abs=1e-9)


def test_invasion_rate_predicts_consensus_or_polarisation():
    # Ten-class adversary (gap 5, K = 4): survives iff its invasion rate exceeds 1.
    w = math.exp(5.0)
    eps_star = (1 - 4 / (1 + 3 * w)) / (4 * w / (w + 3) - 4 / (1 + 3 * w))
    assert eps_star == pytest.approx(0.2533, abs=1e-4)
    for eps, expected in [(eps_star - 0.01, "consensus_a"), (eps_star + 0.01, "polarised")]:
        crowd = two_curator_population(1 - eps, 1.0, 1.0, 4, gap_a=5.0, gap_b=5.0)
        assert (invasion_rate(crowd, 1) > 1) == (expected == "polarised")
        stable = [p for p in two_curator_fixed_points(crowd) if p["stable"]]
        assert len(stable) == 1
        kind = classify_long_run(torch.tensor([[stable[0]["a"], stable[0]["b"]]] * 3))
        assert kind == expected


def test_reduced_map_is_competitive_monotone_so_it_cannot_oscillate():
    # d a'/d a >= 0, d a'/d b <= 0, d b'/d a <= 0, d b'/d b >= 0 (and det > 0) on a grid:
    # the map preserves the competitive order, so orbits are eventually monotone.
    from lightning_curate.theory.population import _jacobian

    for crowd, rho in [(two_curator_population(0.3, 3.0, 1.0, 4), 0.0),
                       (two_curator_population(0.5, 5.0, 5.0, 2, mode="argmax"), 0.25),
                       (two_curator_population(0.8, 1.0, 4.0, 6), 0.5)]:
        f = lambda x, y: two_curator_map(x, y, crowd, rho, 0.125, 0.125)  # noqa: E731
        for i in range(1, 9):
            for j in range(1, 10 - i):
                J = _jacobian(f, i / 10, j / 10)
                assert J[0, 0] >= -1e-6 and J[1, 1] >= -1e-6 and J[0, 1] <= 1e-6 and J[1, 0] <= 1e-6
                assert float(torch.linalg.det(J)) > 0


def test_classify_long_run_detects_alternation():
    alt = torch.tensor([[0.2, 0.7], [0.7, 0.2]] * 5)
    assert classify_long_run(alt) == "oscillation"
    assert classify_long_run(torch.tensor([[0.05, 0.05]] * 3), floor_a=0.05, floor_b=0.05) == "neither"
    with pytest.raises(ValueError, match="trajectory"):
        classify_long_run(torch.zeros(2, 2))


def test_adversarial_threshold_ten_classes_round_one_closed_form():
    # After one round, class 1 grows iff eps H_adv + (1 - eps) g_honest > 1 at s = 0.1, where
    # H_adv = Q(0.1) / 0.1 and g_honest = (1 - Q(0.1)) / 0.9 (Q: one curator's top-set map).
    Q = curated_share_map(0.1, 5.0, 0.0, 4)
    h_adv, g = Q / 0.1, (1 - Q) / 0.9
    closed = (1 - g) / (h_adv - g)
    grows = lambda pT, p0: float(pT[1]) > float(p0[1])  # noqa: E731
    th = adversarial_threshold(TEN, HONEST10, grows, 0.0, 1, "target", TARGET10, tol=1e-6, num_candidates=4)
    assert th == pytest.approx(closed, abs=2e-6)
    # Symmetric sets: (1 - g) / (H - g) simplifies to the target's data share, 0.1, for any K, beta.
    assert closed == pytest.approx(0.1, abs=1e-12)


def test_negated_threshold_ten_classes():
    # One-dimensional dynamics (the share of class 0): the honest reward falls iff it falls in
    # round 1, i.e. (1 - eps) Q(0.1) + eps 0.1 H_neg < 0.1, for every rho and T.
    Q = curated_share_map(0.1, 5.0, 0.0, 4)
    q_neg = curated_share_map(0.1, -5.0, 0.0, 4)
    closed = (Q - 0.1) / (Q - q_neg)
    falls = lambda pT, p0: float(pT[0]) < float(p0[0])  # noqa: E731
    for rho, T in [(0.0, 10), (0.5, 3)]:
        th = adversarial_threshold(TEN, HONEST10, falls, rho, T, "negated", tol=1e-6, num_candidates=4)
        assert th == pytest.approx(closed, abs=2e-6)
    assert closed == pytest.approx(0.7064, abs=1e-4)


def test_adversarial_grid_rewards():
    out = adversarial_grid(TEN, HONEST10, [0.0, 0.25, 0.5], [0.0, 0.5], rounds=10, kind="target",
                           target=TARGET10, num_candidates=4)
    hr, ar = out["honest_reward"], out["adversary_reward"]
    assert hr.shape == (3, 2) and out["law"].shape == (3, 2, 10)
    # eps = 0, rho = 0: collapse on class 0; eps = 0.5: the two classes split evenly.
    assert float(hr[0, 0]) == pytest.approx(5.0, abs=1e-6) and float(ar[0, 0]) == pytest.approx(0.0, abs=1e-6)
    assert float(hr[2, 0]) == pytest.approx(float(ar[2, 0]), abs=1e-12)
    assert (hr[1:] < hr[:-1]).all() and (ar[1:] > ar[:-1]).all()
    # Real data keeps every class above rho * p_data.
    assert float(out["law"][:, 1].min()) >= 0.05


def test_k2_sharper_minority_wins():
    # 60% curators at beta = 1 against 40% at beta = 3: 0.6 tanh(0.5) = 0.277 < 0.4 tanh(1.5) = 0.362.
    closed = two_curator_fixed_points_k2(0.6, math.tanh(0.5), math.tanh(1.5))
    assert closed["winner"] == "b"
    crowd = two_curator_population(0.6, 1.0, 3.0, num_candidates=2)
    stable = [(p["a"], p["b"]) for p in two_curator_fixed_points(crowd) if p["stable"]]
    assert stable == [(0.0, 1.0)]


def test_k4_weighted_polarisation_worked_example():
    # docs/THEORY.md section 7.2.2: K = 4, beta = 2, pi_a = 0.6.
    crowd = two_curator_population(0.6, 2.0, 2.0, num_candidates=4)
    stable = [p for p in two_curator_fixed_points(crowd) if p["stable"]]
    assert len(stable) == 1 and (stable[0]["a"], stable[0]["b"]) == pytest.approx((0.7483, 0.2517), abs=1e-4)
    assert (invasion_rate(crowd, 0), invasion_rate(crowd, 1)) == pytest.approx((1.776, 1.242), abs=1e-3)
    real = [p for p in two_curator_fixed_points(crowd, 0.5, 0.125, 0.125) if p["stable"]]
    assert (real[0]["a"], real[0]["b"]) == pytest.approx((0.2713, 0.1756), abs=1e-4)
    # The iteration from the data reaches it.
    a, b = 0.125, 0.125
    for _ in range(200):
        a, b = two_curator_map(a, b, crowd, 0.5, 0.125, 0.125)
    assert (a, b) == pytest.approx((real[0]["a"], real[0]["b"]), abs=1e-9)


def test_mog8_target_threshold_bracket():
    # Eight modes as atoms at their centres (configs/mog8.yaml's reward), adversaries pull to mode 4.
    from lightning_curate.data.toy2d import mode_centers
    from lightning_curate.rewards import ClippedDistanceReward

    centres = mode_centers("mog8")
    honest = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5)(centres).double()
    target = ClippedDistanceReward(dataset="mog8", targets=[4], radius=0.5)(centres).double()
    p8 = torch.full((8,), 0.125, dtype=torch.float64)
    grows = lambda pT, p0: float(pT[4]) > float(p0[4])  # noqa: E731
    th = adversarial_threshold(p8, honest, grows, 0.0, 10, "target", target, tol=1e-3, num_candidates=4)
    assert th == pytest.approx(0.305, abs=2e-3)
    for eps, expected in [(th, True), (th - 1e-3, False)]:
        crowd = adversarial_population(honest, eps, "target", target, num_candidates=4)
        assert grows(population_trajectory(p8, crowd, 0.0, 10)[-1], p8) == expected


def test_mixture_is_not_the_law_of_the_averaged_reward():
    # docs/THEORY.md section 7.1.
    crowd = [AtomCurator([1.0, 0.0], num_candidates=2, weight=0.6),
             AtomCurator([0.0, 1.0], num_candidates=2, weight=0.4)]
    q_each = 0.5 * (1 + math.tanh(0.5) / 2)
    mix = population_curated_distribution([0.5, 0.5], crowd)
    assert float(mix[0]) == pytest.approx(0.6 * q_each + 0.4 * (1 - q_each), abs=1e-12)
    assert float(mix[0]) == pytest.approx(0.5231, abs=1e-4)
    averaged = curated_distribution([0.5, 0.5], [0.6, 0.4], 2, 1.0)
    assert float(averaged[0]) == pytest.approx(0.5249, abs=1e-4)


def test_empirical_population_weights_match_the_exact_law():
    # A round's candidates whose empirical law is p = (0.5, 0.3, 0.2) on three atoms.
    from lightning_curate.theory.population import empirical_population_weights

    atoms = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    crowd = [AtomCurator([0.0, 1.0, 2.0], beta=1.0, num_candidates=3, weight=0.7),
             AtomCurator([2.0, 0.0, 0.0], mode="argmax", num_candidates=2, weight=0.3)]
    rewards = torch.stack([c.r[atoms] for c in crowd])
    H = empirical_population_weights(rewards, crowd)
    q = torch.zeros(3, dtype=torch.float64).index_add_(0, atoms, H / atoms.numel())
    expected = population_curated_distribution([0.5, 0.3, 0.2], crowd)
    assert torch.allclose(q, expected, atol=1e-9)
    with pytest.raises(ValueError, match="U = 2 curators"):
        empirical_population_weights(rewards[:1], crowd)


def test_random_settings_converge_without_alternation():
    # Twelve seeded random settings (weights, betas, gaps, K, mode, rho): the iterate's
    # coordinates end monotone and the run is never classified as an oscillation.
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        u = torch.rand(6, generator=gen, dtype=torch.float64).tolist()
        K = int(torch.randint(2, 7, (1,), generator=gen))
        mode = ["softmax", "argmax"][int(u[5] > 0.7)]
        crowd = two_curator_population(0.2 + 0.6 * u[0], 4 * u[1], 4 * u[2], K, mode)
        rho = 0.5 * u[3]
        a, b = 0.05 + 0.3 * u[4], 0.2
        traj = [(a, b)]
        for _ in range(150):
            a, b = two_curator_map(a, b, crowd, rho, 0.125, 0.125)
            traj.append((a, b))
        t = torch.tensor(traj)
        steps = torch.diff(t[-40:], dim=0)
        assert ((steps >= -1e-12).all(0) | (steps <= 1e-12).all(0)).all()
        assert classify_long_run(t, rho * 0.125, rho * 0.125) != "oscillation"
