"""The columns of a round's row (``rounds.csv``, each manifest's ``row``, the logger's ``round/*``), named once.

A row has fixed columns (:class:`Col`) and families of columns, one per class or per
curator, ``<prefix><name>`` (:class:`Family`: ``share_class0``, ``reward_mean_honest``).
Whoever builds a row and whoever reads one (the loop, the fidelity, the report, the plots,
the sweeps) names them from here, so a column is renamed in one place and a prefix is
never matched by hand. Which column means what is explained in docs/THEORY.md and the
guide's page on ``rounds.csv``; the docstrings of the functions that compute them give
the formulas.

Example:
    >>> SHARE("class0"), stderr(Col.REWARD_FIDELITY)
    ('share_class0', 'reward_fidelity_stderr')
    >>> SHARE.names({"round": 0, "share_a": 0.5, "curated_share_a": 0.7, "share_b": 0.5})
    ['a', 'b']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CLASS_FIDELITY", "CURATED_REWARD_MEAN_OF", "CURATED_SHARE", "EXACT_SHARE", "FIDELITY_RATIOS",
           "IDEAL_REWARD_MEAN_OF", "IDEAL_SHARE", "LEAD", "ONE_CURATOR_PREDICTIONS", "P0_SHARE_ERROR",
           "PREDICTED_CURATED_REWARD_MEAN_OF", "PREDICTED_CURATED_SHARE", "PREDICTED_REWARD_MEAN_OF",
           "PREDICTED_SHARE", "REWARD_MEAN_OF", "SELECTION_SHARE_SD", "SHARE", "SLOTS", "STDERR", "TILT_SHARE",
           "Col", "Family", "column_order", "number", "stderr"]

STDERR: Final = "_stderr"


class Col:
    """The fixed columns of a row, by what they hold (each constant is the column's name)."""

    # what the round was: its place in the run and its data
    ROUND: Final = "round"
    EPOCH: Final = "epoch"
    REAL_FRACTION: Final = "real_fraction"
    N_REAL: Final = "n_real"
    N_SYNTHETIC: Final = "n_synthetic"
    # what the model did: its candidates and the curated winners
    REWARD_MEAN: Final = "reward_mean"
    REWARD_STD: Final = "reward_std"
    CURATED_REWARD_MEAN: Final = "curated_reward_mean"
    CURATED_REWARD_STD: Final = "curated_reward_std"
    SELECTION_ENTROPY: Final = "selection_entropy"
    SW_DISTANCE: Final = "sw_distance"
    # what the ideal learner predicts for the next round (docs/THEORY.md section 2)
    PREDICTED_REWARD_MEAN: Final = "predicted_reward_mean"
    PREDICTED_REWARD_STDERR: Final = "predicted_reward_stderr"
    PREDICTED_CURATED_REWARD_MEAN: Final = "predicted_curated_reward_mean"
    SELECTION_REWARD_SD: Final = "selection_reward_sd"
    EXP_REWARD_MEAN: Final = "exp_reward_mean"
    EXP_REWARD_LOWER_BOUND: Final = "exp_reward_lower_bound"
    EXP_REWARD_LOWER_BOUND_STDERR: Final = "exp_reward_lower_bound_stderr"
    IMPROVEMENT_VIOLATION: Final = "improvement_violation"
    IDEAL_REWARD_MEAN: Final = "ideal_reward_mean"
    # how the round followed the prediction (lightning_curate.loop.fidelity)
    REWARD_FIDELITY: Final = "reward_fidelity"
    GAIN_SHARE_FIDELITY: Final = "gain_share_fidelity"
    FIDELITY_RELIABLE: Final = "fidelity_reliable"
    LEARNER_NOISE: Final = "learner_noise"
    L1_GAP_TO_PREDICTION: Final = "l1_gap_to_prediction"
    TRAINING_SET_REWARD_MEAN: Final = "training_set_reward_mean"
    LEARNER_GAP: Final = "learner_gap"
    # how well round 0 fits the data
    P0_SHARE_ERROR_MAX: Final = "p0_share_error_max"
    P0_DISTANCE_RATIO: Final = "p0_distance_ratio"


def number(row: Mapping[str, Any], column: str) -> float:
    """``row[column]`` as a float: NaN where the row lacks it or holds no number (a bool is no number).

    Example:
        >>> number({"reward_mean": 1, "flag": True}, "reward_mean"), number({"flag": True}, "flag")
        (1.0, nan)
    """
    value = row.get(column)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def stderr(column: str) -> str:
    """The column holding ``column``'s standard error."""
    return column + STDERR


@dataclass(frozen=True)
class Family:
    """Columns ``<prefix><name>``, one per class or per curator.

    Example:
        >>> REWARD_MEAN_OF("honest"), REWARD_MEAN_OF.owns("reward_mean"), REWARD_MEAN_OF.name_of("reward_mean_x")
        ('reward_mean_honest', False, 'x')
    """

    prefix: str

    def __call__(self, name: str) -> str:
        return self.prefix + name

    def owns(self, column: str) -> bool:
        """Whether ``column`` belongs to the family."""
        return column.startswith(self.prefix)

    def name_of(self, column: str) -> str:
        """The class's or curator's name in a column of the family."""
        return column[len(self.prefix):]

    def columns(self, row: Iterable[str]) -> list[str]:
        """The family's columns among ``row``'s (in their order)."""
        return [c for c in row if c.startswith(self.prefix)]

    def names(self, row: Iterable[str]) -> list[str]:
        """The names of the family's columns among ``row``'s (in their order)."""
        return [self.name_of(c) for c in self.columns(row)]

    def values(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """``{name: value}`` of the family's columns in ``row``."""
        return {self.name_of(c): v for c, v in row.items() if c.startswith(self.prefix)}


# per class (the data source's class names)
SHARE: Final = Family("share_")  # of the model's candidates
CURATED_SHARE: Final = Family("curated_share_")  # of the curated winners
PREDICTED_SHARE: Final = Family("predicted_share_")  # the ideal learner's next round
PREDICTED_CURATED_SHARE: Final = Family("predicted_curated_share_")
TILT_SHARE: Final = Family("tilt_share_")  # the K -> infinity prediction
SELECTION_SHARE_SD: Final = Family("selection_share_sd_")  # one slot's winner's spread, per class
CLASS_FIDELITY: Final = Family("class_fidelity_")
P0_SHARE_ERROR: Final = Family("p0_share_error_")  # round 0's share minus the data's
EXACT_SHARE: Final = Family("exact_share_")  # an exact learner's probabilities
IDEAL_SHARE: Final = Family("ideal_share_")
# per curator (a population's names)
REWARD_MEAN_OF: Final = Family("reward_mean_")
CURATED_REWARD_MEAN_OF: Final = Family("curated_reward_mean_")
SLOTS: Final = Family("slots_")  # the share of the slots a curator curated
PREDICTED_REWARD_MEAN_OF: Final = Family("predicted_reward_mean_")
PREDICTED_CURATED_REWARD_MEAN_OF: Final = Family("predicted_curated_reward_mean_")
IDEAL_REWARD_MEAN_OF: Final = Family("ideal_reward_mean_")

# The one-curator prediction's columns a population replaces or drops (a mixture has no tilt).
ONE_CURATOR_PREDICTIONS: Final = (Family("predicted_"), Family("tilt_"), Family("selection_"))
# The fidelity ratios that come with a standard error (``stderr(ratio)``).
FIDELITY_RATIOS: Final = (Col.REWARD_FIDELITY, Col.GAIN_SHARE_FIDELITY)
# The columns ``rounds.csv`` starts with, where a row has them.
LEAD: Final = (Col.ROUND, Col.EPOCH, Col.REAL_FRACTION, Col.N_REAL, Col.N_SYNTHETIC, Col.REWARD_MEAN,
               Col.REWARD_STD, Col.CURATED_REWARD_MEAN, Col.CURATED_REWARD_STD, Col.SELECTION_ENTROPY,
               Col.SW_DISTANCE, Col.REWARD_FIDELITY, Col.LEARNER_GAP, Col.GAIN_SHARE_FIDELITY,
               Col.L1_GAP_TO_PREDICTION)


def column_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of a table of ``rows``: :data:`LEAD` first, then the shares, the curated shares,
    and the rest in the order the rows first have them.

    Example:
        >>> column_order([{"x": 1, "share_b": 0.5, "round": 0, "curated_share_b": 1.0}])
        ['round', 'share_b', 'curated_share_b', 'x']
    """
    columns = [c for c in LEAD if any(c in r for r in rows)]
    seen = list(dict.fromkeys(c for r in rows for c in r if c not in columns))
    columns += SHARE.columns(seen)
    columns += CURATED_SHARE.columns(seen)
    columns += [c for c in seen if not (SHARE.owns(c) or CURATED_SHARE.owns(c))]
    return columns
