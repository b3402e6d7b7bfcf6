"""lightning_curate: curated self-consuming retraining of generative models on PyTorch Lightning.

The names a custom trainer needs are importable from here; each subpackage
(``ops``, ``theory``, ``models``, ``rewards``, ``data``, ``metrics``,
``classifiers``, ``loop``, ``plots``) exports the rest of its role.
"""

from lightning_curate.data import BlendingDataModule, DataSource, RealData, Toy2D
from lightning_curate.loop import CurationModule, RetrainingLoop, RoundProgressBar, RoundStore, StoreError
from lightning_curate.models import ExactCategorical, FlowMatching, Generator, MLPVelocity, UNetVelocity
from lightning_curate.ops import KChoice, kchoice
from lightning_curate.rewards import ClippedDistanceReward, RewardModel

__version__ = "0.2.0"
__all__ = [
    "BlendingDataModule",
    "ClippedDistanceReward",
    "CurationModule",
    "DataSource",
    "ExactCategorical",
    "FlowMatching",
    "Generator",
    "KChoice",
    "MLPVelocity",
    "RealData",
    "RetrainingLoop",
    "RewardModel",
    "RoundProgressBar",
    "RoundStore",
    "StoreError",
    "Toy2D",
    "UNetVelocity",
    "__version__",
    "kchoice",
]
