"""Fidelity columns: exact arithmetic on hand-made rows, and the noise rule."""

import math

import pytest

from lightning_curate.loop.fidelity import (
    FIDELITY_BAND,
    aggregate_fidelity,
    band_tally,
    band_verdict,
    fidelity_columns,
    learner_gap_columns,
    mean_learner_gap,
    round_zero_quality,
)


def test_reward_fidelity_is_the_ratio_of_observed_to_predicted_move():
    prev = {"reward_mean": -2.0, "reward_std": 1.0, "predicted_reward_mean": -1.0}
    out = fidelity_columns(prev, {"reward_mean": -1.5}, num_candidates=40_000)
    assert out["reward_fidelity"] == 0.5
    assert out["fidelity_reliable"] == 1.0
    # se = hypot(1 * sqrt(2 / 4e4), 0.5 * 1 / sqrt(4e4)) / 1
    assert out["reward_fidelity_stderr"] == pytest.approx(math.hypot(math.sqrt(2 / 4e4), 0.5 / 200))
    # An overshooting learner reads above 1, a learner that went backwards below 0.
    assert fidelity_columns(prev, {"reward_mean": -0.5}, num_candidates=40_000)["reward_fidelity"] == 1.5
    assert fidelity_columns(prev, {"reward_mean": -2.5}, num_candidates=40_000)["reward_fidelity"] == -0.5


def test_a_predicted_move_within_noise_gives_no_ratio():
    # Predicted move 0.01 with reward_std 1 on 100 candidates: se ~ 0.17, far above the move.
    prev = {"reward_mean": 0.0, "reward_std": 1.0, "predicted_reward_mean": 0.01}
    out = fidelity_columns(prev, {"reward_mean": 0.5}, num_candidates=100)
    assert math.isnan(out["reward_fidelity"]) and out["fidelity_reliable"] == 0.0
    # The same move on 10^8 candidates is well above its noise.
    assert fidelity_columns(prev, {"reward_mean": 0.005}, num_candidates=10**8)["reward_fidelity"] == pytest.approx(0.5)
    # A row's own prediction standard error is used when it has one.
    noisy = dict(prev, predicted_reward_stderr=1.0)
    assert math.isnan(fidelity_columns(noisy, {"reward_mean": 0.005}, num_candidates=10**8)["reward_fidelity"])


def test_share_columns_gain_set_and_l1_gap():
    prev = {"reward_mean": 0.0, "reward_std": 1.0, "predicted_reward_mean": 1.0,
            "share_a": 0.25, "share_b": 0.25, "share_c": 0.5,
            "predicted_share_a": 0.45, "predicted_share_b": 0.35, "predicted_share_c": 0.2}
    cur = {"reward_mean": 1.0, "share_a": 0.35, "share_b": 0.30, "share_c": 0.35}
    out = fidelity_columns(prev, cur, num_candidates=10**6)
    assert out["class_fidelity_a"] == pytest.approx(0.5)
    assert out["class_fidelity_b"] == pytest.approx(0.5)
    assert out["class_fidelity_c"] == pytest.approx(0.5)
    # a and b are predicted to grow: 0.5 -> 0.8 predicted, 0.65 observed.
    assert out["gain_share_fidelity"] == pytest.approx(0.5)
    def se(share):
        return math.sqrt(share * (1 - share) / 10**6)

    # observed move 0.5 -> 0.65, predicted 0.5 -> 0.8 (no n_synthetic: no curated-draw term)
    expected = math.hypot(math.hypot(se(0.5), se(0.65)), 0.5 * se(0.8)) / 0.3
    assert out["gain_share_fidelity_stderr"] == pytest.approx(expected, rel=1e-12)
    assert out["l1_gap_to_prediction"] == pytest.approx(0.10 + 0.05 + 0.15)


def test_no_prediction_no_columns():
    assert fidelity_columns({"reward_mean": 0.0}, {"reward_mean": 1.0}, num_candidates=10) == {}


def test_aggregate_skips_rounds_without_a_meaningful_ratio():
    rows = [{"round": 0}, {"reward_fidelity": 0.8}, {"reward_fidelity": math.nan}, {"reward_fidelity": 1.0}]
    assert aggregate_fidelity(rows) == pytest.approx(0.9)
    assert math.isnan(aggregate_fidelity([{"reward_fidelity": math.nan}]))


def test_round_zero_quality():
    out = round_zero_quality({"a": 0.3, "b": 0.7}, {"a": 0.5, "b": 0.5}, model_distance=0.3, real_distance=0.1)
    assert out["p0_share_error_a"] == pytest.approx(-0.2) and out["p0_share_error_b"] == pytest.approx(0.2)
    assert out["p0_share_error_max"] == pytest.approx(0.2)
    assert out["p0_distance_ratio"] == pytest.approx(3.0)


def test_a_collapsed_round_reports_no_ratio():
    # Every candidate alike: reward_std 0, shares exactly 1 / 0, and a prediction equal up to round-off.
    prev = {"reward_mean": 5.0, "reward_std": 0.0, "predicted_reward_mean": 5.0 - 1e-13,
            "share_a": 1.0, "share_b": 0.0, "predicted_share_a": 1.0 - 1e-13, "predicted_share_b": 1e-13}
    out = fidelity_columns(prev, {"reward_mean": 5.0, "share_a": 1.0, "share_b": 0.0}, num_candidates=80_000)
    assert math.isnan(out["reward_fidelity"]) and out["fidelity_reliable"] == 0.0
    assert math.isnan(out["class_fidelity_a"]) and math.isnan(out["gain_share_fidelity"])
    assert out["l1_gap_to_prediction"] == pytest.approx(2e-13)


def test_the_learners_refit_jitter_widens_the_noise():
    # 40,000 candidates, reward_std 1: each mean's sampling error is 0.005, and so is the prediction's.
    prev = {"reward_mean": 0.0, "reward_std": 1.0, "predicted_reward_mean": 0.06,
            "share_a": 0.5, "predicted_share_a": 0.52}
    cur = {"reward_mean": 0.03, "reward_std": 1.0, "share_a": 0.51}
    n = 40_000
    out = fidelity_columns(prev, cur, num_candidates=n)
    assert out["reward_fidelity"] == pytest.approx(0.5) and out["class_fidelity_a"] == pytest.approx(0.5)
    # A learner whose refits land 3 sampling errors apart: the move's noise is 0.005 * sqrt(2 + 9 + 1)
    # = 0.0173, 3 x that 0.052 < 0.06 for the reward (kept, with a wider error); the share's is
    # 0.0025 * sqrt(12), 3 x that 0.026 > its 0.02 move (dropped).
    jittery = fidelity_columns(prev, cur, num_candidates=n, learner_noise=3.0)
    assert jittery["learner_noise"] == 3.0 and out["learner_noise"] == 0.0  # each row says its rule
    assert jittery["reward_fidelity"] == pytest.approx(0.5)
    expected = math.hypot(0.005 * math.sqrt(11), 0.5 * 0.005) / 0.06
    assert jittery["reward_fidelity_stderr"] == pytest.approx(expected)
    assert math.isnan(jittery["class_fidelity_a"]) and math.isnan(jittery["gain_share_fidelity"])
    # 4 sampling errors: 0.005 * sqrt(19) * 3 = 0.065 > 0.06, the reward's move is noise too.
    louder = fidelity_columns(prev, cur, num_candidates=n, learner_noise=4.0)
    assert math.isnan(louder["reward_fidelity"]) and louder["fidelity_reliable"] == 0.0


def test_learner_gap_is_the_reward_against_the_rounds_own_training_set():
    out = learner_gap_columns({"reward_mean": -0.045, "reward_std": 0.2}, -0.04, num_candidates=40_000)
    assert out["training_set_reward_mean"] == -0.04
    assert out["learner_gap"] == pytest.approx(-0.005, abs=1e-15)
    assert out["learner_gap_stderr"] == pytest.approx(0.001)  # 0.2 / sqrt(4e4): the set's mean is exact
    # A learner that overshoots its data has a positive gap.
    assert learner_gap_columns({"reward_mean": 1.0, "reward_std": 1.0}, 0.5, num_candidates=1)["learner_gap"] == 0.5


def test_the_gap_and_the_curated_draw_split_the_fidelity_shortfall_exactly():
    """observed move = predicted move + (training set - predicted) + learner gap, so
    fidelity = 1 + (draw + gap) / predicted move (docs/THEORY.md 5.5)."""
    prev = {"reward_mean": -0.0495, "reward_std": 0.1, "predicted_reward_mean": -0.0372}
    cur = {"reward_mean": -0.0422, "reward_std": 0.1}
    gap = learner_gap_columns(cur, -0.0381, num_candidates=8000)["learner_gap"]
    fid = fidelity_columns(prev, cur, num_candidates=8000)["reward_fidelity"]
    move = prev["predicted_reward_mean"] - prev["reward_mean"]
    draw = -0.0381 - prev["predicted_reward_mean"]
    assert fid == pytest.approx(1 + (draw + gap) / move, rel=1e-12)
    assert fid == pytest.approx(0.0073 / 0.0123, rel=1e-9)


def test_mean_learner_gap_weighs_rounds_by_how_well_they_know_their_gap():
    rows = [{"round": 0, "learner_gap": -1.0, "learner_gap_stderr": 0.1},  # p_0 against the data: not counted
            {"round": 1, "learner_gap": -0.02, "learner_gap_stderr": 0.02},
            {"round": 2, "learner_gap": -0.004, "learner_gap_stderr": 0.001},
            {"round": 3, "learner_gap": math.nan, "learner_gap_stderr": 0.001}]
    mean, se = mean_learner_gap(rows)
    w1, w2 = 1 / 0.02**2, 1 / 0.001**2
    assert mean == pytest.approx((w1 * -0.02 + w2 * -0.004) / (w1 + w2), rel=1e-12)
    assert se == pytest.approx((w1 + w2) ** -0.5, rel=1e-12)
    # The learner's refit jitter widens each round's error: learner_noise 1 -> sqrt(2) times.
    jittery = [dict(r, learner_noise=1.0) for r in rows]
    assert mean_learner_gap(jittery)[0] == pytest.approx(mean, rel=1e-12)
    assert mean_learner_gap(jittery)[1] == pytest.approx(math.sqrt(2) * se, rel=1e-12)
    # Rounds that disagree beyond their errors widen the mean's error by sqrt(chi^2 / (k - 1)).
    apart = [{"round": 1, "learner_gap": 0.0, "learner_gap_stderr": 0.001},
             {"round": 2, "learner_gap": -0.01, "learner_gap_stderr": 0.001}]
    mean, se = mean_learner_gap(apart)
    assert mean == pytest.approx(-0.005) and se == pytest.approx(0.001 / math.sqrt(2) * math.sqrt(50.0), rel=1e-9)
    # A row without a positive error (every candidate alike) is left out of the weights.
    flat = apart + [{"round": 3, "learner_gap": 0.5, "learner_gap_stderr": 0.0}]
    assert mean_learner_gap(flat) == mean_learner_gap(apart)
    # Without errors: the plain mean, and no error; without curated rounds: nothing.
    plain = [{"round": 1, "learner_gap": -0.02}, {"round": 2, "learner_gap": -0.004}]
    mean, se = mean_learner_gap(plain)
    assert mean == pytest.approx(-0.012) and math.isnan(se)
    assert all(math.isnan(v) for v in mean_learner_gap(rows[:1]))


def test_the_curated_draw_widens_the_prediction_noise():
    """Round t + 1 trains on n_synthetic draws from the curated law: their mean misses the law's
    by curated_std / sqrt(n_synthetic), times the curated part of the set (1 - real_fraction)."""
    prev = {"reward_mean": 0.0, "reward_std": 0.1, "predicted_reward_mean": 0.01, "curated_reward_std": 0.2}
    cur = {"reward_mean": 0.008, "reward_std": 0.1, "n_synthetic": 2000, "real_fraction": 0.0}
    n = 40_000
    se_obs, se_pred = 0.1 * math.sqrt(2 / n), math.hypot(0.1 / 200, 0.2 / math.sqrt(2000))
    # Without the draw: 3 * hypot(se_obs, 0.1 / 200) = 0.0026 < 0.01, a ratio; with it, 3 * 0.0048 > 0.01.
    no_draw = fidelity_columns(prev, {"reward_mean": 0.008, "reward_std": 0.1}, num_candidates=n)
    assert no_draw["reward_fidelity"] == pytest.approx(0.8)
    assert math.isnan(fidelity_columns(prev, cur, num_candidates=n)["reward_fidelity"])
    # A larger move stands clear of it; its error counts the draw.
    wide = dict(prev, predicted_reward_mean=0.1)
    out = fidelity_columns(wide, dict(cur, reward_mean=0.08), num_candidates=n)
    assert out["reward_fidelity"] == pytest.approx(0.8)
    assert out["reward_fidelity_stderr"] == pytest.approx(math.hypot(se_obs, 0.8 * se_pred) / 0.1, rel=1e-12)
    # Half real data: half the set is curated, half the draw's effect on its mean.
    half = fidelity_columns(wide, dict(cur, reward_mean=0.08, real_fraction=0.5), num_candidates=n)
    se_half = math.hypot(0.1 / 200, 0.5 * 0.2 / math.sqrt(2000))
    assert half["reward_fidelity_stderr"] == pytest.approx(math.hypot(se_obs, 0.8 * se_half) / 0.1, rel=1e-12)


def test_the_curated_draw_widens_a_class_shares_noise():
    prev = {"reward_mean": 0.0, "reward_std": 1.0, "predicted_reward_mean": 1.0,
            "share_a": 0.5, "share_b": 0.5, "predicted_share_a": 0.52, "predicted_share_b": 0.48,
            "curated_share_a": 0.5, "curated_share_b": 0.5}
    cur = {"reward_mean": 1.0, "share_a": 0.516, "share_b": 0.484}
    n = 10**6
    # Sampling alone: se ~ 0.0009, the 0.02 move stands clear; the draw of 500 curated samples
    # (binomial 0.5: 0.022) swamps it.
    assert fidelity_columns(prev, cur, num_candidates=n)["class_fidelity_a"] == pytest.approx(0.8)
    drawn = fidelity_columns(prev, dict(cur, n_synthetic=500, real_fraction=0.0), num_candidates=n)
    assert math.isnan(drawn["class_fidelity_a"]) and math.isnan(drawn["gain_share_fidelity"])
    many = fidelity_columns(prev, dict(cur, n_synthetic=10**6, real_fraction=0.0), num_candidates=n)
    assert many["class_fidelity_a"] == pytest.approx(0.8)


def test_a_rows_selection_spread_replaces_the_curated_spread():
    """With one winner a slot the row knows how much a winner varies given its candidates; that,
    not the curated samples' whole spread (an upper bound), sets the draw's noise."""
    prev = {"reward_mean": 0.0, "reward_std": 0.1, "predicted_reward_mean": 0.1, "curated_reward_std": 0.2,
            "selection_reward_sd": 0.05}
    cur = {"reward_mean": 0.08, "reward_std": 0.1, "n_synthetic": 2000, "real_fraction": 0.0}
    n = 40_000
    se_obs, se_pred = 0.1 * math.sqrt(2 / n), math.hypot(0.1 / 200, 0.05 / math.sqrt(2000))
    out = fidelity_columns(prev, cur, num_candidates=n)
    assert out["reward_fidelity_stderr"] == pytest.approx(math.hypot(se_obs, 0.8 * se_pred) / 0.1, rel=1e-12)
    shares = {"share_a": 0.5, "predicted_share_a": 0.52, "curated_share_a": 0.5, "share_b": 0.5,
              "predicted_share_b": 0.48, "curated_share_b": 0.5}
    cur_shares = dict(cur, share_a=0.516, share_b=0.484, n_synthetic=500)
    # The curated shares' binomial spread (0.5 over sqrt(500)) swamps the 0.02 move; a selection
    # spread of 0.05 does not.
    assert math.isnan(fidelity_columns(dict(prev, **shares), cur_shares, num_candidates=10**6)["class_fidelity_a"])
    sharp = dict(prev, **shares, selection_share_sd_a=0.05, selection_share_sd_b=0.05)
    assert fidelity_columns(sharp, cur_shares, num_candidates=10**6)["class_fidelity_a"] == pytest.approx(0.8)


def test_band_verdict_weighs_the_distance_from_the_band_by_the_ratios_own_error():
    assert band_verdict(0.85, 0.0) == "in" and band_verdict(1.15, math.nan) == "in"  # edges belong to the band
    assert band_verdict(0.81, 0.021) == "near"  # 0.04 below: 1.9 standard errors
    assert band_verdict(0.81, 0.019) == "out"  # 2.1
    assert band_verdict(1.42, 0.38) == "near" and band_verdict(1.42, 0.13) == "out"
    assert band_verdict(0.59, math.nan) == "?"  # outside, error unknown: not measurably out
    assert band_verdict(0.59, 0.0) == "out" and band_verdict(0.86, math.nan) == "in"
    assert band_verdict(math.nan, 0.1) == "-"
    assert band_verdict(0.9, 0.01, band=(0.95, 1.05)) == "out"
    assert band_verdict(0.9, 0.01, band=(0.95, 1.05), z=6.0) == "near"
    rows = [{"round": 0},
            {"round": 1, "reward_fidelity": 0.81, "reward_fidelity_stderr": 0.077},
            {"round": 2, "reward_fidelity": 0.97, "reward_fidelity_stderr": 0.05},
            {"round": 3, "reward_fidelity": 0.59, "reward_fidelity_stderr": 0.08},
            {"round": 4, "reward_fidelity": math.nan, "reward_fidelity_stderr": math.nan}]
    assert band_tally(rows) == {"in": 1, "near": 1, "out": 1, "?": 0}
    rows[3]["reward_fidelity_stderr"] = math.nan
    assert band_tally(rows) == {"in": 1, "near": 1, "out": 0, "?": 1}


def test_the_plots_band_is_the_fidelity_band():
    from lightning_curate.plots.rounds import FIDELITY_BAND as PLOT_BAND

    assert PLOT_BAND == FIDELITY_BAND == (0.85, 1.15)
