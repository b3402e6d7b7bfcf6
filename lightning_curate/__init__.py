"""lightning_curate: curated self-consuming retraining of generative models on PyTorch Lightning."""

from lightning_curate.kchoice import KChoice, kchoice

__version__ = "0.1.0"
__all__ = ["KChoice", "kchoice", "__version__"]
