"""Real data: the ``DataSource`` interface, 2D sets, atoms, images, and the blending DataModule."""

from lightning_curate.data.atoms import Atoms
from lightning_curate.data.blending import POLICIES, BlendingDataModule
from lightning_curate.data.cifar10 import CIFAR10
from lightning_curate.data.images import Digits, ImageSource
from lightning_curate.data.source import DataSource, RealData
from lightning_curate.data.tensor_images import TensorImages
from lightning_curate.data.toy2d import ModeAssigner, Toy2D

__all__ = ["CIFAR10", "POLICIES", "Atoms", "BlendingDataModule", "DataSource", "Digits", "ImageSource", "ModeAssigner",
           "RealData", "TensorImages", "Toy2D"]
