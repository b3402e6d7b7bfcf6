"""Classifiers for rewards and judges: nets, their training module and data, checkpoints that run no code.

The image experiments (docs/THEORY.md section 5) curate samples with a
classifier reward ``r(x) = gamma * q_c(x)`` and measure class shares with a
second, independent classifier (the judge). Both are trained here on the real
data (:mod:`~lightning_curate.classifiers.training`), saved with a safetensors
net file beside each Lightning checkpoint, and loaded by path with
:func:`load_classifier` (:mod:`~lightning_curate.classifiers.checkpoint`:
nothing is unpickled, and only lightning_curate's nets or classes you list in
``trusted_classes`` are built).
"""

from lightning_curate.classifiers.checkpoint import (
    CHECKPOINT_KEY,
    DEFAULT_TRAIN_HINT,
    NetFileCheckpointIO,
    load_classifier,
    net_file_path,
    save_classifier,
)
from lightning_curate.classifiers.nets import MLPClassifier, RebuildableNet, SmallCNN
from lightning_curate.classifiers.trained import TrainedClassifier, ensure_checkpoint, train_command
from lightning_curate.classifiers.training import ClassifierDataModule, ClassifierModule, random_shift

__all__ = ["CHECKPOINT_KEY", "DEFAULT_TRAIN_HINT", "ClassifierDataModule", "ClassifierModule", "MLPClassifier",
           "NetFileCheckpointIO", "RebuildableNet", "SmallCNN", "TrainedClassifier", "ensure_checkpoint",
           "load_classifier", "net_file_path", "random_shift", "save_classifier", "train_command"]
