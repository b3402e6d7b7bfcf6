"""The reward recovered from the choices: Bradley-Terry fitting on curation logs.

A curated round is preference data: which of ``K`` candidates each curator
kept. :func:`fit_bradley_terry` turns such logs into a reward model by maximum
likelihood; :mod:`~lightning_curate.preference.evaluate` measures how well it
matches the true reward (rank correlation, recovered ``beta``) and, on a
finite support, what a single Bradley-Terry model recovers from a population
of curators. ``lightning-curate-reward`` (:mod:`~lightning_curate.preference.cli`)
runs the fit on the choice logs of a run's round store.
"""

from lightning_curate.preference.bradley_terry import (
    AtomScores,
    BTFit,
    RewardMLP,
    bradley_terry_loss,
    fit_bradley_terry,
    score_candidates,
)
from lightning_curate.preference.evaluate import (
    best_bt_scores,
    population_choice_law,
    rankdata,
    recovered_scale,
    spearman,
)

__all__ = [
    "AtomScores",
    "BTFit",
    "RewardMLP",
    "best_bt_scores",
    "bradley_terry_loss",
    "fit_bradley_terry",
    "population_choice_law",
    "rankdata",
    "recovered_scale",
    "score_candidates",
    "spearman",
]
