"""Per-round metrics (torchmetrics states, reduced across ranks) and image metrics in a judge's feature space."""

from lightning_curate.metrics.curation import MMD, ModeShares, RewardStats, SelectionEntropy, SlicedWasserstein
from lightning_curate.metrics.image import FeatureExtractor, FeatureFID, PrecisionRecall, frechet_distance
from lightning_curate.metrics.inception import InceptionFID

__all__ = ["MMD", "FeatureExtractor", "FeatureFID", "InceptionFID", "ModeShares", "PrecisionRecall", "RewardStats",
           "SelectionEntropy", "SlicedWasserstein", "frechet_distance"]
