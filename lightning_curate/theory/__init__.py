"""The mathematics of curated retraining (docs/THEORY.md): exact laws and ideal-learner predictions.

Pure math on tensors: nothing here imports Lightning or the loop.
"""

from lightning_curate.theory.empirical import DEFAULT_MAX_SUPPORT, empirical_curation_weights
from lightning_curate.theory.ideal_learner import check_improvement, improvement_violated, predict_round
from lightning_curate.theory.laws import (
    curated_distribution,
    curated_share_map,
    curation_weights,
    expected_exp_reward,
    improvement_lower_bound,
    kl_divergence,
    plackett_luce_law,
    retraining_trajectory,
    rlhf_coefficient,
    rlhf_optimum,
    tilted_distribution,
    two_level_band,
)
from lightning_curate.theory.truncation import predict_pool_round, truncate, truncation_trajectory

__all__ = [
    "DEFAULT_MAX_SUPPORT",
    "check_improvement",
    "curated_distribution",
    "curated_share_map",
    "curation_weights",
    "empirical_curation_weights",
    "expected_exp_reward",
    "improvement_lower_bound",
    "improvement_violated",
    "kl_divergence",
    "plackett_luce_law",
    "predict_pool_round",
    "predict_round",
    "retraining_trajectory",
    "rlhf_coefficient",
    "rlhf_optimum",
    "tilted_distribution",
    "truncate",
    "truncation_trajectory",
    "two_level_band",
]
