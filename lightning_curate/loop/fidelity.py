"""Learner fidelity: how far each round moved, against how far the ideal learner said it would.

Row ``t`` of ``rounds.csv`` holds what the ideal learner predicts for round
``t + 1`` (``predicted_*``, docs/THEORY.md section 2). Row ``t + 1`` then holds
what the trained generator did. For a quantity ``m`` (the mean reward, a class
share) the *fidelity* of round ``t + 1`` is

    F = (m_{t+1} - m_t) / (predicted_t - m_t),

1 for a learner that fits each curated round exactly, below 1 for one that
lags (too few steps, an EMA that remembers earlier rounds), above 1 for one
that overshoots. The ratio means something only where the predicted move is
well above its noise: a round whose predicted move is within ``z`` standard
errors of zero (late rounds near collapse, say) gets ``NaN`` and
``fidelity_reliable = 0`` instead of a meaningless number.

Standard errors come from the rows themselves: a class share ``s`` measured on
``n`` candidates has ``sqrt(s (1 - s) / n)``; a mean reward ``reward_std /
sqrt(n)``; a prediction its own ``predicted_*_stderr`` column when the row has
one (else the same form on the probe's size), widened by the *curated draw*:
round ``t + 1`` trains on a finite draw from the curated law, not on the law,
and its mean misses the law's by about ``selection_reward_sd / sqrt(n_synthetic)``
(times ``1 - real_fraction``): the winner of a slot is still random given its
candidates. The learner adds its own: trained
again on the same data with another batch order, it lands elsewhere. That
*refit jitter* scales with the round's own sampling error (both shrink as the
rewards and shares concentrate), so it is given as a multiple of it,
``learner_noise`` (measured by ``lightning-curate diagnose jitter``), and added to the
observed move's noise.

A ratio needs a move well above noise; the *learner gap* does not. It compares
a round's generator with the very set it was trained on,
``learner_gap = reward_mean - training_set_reward_mean``, and that set's mean is
exact (it is the data itself), so the gap is known to one round's sampling
error even near collapse. It splits every round's move exactly::

    observed move = predicted move
                    + (training_set_reward_mean - predicted_reward_mean)   # the curated draw's luck
                    + learner_gap                                          # the learner's own part

so a steady gap ``g`` against a shrinking predicted move ``m`` gives fidelity
``1 + g / m``: a learner that ends each round a fixed amount below its data
looks faithful early and lags late (docs/THEORY.md section 5.5).

A ratio has its own error (``reward_fidelity_stderr``): near the ``z`` threshold
it is about ``1 / z``, as wide as the whole faithful band 0.85-1.15. Where a ratio
stands against the band given that error, and what a run's rounds say together, is
:mod:`lightning_curate.loop.verdicts`' (re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from lightning_curate.loop.verdicts import (  # re-exported: they read what fidelity_columns writes
    BAND_Z,
    FIDELITY_BAND,
    aggregate_fidelity,
    band_tally,
    band_verdict,
    mean_learner_gap,
    rounds_out_of_band,
)
from lightning_curate.utils.columns import (
    CLASS_FIDELITY,
    CURATED_SHARE,
    P0_SHARE_ERROR,
    PREDICTED_SHARE,
    SELECTION_SHARE_SD,
    SHARE,
    Col,
    number,
    stderr,
)

__all__ = ["BAND_Z", "DEFAULT_Z", "FIDELITY_BAND", "aggregate_fidelity", "band_tally", "band_verdict",
           "fidelity_columns", "learner_gap_columns", "mean_learner_gap", "p0_quality", "round_zero_quality",
           "rounds_out_of_band"]

DEFAULT_Z = 3.0
_ROUND_OFF = 1e-9


def _share_se(share: float, n: int) -> float:
    """Binomial standard error of a share on ``n`` draws, floored at one draw's worth (``1 / n``):
    a share of exactly 0 or 1 is still only known to that resolution."""
    return max(math.sqrt(max(share * (1.0 - share), 0.0) / n), 1.0 / n)


def _bernoulli_sd(share: float) -> float:
    """The standard deviation of one draw's membership in a class of this share (nan stays nan)."""
    return math.sqrt(max(share * (1.0 - share), 0.0)) if math.isfinite(share) else math.nan


def _spread(row: Mapping[str, Any], key: str, fallback: str) -> float:
    """``row[key]``, or ``row[fallback]`` where the row has no finite ``key``."""
    value = number(row, key)
    return value if math.isfinite(value) else number(row, fallback)


def _draw_se(current: Mapping[str, Any], curated_sd: float) -> float:
    """How far the curated part of round ``t + 1``'s training set misses the curated law by chance.

    Round ``t + 1`` trains on ``n_synthetic`` curated draws (a ``1 - real_fraction`` share of
    its set), not on the curated law the prediction describes: its mean misses the law's by
    about ``(1 - real_fraction) sd / sqrt(n_synthetic)``, where ``sd`` is how much one slot's
    winner varies given its candidates (``selection_*_sd``, one winner a slot) or, where the
    row has no such column (several winners, a population), the curated samples' own spread,
    an upper bound. (The real part's resampling, under ``real_fraction > 0``, is in the
    measured ``learner_noise``: refits redraw it.)
    """
    n_syn, rho = number(current, Col.N_SYNTHETIC), number(current, Col.REAL_FRACTION)
    if not (math.isfinite(n_syn) and n_syn >= 1 and math.isfinite(curated_sd)):
        return 0.0
    return (1.0 - (rho if math.isfinite(rho) else 0.0)) * curated_sd / math.sqrt(n_syn)


def _ratio(observed_move: float, predicted_move: float, se_observed: float, se_predicted: float,
           z: float) -> tuple[float, float]:
    """``(fidelity, its standard error)``, or ``(nan, nan)`` where the predicted move is noise."""
    se_move = math.hypot(se_observed, se_predicted)
    if not all(map(math.isfinite, (observed_move, predicted_move, se_move))):
        return math.nan, math.nan
    # Below float round-off the prediction says "no move" (e.g. a collapsed round: every candidate alike).
    if abs(predicted_move) <= z * se_move or abs(predicted_move) <= _ROUND_OFF * (1.0 + abs(observed_move)):
        return math.nan, math.nan
    fidelity = observed_move / predicted_move
    # First-order error of a ratio of two noisy differences (both share round t's noise; ignored).
    se = math.hypot(se_observed, fidelity * se_predicted) / abs(predicted_move)
    return fidelity, se


def fidelity_columns(previous: Mapping[str, Any], current: Mapping[str, Any], *, num_candidates: int,
                     num_probe: Optional[int] = None, z: float = DEFAULT_Z,
                     learner_noise: float = 0.0) -> dict[str, float]:
    """The fidelity columns of row ``current`` (round ``t + 1``) against row ``previous`` (round ``t``).

    Args:
        previous: round ``t``'s row, with ``reward_mean``, ``reward_std``, ``share_*`` and the
            ideal learner's ``predicted_reward_mean`` / ``predicted_share_*``.
        current: round ``t + 1``'s row (``reward_mean``, ``share_*``).
        num_candidates: candidates a round's ``reward_mean`` and ``share_*`` are measured on
            (``num_slots * K``).
        num_probe: candidates the prediction was computed from (the preview slots times ``K``);
            defaults to ``num_candidates``.
        z: a ratio is reported only where the predicted move exceeds ``z`` standard errors.
        learner_noise: the learner's refit jitter (the spread of round ``t + 1``'s means over
            trainings on the same data) as a multiple of the sampling standard error of one
            round's mean; added to the observed move's noise. 0: sampling noise only.

    Returns:
        ``reward_fidelity`` (and ``_stderr``), ``learner_noise`` (as given),
        ``class_fidelity_<name>`` for every class whose predicted move is above noise,
        ``gain_share_fidelity`` (and ``_stderr``) for the total share of the
        classes the ideal learner says grow (the rewarded set: mog8's two target modes,
        digits' class 0), ``l1_gap_to_prediction`` (``sum |share_{t+1} - predicted_share_t|``) and
        ``fidelity_reliable`` (1 when the reward's ratio is meaningful, else 0). Empty when
        ``previous`` has no prediction.

    Example:
        >>> prev = {"reward_mean": 0.0, "reward_std": 1.0, "predicted_reward_mean": 1.0}
        >>> fidelity_columns(prev, {"reward_mean": 0.5}, num_candidates=10_000)["reward_fidelity"]
        0.5
    """
    if not math.isfinite(number(previous, Col.PREDICTED_REWARD_MEAN)):
        return {}
    n_obs = max(1, int(num_candidates))
    n_pred = max(1, int(num_probe if num_probe is not None else num_candidates))
    out: dict[str, float] = {}

    r_prev, r_cur = number(previous, Col.REWARD_MEAN), number(current, Col.REWARD_MEAN)
    std = number(previous, Col.REWARD_STD)
    se_pred = number(previous, Col.PREDICTED_REWARD_STDERR)
    if not math.isfinite(se_pred):
        se_pred = std / math.sqrt(n_pred)
    se_pred = math.hypot(se_pred, _draw_se(current, _spread(previous, Col.SELECTION_REWARD_SD,
                                                            Col.CURATED_REWARD_STD)))
    std_cur = number(current, Col.REWARD_STD)
    jitter = learner_noise * (std_cur if math.isfinite(std_cur) else std) / math.sqrt(n_obs)
    fid, fid_se = _ratio(r_cur - r_prev, number(previous, Col.PREDICTED_REWARD_MEAN) - r_prev,
                         math.hypot(std * math.sqrt(2.0 / n_obs), jitter), se_pred, z)
    out[Col.REWARD_FIDELITY], out[stderr(Col.REWARD_FIDELITY)] = fid, fid_se
    out[Col.FIDELITY_RELIABLE] = float(math.isfinite(fid))
    out[Col.LEARNER_NOISE] = float(learner_noise)  # the rule this row was judged by

    names = [n for n in PREDICTED_SHARE.names(previous) if SHARE(n) in previous and SHARE(n) in current]
    if names:
        gap, gain_prev, gain_cur, gain_pred, gain_curated = 0.0, 0.0, 0.0, 0.0, 0.0
        for name in names:
            s_prev, s_cur = number(previous, SHARE(name)), number(current, SHARE(name))
            s_pred, s_curated = number(previous, PREDICTED_SHARE(name)), number(previous, CURATED_SHARE(name))
            gap += abs(s_cur - s_pred)
            se_cur = _share_se(s_cur, n_obs)
            se_obs = math.hypot(_share_se(s_prev, n_obs), se_cur, learner_noise * se_cur)
            selection = number(previous, SELECTION_SHARE_SD(name))
            se_p = math.hypot(_share_se(s_pred, n_pred),
                              _draw_se(current, selection if math.isfinite(selection) else _bernoulli_sd(s_curated)))
            out[CLASS_FIDELITY(name)], _ = _ratio(s_cur - s_prev, s_pred - s_prev, se_obs, se_p, z)
            if s_pred > s_prev:
                gain_prev, gain_cur, gain_pred = gain_prev + s_prev, gain_cur + s_cur, gain_pred + s_pred
                gain_curated += s_curated
        out[Col.L1_GAP_TO_PREDICTION] = gap
        se_cur = _share_se(gain_cur, n_obs)
        se_obs = math.hypot(_share_se(gain_prev, n_obs), se_cur, learner_noise * se_cur)
        # The gain set's draw: its curated share's binomial spread (the per-slot one is per class only).
        se_p = math.hypot(_share_se(gain_pred, n_pred), _draw_se(current, _bernoulli_sd(gain_curated)))
        out[Col.GAIN_SHARE_FIDELITY], out[stderr(Col.GAIN_SHARE_FIDELITY)] = _ratio(
            gain_cur - gain_prev, gain_pred - gain_prev, se_obs, se_p, z)
    return out


def learner_gap_columns(row: Mapping[str, Any], training_set_reward_mean: float, *,
                        num_candidates: int) -> dict[str, float]:
    """How far a round's generator ended from the reward of the set it was trained on.

    Args:
        row: the round's row (``reward_mean``, ``reward_std`` of its candidates).
        training_set_reward_mean: the mean reward of the round's training set (round 0: the
            real data; later rounds: the curated, and any real, samples it trained on), scored
            with the same reward as the row.
        num_candidates: candidates the row's ``reward_mean`` is measured on.

    Returns:
        ``training_set_reward_mean`` (as given), ``learner_gap`` (``reward_mean`` minus it: 0 for
        a learner that reproduces its data, below 0 for one that falls short of it) and
        ``learner_gap_stderr`` (the row's sampling error; the training set's mean is exact).

    Example:
        >>> row = {"reward_mean": -0.045, "reward_std": 0.1}
        >>> out = learner_gap_columns(row, -0.04, num_candidates=10_000)
        >>> round(out["learner_gap"], 6), round(out["learner_gap_stderr"], 6)
        (-0.005, 0.001)
    """
    mean, std = number(row, Col.REWARD_MEAN), number(row, Col.REWARD_STD)
    return {Col.TRAINING_SET_REWARD_MEAN: float(training_set_reward_mean),
            Col.LEARNER_GAP: mean - float(training_set_reward_mean),
            stderr(Col.LEARNER_GAP): std / math.sqrt(max(1, int(num_candidates)))}


def round_zero_quality(model_shares: Mapping[str, float], real_shares: Mapping[str, float],
                       model_distance: float, real_distance: float) -> dict[str, float]:
    """How well the round-0 model ``p_0`` fits ``p_data``, before anything is read into later rounds.

    Args:
        model_shares: class shares of ``p_0``'s samples.
        real_shares: class shares of the real training data.
        model_distance: a sample distance from ``p_0``'s samples to held-out real data.
        real_distance: the same distance between two real samples of the same sizes (its noise floor).

    Returns:
        ``p0_share_error_<name>`` (model minus real), ``p0_share_error_max`` (largest absolute one),
        and ``p0_distance_ratio`` (``model_distance / real_distance``: about 1 for a good fit).
    """
    out: dict[str, float] = {}
    worst = 0.0
    for name, real in real_shares.items():
        err = float(model_shares.get(name, 0.0)) - float(real)
        out[P0_SHARE_ERROR(name)] = err
        worst = max(worst, abs(err))
    if real_shares:
        out[Col.P0_SHARE_ERROR_MAX] = worst
    out[Col.P0_DISTANCE_RATIO] = model_distance / real_distance if real_distance > 0 else math.nan
    return out


def p0_quality(row: Mapping[str, Any], preview: Any, real: Any, real_labels: Any, class_names: Optional[Sequence[str]],
               sample_distance: Callable[[Any, Any], float]) -> dict[str, float]:
    """:func:`round_zero_quality` of round 0's ``row`` and ``preview`` samples against the real data.

    Args:
        row: round 0's row (its ``share_*`` and ``sw_distance`` to held-out data).
        preview: round 0's preview samples (``None``: no columns).
        real: the real data (``.train``, ``.heldout``).
        real_labels: class labels of ``real.train`` (``None`` without classes).
        class_names: the classes' names.
        sample_distance: the distance ``row["sw_distance"]`` was measured with.
    """
    if preview is None or Col.SW_DISTANCE not in row:
        return {}
    n = min(len(preview), len(real.train))
    real_distance = sample_distance(real.train[:n], real.heldout)
    real_shares: dict[str, float] = {}
    if real_labels is not None and class_names:
        counts = real_labels.bincount(minlength=len(class_names)).double()
        real_shares = {name: float(c) / max(1.0, float(counts.sum())) for name, c in zip(class_names, counts)}
    return round_zero_quality(SHARE.values(row), real_shares, row[Col.SW_DISTANCE], real_distance)
