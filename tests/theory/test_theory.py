"""Tests of ``lightning_curate.theory``, the exact oracle (docs/THEORY.md sections 2-4)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_curate.theory import laws as theory

P_EX = (0.5, 0.3, 0.2)
R_EX = (0.0, 1.0, 2.0)

# docs/THEORY.md section 2, worked example (beta = 1), 6 decimals.
WORKED = {
    1: (0.5, 0.3, 0.2),
    2: (0.354523, 0.341591, 0.303886),
    3: (0.293308, 0.343186, 0.363506),
    5: (0.242759, 0.332028, 0.425213),
    math.inf: (0.179000, 0.291944, 0.529056),
}

RANDOM_LAWS = [  # (p, r, beta)
    ((0.5, 0.3, 0.2), (0.0, 1.0, 2.0), 1.0),
    ((0.1, 0.2, 0.3, 0.4), (-1.0, 0.5, 2.0, 0.0), 0.7),
    ((0.05, 0.15, 0.3, 0.2, 0.3), (3.0, 1.0, -2.0, 0.5, 0.0), 1.5),
    ((0.25, 0.0, 0.75), (1.0, 5.0, -1.0), 2.0),  # an atom of mass 0
    ((0.6, 0.4), (4.0, 4.0), 3.0),  # equal rewards: no curation effect
]


@pytest.mark.parametrize("K", list(WORKED), ids=str)
def test_worked_example_table(K):
    q = theory.curated_distribution(P_EX, R_EX, K, 1.0)
    assert q.dtype == torch.float64
    assert [round(x, 6) for x in q.tolist()] == pytest.approx(WORKED[K], abs=1e-12)


def test_tilted_distribution_is_the_K_inf_limit():
    tilt = theory.tilted_distribution(P_EX, R_EX, 1.0)
    w = torch.exp(torch.tensor(R_EX, dtype=torch.float64))
    p = torch.tensor(P_EX, dtype=torch.float64)
    torch.testing.assert_close(tilt, p * w / (p * w).sum())
    torch.testing.assert_close(theory.curated_distribution(P_EX, R_EX, math.inf), tilt)
    # Large finite K approaches the tilt at rate O(1/K) (this K uses the integral path).
    gaps = [float((theory.curated_distribution(P_EX, R_EX, K) - tilt).abs().max()) for K in (20, 200, 2000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3


def test_iterated_example_rho_0_collapses():
    traj = theory.retraining_trajectory([0.1] * 10, [5.0] + [0.0] * 9, 4, 1.0, real_fraction=0.0, rounds=6)
    assert traj.shape == (7, 10)
    torch.testing.assert_close(traj[0], torch.full((10,), 0.1, dtype=torch.float64))
    assert [round(x, 3) for x in traj[1:4, 0].tolist()] == [0.338, 0.798, 0.996]
    assert traj[4:, 0].min() > 0.9999  # collapse onto the top level set


def test_iterated_example_rho_half_is_stable():
    traj = theory.retraining_trajectory([0.1] * 10, [5.0] + [0.0] * 9, 4, 1.0, real_fraction=0.5, rounds=30)
    assert [round(x, 3) for x in traj[1:7, 0].tolist()] == [0.219, 0.359, 0.461, 0.503, 0.516, 0.519]
    assert abs(float(traj[-1, 0]) - 0.52) < 0.005
    assert traj[:, 1:].min() >= 0.05  # every other class keeps rho * 0.1
    torch.testing.assert_close(traj.sum(dim=1), torch.ones(31, dtype=torch.float64))


_WIDE = RANDOM_LAWS[2]  # beta * (max r - min r) = 7.5: weights 1800x apart
_INTEGRAL_CASES = [pytest.param(*law, K, id=f"law{i}-K{K}")
                   for i, law in enumerate(RANDOM_LAWS) for K in (2, 3, 7, 60) if law is not _WIDE]
# Wide weights and large K: the t-form integrand K (sum_i p_i t^(w_i/w(x)))^(K-1)
# has a spike of width ~ w(x) / (K E_p[w]) at t = 1, which the former t-space
# quadrature under-resolved (relative error 9e-8 at K = 20, 1.5e-4 at K = 60).
_INTEGRAL_CASES += [pytest.param(*_WIDE, K, id=f"wide-K{K}") for K in (2, 3, 7, 20)]


def _weights_by_counts(p: torch.Tensor, w: torch.Tensor, K: int) -> torch.Tensor:
    """Exact ``H`` by enumerating the count vectors of the ``K - 1`` other
    candidates (multinomial law), vectorised: fast for K in the hundreds."""
    counts = torch.zeros(1, 0, dtype=torch.int64)
    left = torch.tensor([K - 1])
    for _ in range(p.numel() - 1):
        reps = left + 1
        c = torch.cat([torch.arange(int(n) + 1) for n in left])
        counts = torch.cat([counts.repeat_interleave(reps, 0), c[:, None]], dim=1)
        left = left.repeat_interleave(reps) - c
    counts = torch.cat([counts, left[:, None]], dim=1).to(torch.float64)
    log_p = torch.where(counts > 0, counts * torch.log(p), torch.zeros(()))
    log_prob = math.lgamma(K) + (log_p - torch.lgamma(counts + 1)).sum(dim=1)
    others = counts @ w
    return (torch.exp(log_prob) * K * w[:, None] / (w[:, None] + others)).sum(dim=1)


@pytest.mark.parametrize("p, r, beta, K", _INTEGRAL_CASES)
def test_integral_form_matches_exact_enumeration(p, r, beta, K):
    p = torch.tensor(p, dtype=torch.float64)
    r = torch.tensor(r, dtype=torch.float64)
    w = torch.exp(beta * (r - r.max()))
    support = torch.nonzero(p > 0).flatten()
    exact = theory._weights_exact(p, w, K, support)
    integral = theory._weights_integral(p, w, K)
    torch.testing.assert_close(integral[support], exact[support], atol=0, rtol=1e-12)


@pytest.mark.parametrize("p, r, beta, K", [
    pytest.param(*_WIDE, 60, id="wide-K60"),
    pytest.param((0.01, 0.49, 0.5), (30.0, 1.0, -20.0), 1.0, 1000, id="weights-e50-apart-K1000"),
    pytest.param((0.2, 0.5, 0.3), (0.0, -40.0, -80.0), 1.0, 400, id="weights-e80-apart-K400"),
])
def test_integral_form_wide_weights_large_K(p, r, beta, K):
    """Where exact enumeration by combinations is too slow: against the count-vector
    enumeration, to 1e-12 relative even for atoms whose H is tiny."""
    p = torch.tensor(p, dtype=torch.float64)
    r = torch.tensor(r, dtype=torch.float64)
    w = torch.exp(beta * (r - r.max()))
    exact = _weights_by_counts(p, w, K)
    integral = theory._weights_integral(p, w, K)
    torch.testing.assert_close(integral, exact, atol=0, rtol=1e-12)
    assert float((p * integral).sum()) == pytest.approx(1.0, abs=1e-13)  # q = p * H is a law


def test_count_enumeration_matches_combinations():
    """The test oracle above agrees with theory._weights_exact."""
    p = torch.tensor((0.05, 0.15, 0.3, 0.2, 0.3), dtype=torch.float64)
    w = torch.exp(1.5 * (torch.tensor((3.0, 1.0, -2.0, 0.5, 0.0), dtype=torch.float64) - 3.0))
    for K in (1, 2, 5, 9):
        torch.testing.assert_close(_weights_by_counts(p, w, K),
                                   theory._weights_exact(p, w, K, torch.arange(5)), atol=0, rtol=1e-13)


def test_large_K_switches_to_the_integral(monkeypatch):
    """Beyond _MAX_EXACT_TERMS the integral is used, with the same answer."""
    p, r = (0.1, 0.2, 0.3, 0.4), (-1.0, 0.5, 2.0, 0.0)
    exact = theory.curation_weights(p, r, 9, 0.7)
    monkeypatch.setattr(theory, "_MAX_EXACT_TERMS", 0)
    monkeypatch.setattr(theory, "_weights_exact", None)  # would fail if called
    torch.testing.assert_close(theory.curation_weights(p, r, 9, 0.7), exact, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("p, r, beta", RANDOM_LAWS)
@pytest.mark.parametrize("K", [1, 2, 4, 11, math.inf])
def test_curated_law_basic_properties(p, r, beta, K):
    q = theory.curated_distribution(p, r, K, beta)
    p_t = torch.tensor(p, dtype=torch.float64)
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (q >= 0).all() and (q[p_t == 0] == 0).all()
    H = theory.curation_weights(p, r, K, beta)
    torch.testing.assert_close(q, p_t * H / (p_t * H).sum())
    if K != math.inf:
        assert (H > 0).all() and (H < K + 1e-12).all()
        assert float((p_t * H).sum()) == pytest.approx(1.0, abs=1e-9)  # q = p * H is already a law
    if K == 1:
        torch.testing.assert_close(q, p_t)
    # No curation at beta = 0, whatever K.
    torch.testing.assert_close(theory.curated_distribution(p, r, K, 0.0), p_t)


@pytest.mark.parametrize("p, r, beta", RANDOM_LAWS)
@pytest.mark.parametrize("K", [1, 2, 4, 11])
def test_improvement_lower_bound_holds_for_the_ideal_learner(p, r, beta, K):
    q = theory.curated_distribution(p, r, K, beta)
    after = theory.expected_exp_reward(q, r, beta)
    before = theory.expected_exp_reward(p, r, beta)
    bound = theory.improvement_lower_bound(p, r, K, beta)
    assert bound >= before - 1e-12
    assert after >= bound - 1e-12 * max(1.0, abs(bound))


def test_expected_reward_never_decreases_along_the_loop():
    r = [5.0] + [0.0] * 9
    for rho in (0.0, 0.5):
        traj = theory.retraining_trajectory([0.1] * 10, r, 4, 1.0, real_fraction=rho, rounds=10)
        values = [theory.expected_exp_reward(p, r, 1.0) for p in traj]
        assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


def test_t_rounds_of_the_tilt_are_one_tilt_by_t_beta():
    """docs/THEORY.md 4.1: with K = inf, p_t is proportional to p_0 exp(t beta r)."""
    p, r = (0.1, 0.2, 0.3, 0.4), (-1.0, 0.5, 2.0, 0.0)
    traj = theory.retraining_trajectory(p, r, math.inf, 0.5, rounds=3)
    torch.testing.assert_close(traj[3], theory.tilted_distribution(p, r, 3 * 0.5))
    assert theory.rlhf_coefficient(3, 0.5) == pytest.approx(1 / 1.5)
    assert theory.rlhf_coefficient(0, 0.5) == math.inf


@pytest.mark.parametrize("scores, m", [
    ([0.0, 1.0, -0.5, 2.0], 1),
    ([0.0, 1.0, -0.5, 2.0], 2),
    ([0.0, 1.0, -0.5, 2.0], 4),
    ([0.0, -math.inf, 3.0], 2),
    ([100.0, 100.0, 99.0], 3),
])
def test_plackett_luce_law(scores, m):
    law = theory.plackett_luce_law(scores, m)
    assert len(law) == math.perm(len(scores), m)
    assert sum(law.values()) == pytest.approx(1.0, abs=1e-12)
    s = torch.tensor(scores, dtype=torch.float64)
    first = torch.zeros(len(scores), dtype=torch.float64)
    for order, prob in law.items():
        first[order[0]] += prob
    torch.testing.assert_close(first, torch.softmax(s, 0))
    if -math.inf in scores and m == 2:
        assert all(prob == 0.0 for order, prob in law.items() if 1 in order)


def test_plackett_luce_two_winners_by_hand():
    law = theory.plackett_luce_law([0.0, math.log(2.0), math.log(3.0)], 2)
    assert law[(2, 1)] == pytest.approx(3 / 6 * 2 / 3)
    assert law[(0, 2)] == pytest.approx(1 / 6 * 3 / 5)


HALF, STEP = (0.5, 0.5), (0.0, 1.0)  # a fair coin and a reward on its second side


@pytest.mark.parametrize("call, match", [
    (lambda: theory.curated_distribution((0.5, 0.6), (0.0, 1.0), 2), "sum to 1"),
    (lambda: theory.curated_distribution((1.5, -0.5), (0.0, 1.0), 2), "non-negative"),
    (lambda: theory.curated_distribution((0.5, 0.5), (0.0, 1.0, 2.0), 2), "same length"),
    (lambda: theory.curated_distribution((0.5, 0.5), (0.0, math.nan), 2), "r must be finite"),
    (lambda: theory.curated_distribution((0.5, 0.5), (0.0, math.inf), 2), "r must be finite"),
    (lambda: theory.curated_distribution((), (), 2), "p must not be empty"),
    (lambda: theory.curated_distribution(HALF, STEP, 0), r"K must be an int >= 1 or math.inf, got 0"),
    (lambda: theory.curated_distribution(HALF, STEP, 2.5), r"K must be an int >= 1 or math.inf, got 2.5"),
    (lambda: theory.curated_distribution(HALF, STEP, True), r"K must be an int >= 1 or math.inf, got True"),
    (lambda: theory.curated_distribution(HALF, STEP, 2, -1.0), r"beta must be a finite number >= 0.0, got -1.0"),
    (lambda: theory.curated_distribution(HALF, STEP, 2, math.nan), r"beta must be a finite number, got nan"),
    (lambda: theory.plackett_luce_law([0.0, 1.0], 3), r"num_winners must be an int in 1\.\.2, got 3"),
    (lambda: theory.plackett_luce_law([0.0, 1.0], 0), r"num_winners must be an int in 1\.\.2, got 0"),
    (lambda: theory.retraining_trajectory(HALF, STEP, 2, real_fraction=1.5),
     r"real_fraction must be a finite number <= 1.0, got 1.5"),
    (lambda: theory.retraining_trajectory(HALF, STEP, 2, rounds=-1), "rounds must be an int >= 0"),
    (lambda: theory.rlhf_optimum(HALF, STEP, rounds=1.5), "rounds must be an int >= 0, got 1.5"),
    (lambda: theory.curated_share_map(1.5, 1.0, 0.0, 2), "share must be a finite number <= 1.0"),
    (lambda: theory.improvement_lower_bound((0.5, 0.6), (0.0, 1.0), 2), "sum to 1"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
