"""lightning_curate: curated self-consuming retraining of generative models on PyTorch Lightning.

Every class a shipped config names is importable from here, with the interfaces
for bringing your own (``Generator``, ``DataSource``, ``RewardModel``) and the
fit-start check's errors; each subpackage (``ops``, ``theory``, ``models``,
``rewards``, ``data``, ``metrics``, ``classifiers``, ``loop``, ``plots``)
exports the rest of its role.
"""

import gc as _gc

# Importing torch, Lightning and their dependencies allocates some 400,000 objects that live as long as
# the process. With the cyclic collector on, each time they grow the old generation by a quarter it
# walks all of them again: 6-7 full collections during the import, 0.5-0.7 s of CPU. It is
# paused for the import and put back as it was, with one full collection (what it would have found).
_collecting = _gc.isenabled()
_gc.disable()
try:
    from lightning_curate.classifiers import (
        ClassifierDataModule,
        ClassifierModule,
        MLPClassifier,
        SmallCNN,
        TrainedClassifier,
    )
    from lightning_curate.data import CIFAR10, Atoms, BlendingDataModule, DataSource, Digits, RealData, Toy2D
    from lightning_curate.loop import (
        CurationModule,
        Curator,
        ManifoldProjection,
        PoolFraction,
        RetrainingLoop,
        RoundCheckpoint,
        RoundProgressBar,
        RoundStore,
        SlotChoice,
        StoreError,
    )
    from lightning_curate.loop.component_check import (
        ComponentError,
        DataSourceError,
        GeneratorError,
        RewardError,
        check_components,
    )
    from lightning_curate.models import (
        ExactCategorical,
        FlowMatching,
        GaussianLearner,
        Generator,
        KDELearner,
        MLPVelocity,
        TorchCFMUNet,
        UNetVelocity,
    )
    from lightning_curate.ops import KChoice, kchoice
    from lightning_curate.rewards import (
        AtomReward,
        ClassProbabilityReward,
        ClippedDistanceReward,
        ConfidenceReward,
        NegatedReward,
        RewardModel,
    )
finally:
    if _collecting:
        _gc.enable()
        _gc.collect()

__version__ = "0.2.0"
__all__ = [
    "CIFAR10",
    "AtomReward",
    "Atoms",
    "BlendingDataModule",
    "ClassProbabilityReward",
    "ClassifierDataModule",
    "ClassifierModule",
    "ClippedDistanceReward",
    "ComponentError",
    "ConfidenceReward",
    "CurationModule",
    "Curator",
    "DataSource",
    "DataSourceError",
    "Digits",
    "ExactCategorical",
    "FlowMatching",
    "GaussianLearner",
    "Generator",
    "GeneratorError",
    "KChoice",
    "KDELearner",
    "MLPClassifier",
    "MLPVelocity",
    "ManifoldProjection",
    "NegatedReward",
    "PoolFraction",
    "RealData",
    "RetrainingLoop",
    "RewardError",
    "RewardModel",
    "RoundCheckpoint",
    "RoundProgressBar",
    "RoundStore",
    "SlotChoice",
    "SmallCNN",
    "StoreError",
    "Toy2D",
    "TorchCFMUNet",
    "TrainedClassifier",
    "UNetVelocity",
    "__version__",
    "check_components",
    "kchoice",
]
