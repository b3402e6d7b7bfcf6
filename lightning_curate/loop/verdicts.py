"""A run's fidelity read over its rounds: where each ratio stands against the faithful band, the
aggregate, and the mean learner gap.

A fidelity ratio (:func:`~lightning_curate.loop.fidelity.fidelity_columns`) has its own
error (``reward_fidelity_stderr``): near the threshold below which no ratio is reported
it is about a third, as wide as the whole faithful band 0.85-1.15.
:func:`band_verdict` therefore says where a ratio stands against the band *given* that
error: inside it, outside it by less than two standard errors (a measurement that
cannot tell this learner from a faithful one), or outside it by more (a learner that
measurably is not). The summary, the fidelity warning and the sweeps read rows with
these functions; every one reads finished rows only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_curate.utils.columns import Col, number, stderr

__all__ = ["BAND_Z", "FIDELITY_BAND", "aggregate_fidelity", "band_tally", "band_verdict", "mean_learner_gap",
           "rounds_out_of_band"]

FIDELITY_BAND = (0.85, 1.15)  # where a learner counts as faithful
BAND_Z = 2.0  # standard errors a ratio may sit outside the band before it measurably is out of it


def aggregate_fidelity(rows: Sequence[Mapping[str, Any]], key: str = Col.REWARD_FIDELITY) -> float:
    """Mean of ``key`` over the rounds where it is meaningful (finite); ``nan`` if none is."""
    values = [number(r, key) for r in rows]
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


def band_tally(rows: Sequence[Mapping[str, Any]], key: str = Col.REWARD_FIDELITY) -> dict[str, int]:
    """How many rounds' ``key`` ratios are ``in`` / ``near`` / ``out`` of the band, and outside it with no
    known error (``?``) (:func:`band_verdict`)."""
    tally = {"in": 0, "near": 0, "out": 0, "?": 0}
    for r in rows:
        verdict = band_verdict(number(r, key), number(r, stderr(key)))
        if verdict in tally:
            tally[verdict] += 1
    return tally


def rounds_out_of_band(rows: Sequence[Mapping[str, Any]], key: str = Col.REWARD_FIDELITY) -> list[Mapping[str, Any]]:
    """The rows whose ``key`` ratio is measurably outside the band (:func:`band_verdict` says ``out``)."""
    return [r for r in rows if band_verdict(number(r, key), number(r, stderr(key))) == "out"]


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
    gaps = [r for r in rows if number(r, Col.ROUND) >= 1 and math.isfinite(number(r, Col.LEARNER_GAP))]
    if not gaps:
        return math.nan, math.nan
    weighed = []
    for r in gaps:
        noise = number(r, Col.LEARNER_NOISE)
        se = number(r, stderr(Col.LEARNER_GAP)) * math.sqrt(1.0 + (noise * noise if math.isfinite(noise) else 0.0))
        if math.isfinite(se) and se > 0:
            weighed.append((number(r, Col.LEARNER_GAP), 1.0 / (se * se)))
    if not weighed:
        return sum(number(r, Col.LEARNER_GAP) for r in gaps) / len(gaps), math.nan
    total = sum(w for _, w in weighed)
    mean = sum(w * g for g, w in weighed) / total
    chi2 = sum(w * (g - mean) ** 2 for g, w in weighed)
    birge = math.sqrt(max(1.0, chi2 / (len(weighed) - 1))) if len(weighed) > 1 else 1.0
    return mean, birge / math.sqrt(total)
