"""Generative models the loop trains and samples: the ``Generator`` interface and its implementations."""

from lightning_curate.models.exact import ExactCategorical
from lightning_curate.models.flow_matching import FlowMatching, ot_permutation
from lightning_curate.models.gaussian import GaussianLearner, gaussian_moments
from lightning_curate.models.generator import Generator, has_log_prob, is_closed_form
from lightning_curate.models.kde import KDELearner, bandwidth_factor
from lightning_curate.models.likelihood import flow_log_prob
from lightning_curate.models.mlp import MLPVelocity, SinusoidalTimeEmbedding
from lightning_curate.models.torchcfm import TorchCFMUNet
from lightning_curate.models.unet import UNetVelocity

__all__ = ["ExactCategorical", "FlowMatching", "GaussianLearner", "Generator", "KDELearner", "MLPVelocity",
           "SinusoidalTimeEmbedding", "TorchCFMUNet", "UNetVelocity", "bandwidth_factor", "flow_log_prob",
           "gaussian_moments", "has_log_prob", "is_closed_form", "ot_permutation"]
