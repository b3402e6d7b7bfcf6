"""Learner fidelity over a sweep's seeds: each round's ratio averaged over the seeds, and its error.

One run's ratio carries a modelled error (sampling, the curated draw, and the
learner's refit jitter as ``learner_noise``; :mod:`lightning_curate.loop.fidelity`).
Just above the noise threshold that error is about a third, as wide as the
whole faithful band 0.85-1.15, so one run cannot place a late round inside or
outside the band. Several seeds can: the mean of their ratios has an error
``sqrt(n)`` times smaller, and the seeds' spread checks the model. Each round's verdict
(``in``, ``near``, ``out``: :func:`~lightning_curate.loop.fidelity.band_verdict`)
then says whether the config's learner follows the ideal one there.

Only seeds whose run reports a ratio for the round count (a ratio within
noise is left out, not taken as 1). The error of the mean is the larger of two:
the runs' own modelled error over ``sqrt(n)`` (the root mean square of their
``*_stderr``), and the seeds' standard error. While the seeds spread no more than
the model says, the modelled error stands and a verdict uses
:data:`~lightning_curate.loop.fidelity.BAND_Z` as for one run; two or three seeds
that agree by chance cannot make a small excess look certain. Where they spread
more, the model fell short, their own spread is the error, and a verdict needs
the Student t quantile of ``n - 1`` degrees of freedom at the same confidence
(4.5 standard errors for three seeds instead of 2). A round that one seed alone
reports keeps that run's own error; rows without errors leave only the spread
(and one such seed, ``?``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from lightning_curate.experiments.aggregate import as_float
from lightning_curate.loop.fidelity import BAND_Z, band_verdict
from lightning_curate.utils.columns import FIDELITY_RATIOS, Col, stderr
from lightning_curate.utils.table import write_csv

__all__ = ["FIDELITY_KEYS", "FIDELITY_TABLE", "SeedFidelity", "fidelity_over_seeds", "format_fidelity_over_seeds",
           "write_fidelity_over_seeds"]

FIDELITY_KEYS = FIDELITY_RATIOS  # the ratios a sweep tabulates over seeds
FIDELITY_TABLE = "fidelity.csv"


@dataclass(frozen=True)
class SeedFidelity:
    """One round of one grid point: the ratio over the seeds that report it."""

    round: int
    n: int  # seeds with a ratio this round
    seeds: int  # seeds with a row this round
    mean: float
    stderr: float  # max(modelled error over sqrt(n), the seeds' standard error)
    verdict: str  # in / near / out / ? (band_verdict)
    z: float  # the standard errors a ratio may sit outside the band and still be near


def fidelity_over_seeds(rows: Sequence[dict], key: str = Col.REWARD_FIDELITY) -> dict[str, list[SeedFidelity]]:
    """Per grid point, the curated rounds' ``key`` over seeds (rows as in ``sweep.csv``).

    Example:
        >>> rows = [{"point": "p", "seed": s, "round": 1, "reward_fidelity": f, "reward_fidelity_stderr": 0.05}
        ...         for s, f in enumerate([0.9, 1.0, 1.1])]
        >>> f = fidelity_over_seeds(rows)["p"][0]
        >>> f.n, round(f.mean, 6), round(f.stderr, 4), f.verdict
        (3, 1.0, 0.0577, 'in')
    """
    cells: dict[str, dict[int, dict[str, tuple[float, float]]]] = {}
    seen: dict[str, dict[int, set[str]]] = {}
    for r in rows:
        t = as_float(r.get(Col.ROUND))
        if not math.isfinite(t) or t < 1:
            continue
        point, t_int, seed = str(r.get("point", "")), int(t), str(r.get("seed", ""))
        seen.setdefault(point, {}).setdefault(t_int, set()).add(seed)
        ratio, se = as_float(r.get(key)), as_float(r.get(stderr(key)))
        if math.isfinite(ratio):
            cells.setdefault(point, {}).setdefault(t_int, {})[seed] = (ratio, se)
    out: dict[str, list[SeedFidelity]] = {}
    for point, per_round in seen.items():
        out[point] = []
        for t in sorted(per_round):
            values = list(cells.get(point, {}).get(t, {}).values())
            if not values:
                out[point].append(SeedFidelity(t, 0, len(per_round[t]), math.nan, math.nan, "-", BAND_Z))
                continue
            out[point].append(_over_seeds(t, values, len(per_round[t])))
    return out


def _over_seeds(t: int, values: list[tuple[float, float]], seeds: int) -> SeedFidelity:
    n = len(values)
    mean = sum(v for v, _ in values) / n
    modelled = [se for _, se in values if math.isfinite(se)]
    floor = math.sqrt(sum(se * se for se in modelled) / len(modelled) / n) if modelled else math.nan
    spread = math.sqrt(sum((v - mean) ** 2 for v, _ in values) / (n - 1) / n) if n > 1 else math.nan
    if math.isfinite(spread) and not spread <= floor:  # the seeds spread more than modelled (or no model)
        stderr, z = spread, _student_z(BAND_Z, n - 1)
    else:
        stderr, z = floor, BAND_Z
    return SeedFidelity(t, n, seeds, mean, stderr, band_verdict(mean, stderr, z=z), z)


def _student_z(z: float, df: int) -> float:
    """The Student t quantile with ``df`` degrees of freedom at the normal ``z``'s confidence."""
    from scipy.stats import norm, t

    return float(t.ppf(norm.cdf(z), df))


def format_fidelity_over_seeds(rounds: Sequence[SeedFidelity]) -> str:
    """``1: 0.91+-0.03 in (3/3), 2: ...``; a round no seed reports is ``-``."""
    parts = []
    for f in rounds:
        if f.n == 0:
            parts.append(f"{f.round}: - (0/{f.seeds})")
        else:
            parts.append(f"{f.round}: {f.mean:.2f}+-{f.stderr:.2f} {f.verdict} ({f.n}/{f.seeds})")
    return ", ".join(parts)


def write_fidelity_over_seeds(tables: Mapping[str, Mapping[str, Sequence[SeedFidelity]]], out) -> Optional[Path]:
    """Write ``<out>/fidelity.csv`` from ``{key: fidelity_over_seeds(rows, key)}``: one row per point x key
    x curated round, for every point and key with a ratio in at least one round; ``None`` (and no
    file) when there is none."""
    table = []
    for key, per_point in tables.items():
        for point, rounds in per_point.items():
            if any(f.n for f in rounds):
                table += [{"point": point, "key": key, "round": f.round, "n": f.n, "seeds": f.seeds, "mean": f.mean,
                           "stderr": f.stderr, "z": f.z, "verdict": f.verdict} for f in rounds]
    if not table:
        return None
    columns = ["point", "key", "round", "n", "seeds", "mean", "stderr", "z", "verdict"]
    return write_csv(Path(out) / FIDELITY_TABLE, columns, table)
