"""The predictor: ``H_t`` on an empirical law against the exact oracle, and the per-round predictions."""

from __future__ import annotations

import itertools
import math
from statistics import NormalDist

import pytest
import torch

from lightning_curate import kchoice, theory
from lightning_curate.theory.empirical import empirical_curation_weights
from lightning_curate.theory.ideal_learner import (
    check_improvement,
    improvement_violated,
    predict_round,
    run_level_z,
    selection_probabilities,
)

WORKED_P, WORKED_R = [0.5, 0.3, 0.2], [0.0, 1.0, 2.0]


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 8, 30])
@pytest.mark.parametrize("p, r, beta", [
    (WORKED_P, WORKED_R, 1.0),
    ([0.1] * 10, [5.0] + [0.0] * 9, 1.0),
    ([0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 3.0, 7.0, 1.0, -20.0], 1.0),
    ([0.001, 0.999], [10.0, 0.0], 2.0),
    ([0.3, 0.3, 0.4], [0.0, 100.0, -300.0], 1.0),
])
def test_weights_on_the_exact_law_match_the_oracle(p, r, beta, K):
    """With the exact p plugged in as a weighted empirical law, H is the oracle's to 1e-9."""
    H = empirical_curation_weights(r, K, beta, weights=p)
    expected = theory.curation_weights(p, r, K, beta)
    assert torch.allclose(H, expected, rtol=1e-9, atol=1e-12), (H, expected)


def test_theory_md_table():
    p = torch.tensor(WORKED_P, dtype=torch.float64)
    table = {2: [0.354523, 0.341591, 0.303886], 3: [0.293308, 0.343186, 0.363506],
             5: [0.242759, 0.332028, 0.425213]}
    for K, q in table.items():
        got = p * empirical_curation_weights(WORKED_R, K, 1.0, weights=WORKED_P)
        assert torch.allclose(got, torch.tensor(q, dtype=torch.float64), atol=1e-6)


def enumerate_law(p, r, K, m, mode):
    """Exact law of a kept sample by enumerating every K-tuple of candidates."""
    q = torch.zeros(len(p), dtype=torch.float64)
    for tup in itertools.product(range(len(p)), repeat=K):
        prob = math.prod(p[i] for i in tup)
        if mode == "softmax":
            for order, po in theory.plackett_luce_law([r[i] for i in tup], m).items():
                for k in order:
                    q[tup[k]] += prob * po / m
        else:
            for k in sorted(range(K), key=lambda k: (-r[tup[k]], k))[:m]:
                q[tup[k]] += prob / m
    return q


@pytest.mark.parametrize("mode", ["softmax", "argmax"])
@pytest.mark.parametrize("K, m", [(2, 1), (3, 1), (3, 2), (4, 2), (4, 3), (4, 4)])
def test_several_winners_and_best_of_k_match_enumeration(K, m, mode):
    p, r = [0.5, 0.3, 0.2], [0.0, 1.0, 1.0]  # a tie, for argmax
    H = empirical_curation_weights(r, K, 1.0, weights=p, num_winners=m, mode=mode)
    got = torch.tensor(p, dtype=torch.float64) * H
    assert torch.allclose(got, enumerate_law(p, r, K, m, mode), atol=1e-12)


def draw_candidates(p, r, N, K, seed):
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.multinomial(torch.tensor(p, dtype=torch.float64), N * K, replacement=True, generator=gen)
    return torch.tensor(r, dtype=torch.float64)[atoms].view(N, K), atoms.view(N, K)


def delta_method_se(p, r, K, M):
    """Standard errors of curated(p_hat)'s atoms when p_hat is the law of M i.i.d. draws of p."""
    p = torch.tensor(p, dtype=torch.float64)

    def f(v):
        return theory.curated_distribution(v / v.sum(), r, K)

    eps = 1e-6
    jac = torch.stack([(f(p + eps * e) - f(p - eps * e)) / (2 * eps) for e in torch.eye(len(p), dtype=torch.float64)],
                      dim=1)
    cov = (torch.diag(p) - torch.outer(p, p)) / M
    return torch.sqrt(torch.diag(jac @ cov @ jac.T))


@pytest.mark.parametrize("K", [2, 4])
def test_empirical_estimate_of_q_from_candidates(K):
    """Candidates drawn from a discrete p: the weighted empirical estimate of q is exactly
    curated(p_hat), and within 5 standard errors (delta method, M = N K draws) of curated(p)."""
    p, r, N = WORKED_P, WORKED_R, 5000
    rewards, atoms = draw_candidates(p, r, N, K, seed=K)
    out = predict_round(rewards, 1.0, labels=atoms, class_names=["a", "b", "c"])
    estimate = torch.tensor([out[f"predicted_curated_share_{c}"] for c in "abc"], dtype=torch.float64)
    p_hat = torch.bincount(atoms.flatten(), minlength=3).double() / (N * K)
    assert torch.allclose(estimate, theory.curated_distribution(p_hat, r, K), atol=1e-9)
    se = delta_method_se(p, r, K, N * K)
    assert ((estimate - theory.curated_distribution(p, r, K)).abs() <= 5 * se).all(), (estimate, se)
    # The predicted reward mean is E_q[r] of that law.
    assert out["predicted_reward_mean"] == pytest.approx(float((estimate * torch.tensor(r)).sum()), abs=1e-9)


def test_predicted_shares_match_what_kchoice_keeps():
    """The prediction is the law of the winners that kchoice draws from those very candidates."""
    p, r, N, K = [0.1] * 10, [5.0] + [0.0] * 9, 20000, 4
    rewards, atoms = draw_candidates(p, r, N, K, seed=7)
    out = predict_round(rewards, 1.0, labels=atoms)
    res = kchoice(rewards.float(), 1.0, seed=3, backend="torch")
    won = atoms.gather(1, res.index.view(N, 1)).flatten()
    share0 = float((won == 0).double().mean())
    q0 = out["predicted_curated_share_0"]
    assert abs(share0 - q0) < 5 * math.sqrt(q0 * (1 - q0) / N)
    assert abs(q0 - 0.338) < 0.02  # docs/THEORY.md: 0.338 after one round


def test_tilt_prediction_is_the_exponential_tilt():
    p, r = WORKED_P, WORKED_R
    rewards, atoms = draw_candidates(p, r, 4000, 4, seed=1)
    out = predict_round(rewards, 1.0, labels=atoms, class_names=["a", "b", "c"])
    p_hat = torch.bincount(atoms.flatten(), minlength=3).double() / atoms.numel()
    tilt = theory.tilted_distribution(p_hat, r)
    assert [out[f"tilt_share_{c}"] for c in "abc"] == pytest.approx(tilt.tolist(), abs=1e-12)
    assert out["tilt_reward_mean"] == pytest.approx(float((tilt * torch.tensor(r)).sum()), abs=1e-12)
    # K = 4 sits between no curation and the tilt.
    assert float((p_hat * torch.tensor(r)).sum()) < out["predicted_reward_mean"] < out["tilt_reward_mean"]


def test_real_data_mixes_into_the_prediction():
    rewards, atoms = draw_candidates(WORKED_P, WORKED_R, 2000, 3, seed=2)
    real_atoms = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    real_rewards = torch.tensor(WORKED_R)[real_atoms]
    alone = predict_round(rewards, 1.0, labels=atoms)
    mixed = predict_round(rewards, 1.0, labels=atoms, real_fraction=0.5, real_rewards=real_rewards,
                          real_labels=real_atoms)
    assert mixed["predicted_reward_mean"] == pytest.approx(0.5 * 0.7 + 0.5 * alone["predicted_curated_reward_mean"])
    assert mixed["predicted_share_0"] == pytest.approx(0.5 * 0.5 + 0.5 * alone["predicted_curated_share_0"])
    assert mixed["predicted_curated_share_0"] == alone["predicted_curated_share_0"]
    with pytest.raises(ValueError, match="real_rewards"):
        predict_round(rewards, 1.0, real_fraction=0.5)
    with pytest.raises(ValueError, match="real_labels"):
        predict_round(rewards, 1.0, labels=atoms, real_fraction=0.5, real_rewards=real_rewards)


def test_no_curation_predicts_no_change():
    rewards, atoms = draw_candidates(WORKED_P, WORKED_R, 1000, 4, seed=3)
    for kw in ({"mode": "uniform"}, {"num_winners": 4}):
        out = predict_round(rewards, 1.0, labels=atoms, **kw)
        assert out["predicted_reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-12)
    assert predict_round(rewards, 0.0)["predicted_reward_mean"] == pytest.approx(float(rewards.mean()), abs=1e-12)


def test_continuous_rewards_are_compressed_accurately():
    gen = torch.Generator().manual_seed(0)
    rewards = 2 * torch.randn(3000, 4, generator=gen, dtype=torch.float64)
    exact = predict_round(rewards, 1.0, max_support=100_000)
    small = predict_round(rewards, 1.0, max_support=512)
    assert small["prediction_support"] == 512 and exact["prediction_support"] == 12000
    assert small["predicted_reward_mean"] == pytest.approx(exact["predicted_reward_mean"], abs=2e-3)
    H = empirical_curation_weights(rewards, 4, 1.0)
    assert float(H.mean()) == pytest.approx(1.0, abs=1e-12)
    assert (H > 0).all() and (H < 4).all()


def test_monotone_improvement_bound_and_check():
    rewards, _ = draw_candidates(WORKED_P, WORKED_R, 3000, 4, seed=4)
    out = predict_round(rewards, 1.0, round_idx=2)
    w = torch.exp(rewards)
    assert out["exp_reward_mean"] == pytest.approx(float(w.mean()))
    # docs/THEORY.md 4.2 on the empirical law (r* = its max): the ideal learner satisfies it.
    var = float(w.var(unbiased=False))
    assert out["exp_reward_lower_bound"] == pytest.approx(float(w.mean()) + 0.75 * var / math.exp(2.0))
    assert out["predicted_exp_reward_mean"] >= out["exp_reward_lower_bound"] > out["exp_reward_mean"]
    assert out["rlhf_coefficient"] == pytest.approx(0.5)
    assert math.isnan(predict_round(rewards, 1.0, num_winners=2)["exp_reward_lower_bound"])
    # A next round at the ideal learner's value passes; one that did not improve is flagged.
    nxt = out
    assert "exp_reward_lower_bound" in nxt and "predicted_reward_mean" in nxt
    assert 0 < out["exp_reward_lower_bound_stderr"] < 0.1
    good = {"exp_reward_mean": out["predicted_exp_reward_mean"], "exp_reward_stderr": out["exp_reward_stderr"]}
    bad = {"exp_reward_mean": out["exp_reward_mean"] - 0.1, "exp_reward_stderr": out["exp_reward_stderr"]}
    assert check_improvement(nxt, good)["improvement_violation"] == 0.0
    verdict = check_improvement(nxt, bad)
    assert verdict["improvement_violation"] == 1.0 and verdict["improvement_margin"] < -3
    assert improvement_violated(1.0, 2.0) and not improvement_violated(1.9, 2.0, stderr=0.1)
    assert not improvement_violated(math.nan, 2.0)


def test_the_improvement_check_counts_the_learners_jitter_and_holds_for_the_whole_run():
    previous = {"exp_reward_lower_bound": 1.0, "exp_reward_lower_bound_stderr": 0.3}
    current = {"exp_reward_mean": 0.0, "exp_reward_stderr": 0.4}
    # Sampling alone: a margin of -1 / hypot(0.3, 0.4) = -2; with jitter 0.75 x 0.4 = 0.3 on top:
    # -1 / hypot(0.3, 0.4, 0.3) = -1 / sqrt(0.34).
    assert check_improvement(previous, current)["improvement_margin"] == pytest.approx(-2.0)
    noisy = check_improvement(previous, current, learner_noise=0.75)["improvement_margin"]
    assert noisy == pytest.approx(-1 / math.sqrt(0.34))
    # One round keeps z; ten split the one-sided tail of z = 3 (0.00135) ten ways.
    assert run_level_z(1) == pytest.approx(3.0)
    assert 1 - NormalDist().cdf(run_level_z(10)) == pytest.approx((1 - NormalDist().cdf(3.0)) / 10)
    # A margin of -3.4 warns for one round at z = 3, not at the run-level threshold of ten rounds.
    far = {"exp_reward_mean": 1.0 - 3.4 * 0.5, "exp_reward_stderr": 0.4}
    assert check_improvement(previous, far)["improvement_violation"] == 1.0
    assert check_improvement(previous, far, z=run_level_z(10))["improvement_violation"] == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        predict_round(torch.zeros(5), 1.0)
    with pytest.raises(ValueError, match="finite"):
        predict_round(torch.tensor([[0.0, math.nan]]), 1.0)
    with pytest.raises(ValueError, match=r"num_winners must be an int in 1\.\.2, got 3"):
        predict_round(torch.zeros(3, 2), 1.0, num_winners=3)
    with pytest.raises(ValueError, match=r"mode must be one of \('softmax', 'argmax', 'uniform'\), got 'best'"):
        predict_round(torch.zeros(3, 2), 1.0, mode="best")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0.0, got -1"):
        predict_round(torch.zeros(3, 2), -1)
    with pytest.raises(ValueError, match="real_fraction must be a finite number <= 1.0, got 2"):
        predict_round(torch.zeros(3, 2), 1.0, real_fraction=2)
    with pytest.raises(ValueError, match="max_support must be an int >= 2, got 1"):
        predict_round(torch.zeros(3, 2), 1.0, max_support=1)
    with pytest.raises(ValueError, match="labels"):
        predict_round(torch.zeros(3, 2), 1.0, labels=torch.zeros(5), class_names=["a"])


@pytest.mark.parametrize("offset", [2000.0, -2000.0])
def test_predictions_at_rewards_past_exps_range_keep_their_shift_free_columns(offset):
    """E[exp(beta r)] (the improvement bound's scale) has no float64 value for beta * r past +-700:
    those columns are NaN, and every shift-free prediction is the shifted rewards' plus the offset."""
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(400, 4, generator=gen, dtype=torch.float64)
    base = predict_round(r, beta=1.0)
    far = predict_round(r + offset, beta=1.0)
    for key in ("exp_reward_mean", "exp_reward_stderr", "predicted_exp_reward_mean", "exp_reward_lower_bound"):
        assert math.isnan(far[key]) and math.isfinite(base[key]), key
    for key in ("predicted_reward_mean", "predicted_curated_reward_mean", "tilt_reward_mean"):
        assert far[key] == pytest.approx(base[key] + offset, abs=1e-9), key


def test_selection_spread_is_the_winners_variance_given_each_slots_candidates():
    """Slot 1: rewards 0 and log 3 -> softmax picks them w.p. 1/4, 3/4, variance (3/16) log(3)^2;
    slot 2: equal rewards -> no spread in reward, but a coin flip between two classes."""
    log3 = math.log(3.0)
    rewards = torch.tensor([[0.0, log3], [1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[0, 1], [0, 1]])
    out = predict_round(rewards, 1.0, labels=labels, class_names=["a", "b"])
    assert out["selection_reward_sd"] == pytest.approx(math.sqrt((3 / 16 * log3**2 + 0.0) / 2), rel=1e-12)
    # Membership of class a: Bernoulli(1/4) in slot 1, Bernoulli(1/2) in slot 2.
    assert out["selection_share_sd_a"] == pytest.approx(math.sqrt((3 / 16 + 1 / 4) / 2), rel=1e-12)
    assert out["selection_share_sd_b"] == out["selection_share_sd_a"]
    # Best-of-K is no draw at all given the candidates: kchoice breaks ties by the lowest index,
    # so even slot 2's tie always keeps its class-a candidate. Uniform is the slots' variance.
    best = predict_round(rewards, 1.0, mode="argmax", labels=labels, class_names=["a", "b"])
    assert best["selection_reward_sd"] == 0.0
    assert best["selection_share_sd_a"] == 0.0 and best["selection_share_sd_b"] == 0.0
    tied = torch.tensor([[1.0, 1.0, 0.5]] * 5)
    assert kchoice(tied, mode="argmax", seed=0, backend="torch").index.tolist() == [0] * 5
    assert selection_probabilities(tied, 1.0, "argmax")[:, 0].tolist() == [1.0] * 5
    uniform = predict_round(rewards, 1.0, mode="uniform")
    assert uniform["selection_reward_sd"] == pytest.approx(math.sqrt((log3**2 / 4) / 2), rel=1e-12)
    # Several winners a slot: no one-winner spread (the fidelity's noise rule falls back to the
    # curated samples' spread).
    assert not any(k.startswith("selection_") for k in predict_round(rewards, 1.0, num_winners=2))
