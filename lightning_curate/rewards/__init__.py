"""Reward models: any ``nn.Module`` mapping a batch ``[N, ...]`` to rewards ``[N]``."""

from lightning_curate.rewards.atoms import AtomReward
from lightning_curate.rewards.base import RewardModel
from lightning_curate.rewards.classifier import (
    ClassifierReward,
    ClassProbabilityReward,
    ConfidenceReward,
    LogProbabilityReward,
)
from lightning_curate.rewards.geometric import ClippedDistanceReward, LinearReward, RadialReward
from lightning_curate.rewards.wrappers import NegatedReward

__all__ = ["AtomReward", "ClassProbabilityReward", "ClassifierReward", "ClippedDistanceReward", "ConfidenceReward",
           "LinearReward", "LogProbabilityReward", "NegatedReward", "RadialReward", "RewardModel"]
