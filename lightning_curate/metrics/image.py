"""Image metrics in a classifier's feature space, with no download: Frechet distance, precision, recall.

Inception weights can't be fetched here, so distances are measured in the
feature space of a classifier trained by the package (the judge's
``features(x)``, see :mod:`lightning_curate.classifiers`). Numbers are
comparable between rounds and runs that use the same judge, not with
published FIDs.

- :class:`FeatureFID`: torchmetrics' ``FrechetInceptionDistance`` with the
  judge as custom feature extractor (``||mu_r - mu_f||^2 + Tr(S_r + S_f -
  2 (S_r S_f)^(1/2))`` over feature means and covariances, float64 sums).
- :class:`PrecisionRecall`: improved precision and recall (Kynkaanniemi et
  al., 2019): the real (generated) manifold is the union of balls around each
  real (generated) feature vector with radius its distance to its k-th
  nearest neighbour in the same set; precision is the share of generated
  samples inside the real manifold, recall the share of real samples inside
  the generated one.

Both take batches as ``update(real=..., fake=...)`` (either may be omitted)
and are torchmetrics ``Metric``s, so their states reduce across DDP ranks.
The feature extractor runs in eval mode without gradients, in batches of
``batch_size``; it is any module mapping inputs ``[n, ...]`` to ``[n, F]``
(or ``[n, ...]``, flattened). A module with a callable ``features`` method (the
package's classifiers) is called through it, so passing a classifier gives its
penultimate features; pass ``nn.Identity()`` to measure raw inputs.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, cast

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.utilities import dim_zero_cat

from lightning_curate.utils.compat import set_unregistered
from lightning_curate.utils.validation import check_int, is_int

__all__ = ["FeatureExtractor", "FeatureFID", "PrecisionRecall", "frechet_distance"]


class FeatureExtractor(nn.Module):
    """Wraps a network as a frozen feature map ``[n, ...] -> [n, num_features]`` (float32).

    Calls ``net.features(x)`` when ``net`` has a callable ``features`` method,
    else ``net(x)``; flattens the result per sample. Always in eval mode (its
    ``train()`` is a no-op), never tracks gradients, processes ``batch_size``
    rows at a time on the network's device, and returns features on the
    input's device.

    The network is kept out of the wrapper's ``parameters()`` and
    ``state_dict()`` (a fixed judge, not state of the module that holds the
    metric), but follows its ``.to(device)``.

    ``num_features`` is ``net.num_features`` when the net has an int one,
    else ``num_features`` if given, else found by running the net on one
    zero input of shape ``input_shape``.
    """

    _net: nn.Module

    def __init__(self, net: nn.Module, num_features: Optional[int] = None,
                 input_shape: Optional[Sequence[int]] = None, batch_size: int = 1024):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"the feature extractor must be a torch.nn.Module, got {type(net).__name__}")
        check_int("batch_size", batch_size, minimum=1)
        # Held outside the module tree: the extractor is a fixed judge, not state of whatever module holds
        # the metric (no copies in its state_dict); _apply still moves it with .to(device).
        set_unregistered(self, "_net", net.eval().requires_grad_(False))
        self.batch_size = batch_size
        self._use_features = callable(getattr(net, "features", None)) and not isinstance(
            getattr(net, "features", None), nn.Module)
        own = getattr(net, "num_features", None)
        if is_int(own):
            num_features = own
        elif num_features is None:
            if input_shape is None:
                raise ValueError(f"cannot tell how many features {type(net).__name__} gives: it has no int "
                                 f"num_features attribute; pass num_features or input_shape")
            device = next((t.device for t in (*net.parameters(), *net.buffers())), torch.device("cpu"))
            with torch.no_grad():
                num_features = self._extract(torch.zeros(1, *input_shape, device=device)).shape[1]
        self.num_features = check_int("num_features", num_features, minimum=1)

    @property
    def net(self) -> nn.Module:
        """The wrapped network."""
        return self._net

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self._net._apply(fn)
        return self

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Stay in eval mode whatever ``mode`` says: the feature space is fixed."""
        super().train(False)  # a fixed feature space: batch-norm statistics and dropout stay off
        self._net.eval()
        return self

    def _extract(self, x: Tensor) -> Tensor:
        out = cast(Callable[[Tensor], Tensor], self.net.features)(x) if self._use_features else self.net(x)
        return out.reshape(out.shape[0], -1)

    def forward(self, x: Tensor) -> Tensor:
        """Features ``[n, num_features]`` (float32) of ``x``, in batches, on ``x``'s device."""
        if not isinstance(x, Tensor) or x.dim() < 1:
            raise TypeError(f"expected a tensor [n, ...], got {type(x).__name__}")
        device = next((t.device for t in (*self.net.parameters(), *self.net.buffers())), x.device)
        dtype = next((p.dtype for p in self.net.parameters()), None)
        if self.net.training:
            self.net.eval()
        chunks = []
        with torch.no_grad():
            for start in range(0, x.shape[0], self.batch_size):
                chunk = x[start:start + self.batch_size].to(device)
                if dtype is not None and chunk.is_floating_point():
                    chunk = chunk.to(dtype)
                feats = self._extract(chunk)
                if feats.shape != (chunk.shape[0], self.num_features):
                    raise ValueError(f"the feature extractor gave features of shape {tuple(feats.shape)} for "
                                     f"{chunk.shape[0]} inputs; expected [{chunk.shape[0]}, {self.num_features}]")
                chunks.append(feats.float())
        if not chunks:
            return torch.empty(0, self.num_features, device=x.device)
        return torch.cat(chunks).to(x.device)


def _as_extractor(feature_extractor: nn.Module, num_features, input_shape, batch_size) -> FeatureExtractor:
    if isinstance(feature_extractor, FeatureExtractor):
        return feature_extractor
    return FeatureExtractor(feature_extractor, num_features=num_features, input_shape=input_shape,
                            batch_size=batch_size)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^(1/2) S2 S1^(1/2))^(1/2))`` in float64, via symmetric eigh.

    The reference formula, used in tests against torchmetrics' implementation
    (which takes the square roots of the eigenvalues of ``S1 S2``: the same
    spectrum, since ``S1 S2`` is similar to ``S1^(1/2) S2 S1^(1/2)``).
    """
    mu1, mu2, sigma1, sigma2 = (t.to(torch.float64) for t in (mu1, mu2, sigma1, sigma2))

    def sqrtm_psd(m: Tensor) -> Tensor:
        vals, vecs = torch.linalg.eigh((m + m.T) / 2)
        return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T

    root1 = sqrtm_psd(sigma1)
    middle = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp_min(0).sqrt().sum()
    return (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * middle


class FeatureFID(FrechetInceptionDistance):
    """Frechet distance between real and generated images in a classifier's feature space.

    torchmetrics' ``FrechetInceptionDistance`` with ``feature=`` a
    :class:`FeatureExtractor` around ``feature_extractor``: inputs go to the
    extractor as they are (float images in ``[-1, 1]``, the range our
    classifiers were trained on; no uint8 conversion, no resizing), and
    features are summed in float64. Identical real and generated sets give 0
    up to rounding.

    Args:
        feature_extractor: the judge (its ``features(x)`` are used) or any module ``[n, ...] -> [n, F]``.
        num_features, input_shape: how to learn ``F`` when the module has no ``num_features`` attribute.
        reset_real_features: ``False`` keeps the real statistics across ``reset()`` (a fixed real set,
            computed once per run).
        batch_size: rows per feature-extractor call.

    ``update(real=None, fake=None)`` adds batches; ``compute()`` needs at least
    two of each.
    """

    inception: FeatureExtractor

    def __init__(self, feature_extractor: nn.Module, num_features: Optional[int] = None,
                 input_shape: Optional[Sequence[int]] = None, reset_real_features: bool = True,
                 batch_size: int = 1024, **kwargs):
        extractor = _as_extractor(feature_extractor, num_features, input_shape, batch_size)
        super().__init__(feature=extractor, reset_real_features=reset_real_features, normalize=False, **kwargs)
        self.orig_dtype = torch.float32

    @property
    def num_features(self) -> int:
        """Width of the feature space the distance is measured in."""
        return self.inception.num_features

    def update(self, real: Optional[Tensor] = None, fake: Optional[Tensor] = None) -> None:  # type: ignore[override]
        """Add a batch of real and/or generated inputs ``[n, ...]``."""
        if real is None and fake is None:
            raise ValueError("FeatureFID.update needs real=... and/or fake=... batches")
        for batch, is_real in ((real, True), (fake, False)):
            if batch is not None and batch.shape[0] > 0:
                super().update(batch, real=is_real)

    def compute(self) -> Tensor:
        """The Frechet distance between the real and generated features seen."""
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise ValueError(f"FeatureFID needs at least 2 real and 2 generated samples, got "
                             f"{int(self.real_features_num_samples)} and {int(self.fake_features_num_samples)}")
        return super().compute().to(torch.float32)


class PrecisionRecall(Metric):
    """Improved precision and recall (Kynkaanniemi et al., 2019) with k-NN radii in a feature space.

    A sample lies in a set's manifold when it is within distance ``r_k(y)`` of
    some member ``y``, where ``r_k(y)`` is the distance from ``y`` to its
    ``k``-th nearest other member (ties and duplicates count: a duplicate is a
    neighbour at distance 0). ``compute()`` returns ``{"precision": share of
    generated samples in the real manifold, "recall": share of real samples
    in the generated manifold}`` (float32). Identical sets give 1 and 1.

    Features are computed in ``update`` and kept (concatenated across ranks),
    at most ``max_samples`` per set and rank (the first ones seen: feed
    shuffled batches); distances are float64 (float32 on MPS), ``block_rows``
    rows of the distance matrix at a time.

    Args:
        k: neighbour rank of the radii (the paper uses 3); each set needs more than ``k`` samples.
        feature_extractor: module ``[n, ...] -> [n, F]`` (the judge's ``features``); ``None``: the
            flattened inputs are the features.
        max_samples, batch_size, block_rows: memory bounds.
    """

    real_features: list[Tensor]
    fake_features: list[Tensor]

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, k: int = 3, feature_extractor: Optional[nn.Module] = None, max_samples: int = 10000,
                 batch_size: int = 1024, block_rows: int = 1024, num_features: Optional[int] = None,
                 input_shape: Optional[Sequence[int]] = None, **kwargs):
        super().__init__(**kwargs)
        self.k = check_int("k", k, minimum=1)
        self.max_samples = check_int("max_samples", max_samples, minimum=2)
        self.block_rows = check_int("block_rows", block_rows, minimum=1)
        self.extractor = None if feature_extractor is None else _as_extractor(
            feature_extractor, num_features, input_shape, batch_size)
        self.add_state("real_features", default=[], dist_reduce_fx="cat")
        self.add_state("fake_features", default=[], dist_reduce_fx="cat")

    @staticmethod
    def _stored(state) -> int:
        return state.shape[0] if isinstance(state, Tensor) else sum(t.shape[0] for t in state)

    def _features(self, x: Tensor) -> Tensor:
        if self.extractor is not None:
            return self.extractor(x)
        return x.detach().reshape(x.shape[0], -1).float()

    def update(self, real: Optional[Tensor] = None, fake: Optional[Tensor] = None) -> None:
        """Add a batch of real and/or generated inputs ``[n, ...]``."""
        if real is None and fake is None:
            raise ValueError("PrecisionRecall.update needs real=... and/or fake=... batches")
        for name, x in (("real_features", real), ("fake_features", fake)):
            if x is None:
                continue
            if not isinstance(x, Tensor) or x.dim() < 1:
                raise TypeError(f"PrecisionRecall.update expects tensors [n, ...], got {type(x).__name__}")
            room = self.max_samples - self._stored(getattr(self, name))
            if room > 0 and x.shape[0] > 0:
                getattr(self, name).append(self._features(x[:room]))

    def _sq_dists(self, a: Tensor, b: Tensor, b_sq: Tensor) -> Tensor:
        return (a.square().sum(1)[:, None] + b_sq[None, :] - 2.0 * a @ b.T).clamp_min_(0.0)

    def _radii_sq(self, x: Tensor) -> Tensor:
        """Squared distance of each row to its k-th nearest other row."""
        x_sq = x.square().sum(1)
        out = []
        for start in range(0, x.shape[0], self.block_rows):
            d = self._sq_dists(x[start:start + self.block_rows], x, x_sq)
            rows = torch.arange(d.shape[0], device=x.device)
            d[rows, rows + start] = 0.0  # a point is at distance 0 from itself (exactly)
            out.append(d.kthvalue(self.k + 1, dim=1).values)  # the 1st smallest is the point itself
        return torch.cat(out)

    def _inside(self, queries: Tensor, support: Tensor, radii_sq: Tensor) -> Tensor:
        """Per query: whether it lies within ``radius`` of some support row (bool ``[n]``)."""
        s_sq = support.square().sum(1)
        # Rounding slack of the expanded square |a|^2 + |b|^2 - 2ab (float64: ~1e-13 of the scale).
        eps = 1e-6 if queries.dtype == torch.float32 else 1e-12
        scale = torch.maximum(s_sq.max(), queries.square().sum(1).max()) * eps
        out = []
        for start in range(0, queries.shape[0], self.block_rows):
            d = self._sq_dists(queries[start:start + self.block_rows], support, s_sq)
            out.append((d <= radii_sq[None, :] + scale).any(dim=1))
        return torch.cat(out)

    def compute(self) -> dict[str, Tensor]:
        """``precision`` and ``recall`` of the generated features against the real ones."""
        n_real, n_fake = self._stored(self.real_features), self._stored(self.fake_features)
        if n_real <= self.k or n_fake <= self.k:
            raise ValueError(f"PrecisionRecall with k={self.k} needs more than {self.k} real and generated samples, "
                             f"got {n_real} and {n_fake}")
        real, fake = dim_zero_cat(self.real_features), dim_zero_cat(self.fake_features)
        if real.shape[1] != fake.shape[1]:
            raise ValueError(f"real features have {real.shape[1]} dimensions but generated ones {fake.shape[1]}")
        dtype = torch.float32 if real.device.type == "mps" else torch.float64
        center = real.to(dtype).mean(0)  # distances are shift-invariant; centring shrinks rounding error
        real, fake = real.to(dtype) - center, fake.to(dtype) - center
        precision = self._inside(fake, real, self._radii_sq(real)).to(dtype).mean()
        recall = self._inside(real, fake, self._radii_sq(fake)).to(dtype).mean()
        return {"precision": precision.to(torch.float32), "recall": recall.to(torch.float32)}
