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
it is about ``1 / z``, as wide as the whole faithful band 0.85-1.15.
:func:`band_verdict` therefore says where a ratio stands against the band
*given* that error: inside it, outside it by less than two standard errors (a
measurement that cannot tell this learner from a faithful one), or outside it
by more (a learner that measurably is not).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

__all__ = ["BAND_Z", "DEFAULT_Z", "FIDELITY_BAND", "aggregate_fidelity", "band_tally", "band_verdict",
           "fidelity_columns", "learner_gap_columns", "mean_learner_gap", "p0_quality", "round_zero_quality",
           "rounds_out_of_band"]

DEFAULT_Z = 3.0
FIDELITY_BAND = (0.85, 1.15)  # where a learner counts as faithful
BAND_Z = 2.0  # standard errors a ratio may sit outside the band before it measurably is out of it
_ROUND_OFF = 1e-9
_SHARE = "share_"
_PREDICTED_SHARE = "predicted_share_"
_CURATED_SHARE = "curated_share_"
_SELECTION_SHARE = "selection_share_sd_"


def _number(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _share_se(share: float, n: int) -> float:
    """Binomial standard error of a share on ``n`` draws, floored at one draw's worth (``1 / n``):
    a share of exactly 0 or 1 is still only known to that resolution."""
    return max(math.sqrt(max(share * (1.0 - share), 0.0) / n), 1.0 / n)


def _bernoulli_sd(share: float) -> float:
    """The standard deviation of one draw's membership in a class of this share (nan stays nan)."""
    return math.sqrt(max(share * (1.0 - share), 0.0)) if math.isfinite(share) else math.nan


def _spread(row: Mapping[str, Any], key: str, fallback: str) -> float:
    """``row[key]``, or ``row[fallback]`` where the row has no finite ``key``."""
    value = _number(row, key)
    return value if math.isfinite(value) else _number(row, fallback)


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
    n_syn, rho = _number(current, "n_synthetic"), _number(current, "real_fraction")
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
    if not math.isfinite(_number(previous, "predicted_reward_mean")):
        return {}
    n_obs = max(1, int(num_candidates))
    n_pred = max(1, int(num_probe if num_probe is not None else num_candidates))
    out: dict[str, float] = {}

    r_prev, r_cur = _number(previous, "reward_mean"), _number(current, "reward_mean")
    std = _number(previous, "reward_std")
    se_pred = _number(previous, "predicted_reward_stderr")
    if not math.isfinite(se_pred):
        se_pred = std / math.sqrt(n_pred)
    se_pred = math.hypot(se_pred, _draw_se(current, _spread(previous, "selection_reward_sd", "curated_reward_std")))
    std_cur = _number(current, "reward_std")
    jitter = learner_noise * (std_cur if math.isfinite(std_cur) else std) / math.sqrt(n_obs)
    fid, fid_se = _ratio(r_cur - r_prev, _number(previous, "predicted_reward_mean") - r_prev,
                         math.hypot(std * math.sqrt(2.0 / n_obs), jitter), se_pred, z)
    out["reward_fidelity"], out["reward_fidelity_stderr"] = fid, fid_se
    out["fidelity_reliable"] = float(math.isfinite(fid))
    out["learner_noise"] = float(learner_noise)  # the rule this row was judged by

    names = [k[len(_PREDICTED_SHARE):] for k in previous if k.startswith(_PREDICTED_SHARE)]
    names = [n for n in names if f"{_SHARE}{n}" in previous and f"{_SHARE}{n}" in current]
    if names:
        gap, gain_prev, gain_cur, gain_pred, gain_curated = 0.0, 0.0, 0.0, 0.0, 0.0
        for name in names:
            s_prev, s_cur = _number(previous, _SHARE + name), _number(current, _SHARE + name)
            s_pred, s_curated = _number(previous, _PREDICTED_SHARE + name), _number(previous, _CURATED_SHARE + name)
            gap += abs(s_cur - s_pred)
            se_cur = _share_se(s_cur, n_obs)
            se_obs = math.hypot(_share_se(s_prev, n_obs), se_cur, learner_noise * se_cur)
            selection = _number(previous, _SELECTION_SHARE + name)
            se_p = math.hypot(_share_se(s_pred, n_pred),
                              _draw_se(current, selection if math.isfinite(selection) else _bernoulli_sd(s_curated)))
            out[f"class_fidelity_{name}"], _ = _ratio(s_cur - s_prev, s_pred - s_prev, se_obs, se_p, z)
            if s_pred > s_prev:
                gain_prev, gain_cur, gain_pred = gain_prev + s_prev, gain_cur + s_cur, gain_pred + s_pred
                gain_curated += s_curated
        out["l1_gap_to_prediction"] = gap
        se_cur = _share_se(gain_cur, n_obs)
        se_obs = math.hypot(_share_se(gain_prev, n_obs), se_cur, learner_noise * se_cur)
        # The gain set's draw: its curated share's binomial spread (the per-slot one is per class only).
        se_p = math.hypot(_share_se(gain_pred, n_pred), _draw_se(current, _bernoulli_sd(gain_curated)))
        out["gain_share_fidelity"], out["gain_share_fidelity_stderr"] = _ratio(
            gain_cur - gain_prev, gain_pred - gain_prev, se_obs, se_p, z)
    return out


def aggregate_fidelity(rows: Sequence[Mapping[str, Any]], key: str = "reward_fidelity") -> float:
    """Mean of ``key`` over the rounds where it is meaningful (finite); ``nan`` if none is."""
    values = [_number(r, key) for r in rows]
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def band_verdict(ratio: float, stderr: float, band: tuple[float, float] = FIDELITY_BAND,
                 z: float = BAND_Z) -> str:
    """Where one fidelity ratio stands against the faithful ``band``, given its standard error.

    Returns:
        ``"in"`` inside the band; ``"near"`` outside it by at most ``z`` standard errors (the
        measurement cannot tell the learner from a faithful one); ``"out"`` outside by more;
        ``"-"`` where there is no ratio (the predicted move was noise); ``"?"`` for a ratio
        outside the band whose error is unknown (no ``*_stderr`` column, as in rows written
        before it existed): nothing says how far outside it measurably is.

    Example:
        >>> band_verdict(0.81, 0.077), band_verdict(0.59, 0.08), band_verdict(1.0, 0.5), band_verdict(math.nan, 0.1)
        ('near', 'out', 'in', '-')
        >>> band_verdict(0.59, math.nan)
        '?'
    """
    if not math.isfinite(ratio):
        return "-"
    low, high = band
    if low <= ratio <= high:
        return "in"
    if not (math.isfinite(stderr) and stderr >= 0):
        return "?"
    distance = low - ratio if ratio < low else ratio - high
    return "near" if distance <= z * stderr else "out"


def band_tally(rows: Sequence[Mapping[str, Any]], key: str = "reward_fidelity") -> dict[str, int]:
    """How many rounds' ``key`` ratios are ``in`` / ``near`` / ``out`` of the band, and outside it with no
    known error (``?``) (:func:`band_verdict`)."""
    tally = {"in": 0, "near": 0, "out": 0, "?": 0}
    for r in rows:
        verdict = band_verdict(_number(r, key), _number(r, f"{key}_stderr"))
        if verdict in tally:
            tally[verdict] += 1
    return tally


def rounds_out_of_band(rows: Sequence[Mapping[str, Any]], key: str = "reward_fidelity") -> list[Mapping[str, Any]]:
    """The rows whose ``key`` ratio is measurably outside the band (:func:`band_verdict` says ``out``)."""
    return [r for r in rows if band_verdict(_number(r, key), _number(r, f"{key}_stderr")) == "out"]


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
    mean, std = _number(row, "reward_mean"), _number(row, "reward_std")
    return {"training_set_reward_mean": float(training_set_reward_mean),
            "learner_gap": mean - float(training_set_reward_mean),
            "learner_gap_stderr": std / math.sqrt(max(1, int(num_candidates)))}


def mean_learner_gap(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """``(mean, standard error)`` of ``learner_gap`` over the curated rounds (round >= 1); nans if none.

    A round's gap carries its sampling error and the learner's refit jitter (``learner_noise``
    sampling errors, which every row records), so its error is ``learner_gap_stderr *
    sqrt(1 + learner_noise^2)``. The mean is weighted by inverse variance (early rounds, whose
    rewards spread widely, know their gap far less well than late ones) and its error is
    widened by ``sqrt(chi^2 / (k - 1))`` when the rounds disagree more than their errors say
    (Birge's ratio). Rows without a positive error are left out of the weights; if no row has
    one, the plain mean, with no error.

    Example:
        >>> rows = [{"round": 0, "learner_gap": -1.0}, {"round": 1, "learner_gap": -0.004, "learner_gap_stderr": 0.001},
        ...         {"round": 2, "learner_gap": -0.006, "learner_gap_stderr": 0.001}]
        >>> [round(v, 6) for v in mean_learner_gap(rows)]
        [-0.005, 0.001]
    """
    gaps = [r for r in rows if _number(r, "round") >= 1 and math.isfinite(_number(r, "learner_gap"))]
    if not gaps:
        return math.nan, math.nan
    weighed = []
    for r in gaps:
        noise = _number(r, "learner_noise")
        se = _number(r, "learner_gap_stderr") * math.sqrt(1.0 + (noise * noise if math.isfinite(noise) else 0.0))
        if math.isfinite(se) and se > 0:
            weighed.append((_number(r, "learner_gap"), 1.0 / (se * se)))
    if not weighed:
        return sum(_number(r, "learner_gap") for r in gaps) / len(gaps), math.nan
    total = sum(w for _, w in weighed)
    mean = sum(w * g for g, w in weighed) / total
    chi2 = sum(w * (g - mean) ** 2 for g, w in weighed)
    birge = math.sqrt(max(1.0, chi2 / (len(weighed) - 1))) if len(weighed) > 1 else 1.0
    return mean, birge / math.sqrt(total)


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
        out[f"p0_share_error_{name}"] = err
        worst = max(worst, abs(err))
    if real_shares:
        out["p0_share_error_max"] = worst
    out["p0_distance_ratio"] = model_distance / real_distance if real_distance > 0 else math.nan
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
    if preview is None or "sw_distance" not in row:
        return {}
    n = min(len(preview), len(real.train))
    real_distance = sample_distance(real.train[:n], real.heldout)
    real_shares: dict[str, float] = {}
    if real_labels is not None and class_names:
        counts = real_labels.bincount(minlength=len(class_names)).double()
        real_shares = {name: float(c) / max(1.0, float(counts.sum())) for name, c in zip(class_names, counts)}
    model_shares = {k[len(_SHARE):]: v for k, v in row.items() if k.startswith(_SHARE)}
    return round_zero_quality(model_shares, real_shares, row["sw_distance"], real_distance)
