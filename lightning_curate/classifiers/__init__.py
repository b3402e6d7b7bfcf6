"""Classifiers for rewards and judges: nets, their training module and data, safe checkpoint loading."""

from lightning_curate.classifiers.classifier import (
    ClassifierDataModule,
    ClassifierModule,
    MLPClassifier,
    RebuildableNet,
    SmallCNN,
    TrainedClassifier,
    ensure_checkpoint,
    load_classifier,
)

__all__ = ["ClassifierDataModule", "ClassifierModule", "MLPClassifier", "RebuildableNet", "SmallCNN",
           "TrainedClassifier", "ensure_checkpoint", "load_classifier"]
