"""Image data sources: the shared base (:class:`ImageSource`), scikit-learn's 8x8 digits, and helpers.

CIFAR-10 (:mod:`lightning_curate.data.cifar10`) and a user's own tensors
(:mod:`lightning_curate.data.tensor_images`) build on the same base. Every
image source returns images as float32 ``[n, C, H, W]`` scaled to
``[-1, 1]``, int64 labels, and ``class_names``. Data is read lazily, on the
first ``load()``, and cached. Nothing is ever downloaded: the digits ship with
scikit-learn, and CIFAR-10 or your own tensors are read from local paths (a
missing path is an error that says what to put where).

An image source cannot label *generated* images by itself. Give it a
``judge`` (any module mapping images ``[n, C, H, W]`` to logits
``[n, num_classes]``, e.g. a classifier trained on the real data) and
``label(x)`` returns the judge's class per image; without one it returns
``None`` and a run reports no class shares. The judge can be given in YAML
by checkpoint path with :class:`lightning_curate.classifiers.TrainedClassifier`
(trained first by :meth:`ImageSource.prepare` when its checkpoint is missing
and it has a ``train_config``). With a judge, :meth:`ImageSource.sample_metrics`
also measures each round's model samples against the held-out images in the
judge's feature space: a Frechet distance (``fid``), ``precision`` and
``recall`` (see :mod:`lightning_curate.metrics.image`). With
``inception_weights`` (a local copy of torch-fidelity's InceptionV3 weights),
it reports the standard Inception-feature FID beside them (``inception_fid``,
see :mod:`lightning_curate.metrics.inception`); nothing is downloaded.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_curate.data.source import DataSource, RealData
from lightning_curate.utils.compat import set_unregistered

__all__ = ["Digits", "ImageSource", "stratified_split", "to_unit_range"]

JUDGE_BATCH_SIZE = 1024
PR_NEIGHBOURS = 3  # k of the k-NN radii of precision / recall (Kynkaanniemi et al. use 3)


# -- helpers -------------------------------------------------------------------
def to_unit_range(images: Tensor, levels: float = 255.0) -> Tensor:
    """Integer intensities in ``0..levels`` -> float32 in ``[-1, 1]`` (0 -> -1, ``levels`` -> 1 exactly)."""
    return images.to(torch.float32) / (levels / 2.0) - 1.0


def stratified_split(labels: Optional[Tensor], n: int, heldout_fraction: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(train, heldout)`` of a seeded split of ``n`` items, stratified by ``labels`` when given.

    ``floor(heldout_fraction * n + 0.5)`` items are held out in all; with
    labels they are shared among the classes in proportion to their sizes
    (largest remainders get the leftover items, so every class is within one
    item of its exact share). Which items are drawn is decided by a
    ``torch.Generator`` seeded with ``seed``; both index sets are sorted.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    total = math.floor(heldout_fraction * n + 0.5)
    if total == 0 or total == n:
        raise ValueError(f"heldout_fraction={heldout_fraction} of {n} items leaves an empty "
                         f"{'held-out' if total == 0 else 'training'} set")
    gen = torch.Generator().manual_seed(int(seed))
    groups = [torch.arange(n)] if labels is None else [
        torch.nonzero(labels == c, as_tuple=False).reshape(-1) for c in torch.unique(labels, sorted=True)]
    exact = [heldout_fraction * idx.numel() for idx in groups]
    takes = [math.floor(q) for q in exact]
    by_remainder = sorted(range(len(groups)), key=lambda i: (-(exact[i] - takes[i]), i))
    for i in by_remainder[:total - sum(takes)]:
        takes[i] += 1
    held = torch.cat([idx[torch.randperm(idx.numel(), generator=gen)[:take]]
                      for idx, take in zip(groups, takes)]).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask, as_tuple=False).reshape(-1), held


class ImageSource(DataSource):
    """Base of the image sources: lazy cached ``load()`` and labelling by an optional ``judge``.

    Subclasses implement :meth:`_read` (returning :class:`RealData`) and set
    ``class_names`` (before or during ``_read``).
    """

    _inception: Any  # lightning_curate.metrics.inception.InceptionFID, when inception_weights is given

    def __init__(self, judge: Optional[nn.Module] = None, inception_weights: Optional[str] = None) -> None:
        super().__init__()
        if judge is not None and not isinstance(judge, nn.Module):
            raise TypeError(f"judge must be a torch.nn.Module mapping images to logits, got {type(judge).__name__}")
        self.judge = judge
        self._data: Optional[RealData] = None
        # Inception FID (lightning_curate.metrics.inception): built now, so a bad path fails before any training;
        # held outside the module tree (a fixed measuring network, not state of the source).
        self.inception_weights = None if inception_weights is None else str(inception_weights)
        self._inception_said = False
        if self.inception_weights is not None:
            from lightning_curate.metrics.inception import InceptionFID
            # The samples it sees are already whole (merged across ranks): no second gathering at compute().
            set_unregistered(self, "_inception", InceptionFID(self.inception_weights, sync_on_compute=False))

    def _read(self) -> RealData:
        raise NotImplementedError

    def load(self) -> RealData:
        """The real data (read on the first call, then cached)."""
        if self._data is None:
            self._data = self._read()
        return self._data

    @property
    def data_shape(self) -> list[int]:
        """Shape ``[C, H, W]`` of one image (reads the data if needed)."""
        return list(self.load().train.shape[1:])

    def prepare(self) -> None:
        """Make the judge's checkpoint if needed (``judge.prepare()``, e.g. :class:`TrainedClassifier`)."""
        prepare = getattr(self.judge, "prepare", None)
        if callable(prepare):
            prepare()

    def sample_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        """``fid``, ``precision`` and ``recall`` in the judge's feature space, and ``inception_fid``.

        Judge metrics: features are the judge's ``features(x)`` when it has
        them, else its logits; precision and recall use ``k = PR_NEIGHBOURS``
        nearest neighbours; none without a judge. ``inception_fid``: the
        standard FID, with ``inception_weights`` only (without them, for RGB
        images, one line says how to get it, once). Fewer than 2 samples on a side give ``{}``
        (precision/recall need more than ``k``).
        """
        out = self._judge_metrics(samples, reference)
        if samples.shape[0] < 2 or reference.shape[0] < 2:
            return out
        if self.inception_weights is None:
            if not self._inception_said and samples.dim() == 4 and samples.shape[1] == 3:
                from lightning_curate.metrics.inception import MISSING_WEIGHTS_MESSAGE

                rank_zero_info(f"[lightning_curate] {MISSING_WEIGHTS_MESSAGE}")
                self._inception_said = True
            return out
        fid = self._inception.to(samples.device)
        fid.reset()
        fid.update(real=reference.to(samples.device), fake=samples)
        out["inception_fid"] = max(0.0, float(fid.compute()))
        return out

    def _judge_metrics(self, samples: Tensor, reference: Tensor) -> dict[str, float]:
        if self.judge is None or samples.shape[0] < 2 or reference.shape[0] < 2:
            return {}
        from lightning_curate.metrics.image import FeatureExtractor, FeatureFID, PrecisionRecall

        judge = self.judge
        extractor = FeatureExtractor(judge, input_shape=tuple(samples.shape[1:]), batch_size=JUDGE_BATCH_SIZE)
        was_training = judge.training
        try:
            device = _module_device(judge, samples.device)
            real, fake = extractor(reference.to(device)), extractor(samples.to(device))
            # The features are computed once, here; the metrics see them through an identity map.
            fid = FeatureFID(nn.Identity(), num_features=real.shape[1])
            fid.update(real=real, fake=fake)
            out = {"fid": max(0.0, float(fid.compute()))}  # 0 for identical sets (not -1e-12)
            if min(real.shape[0], fake.shape[0]) > PR_NEIGHBOURS:
                pr = PrecisionRecall(k=PR_NEIGHBOURS, max_samples=max(real.shape[0], fake.shape[0]))
                pr.update(real=real, fake=fake)
                out.update({k: float(v) for k, v in pr.compute().items()})
        finally:
            judge.train(was_training)
        return out

    def label(self, x: Tensor) -> Optional[Tensor]:
        """The judge's class per image (int64 ``[n]``, on ``x``'s device), or ``None`` without a judge.

        The judge runs in eval mode under ``torch.inference_mode`` on its own
        device, in batches of 1024; its training mode is restored afterwards.
        """
        if self.judge is None:
            return None
        if x.dim() != 4:
            raise ValueError(f"label() expects images of shape [n, C, H, W], got {list(x.shape)}")
        judge = self.judge
        device = _module_device(judge, x.device)
        was_training = judge.training
        judge.eval()
        out = []
        try:
            with torch.inference_mode():
                for start in range(0, x.shape[0], JUDGE_BATCH_SIZE):
                    logits = judge(x[start:start + JUDGE_BATCH_SIZE].to(device))
                    if logits.dim() != 2 or logits.shape[0] != min(JUDGE_BATCH_SIZE, x.shape[0] - start):
                        raise ValueError(f"the judge must map images [n, C, H, W] to logits [n, num_classes], "
                                         f"got an output of shape {list(logits.shape)}")
                    if self.class_names is not None and logits.shape[1] != len(self.class_names):
                        raise ValueError(f"the judge outputs {logits.shape[1]} classes but the data source has "
                                         f"{len(self.class_names)} ({self.class_names})")
                    out.append(logits.argmax(1))
        finally:
            judge.train(was_training)
        if not out:
            return torch.empty(0, dtype=torch.int64, device=x.device)
        # Concatenated outside inference mode: an ordinary tensor that callers may edit.
        return torch.cat(out).to(device=x.device, dtype=torch.int64)


def _module_device(module: nn.Module, default: torch.device) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return default


# -- scikit-learn digits --------------------------------------------------------
class Digits(ImageSource):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), no download.

    Intensities ``0..16`` are scaled to ``[-1, 1]``; images have shape
    ``[n, 1, 8, 8]``. The held-out set is a stratified split drawn from
    ``seed`` (the same seed gives the same split).

    Args:
        heldout_fraction: fraction of each class held out (default 0.2: 1,438 train, 359 held out).
        seed: seeds the split.
        judge: optional classifier labelling generated images (see :meth:`ImageSource.label`).
        inception_weights: local InceptionV3 weights for ``inception_fid`` (see :meth:`ImageSource.sample_metrics`).
    """

    def __init__(self, heldout_fraction: float = 0.2, seed: int = 0, judge: Optional[nn.Module] = None,
                 inception_weights: Optional[str] = None) -> None:
        super().__init__(judge, inception_weights)
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        self.class_names = [str(i) for i in range(10)]

    @property
    def data_shape(self) -> list[int]:
        """``[1, 8, 8]``, known without reading the data."""
        return [1, 8, 8]

    def _read(self) -> RealData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = to_unit_range(torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)), 16.0)[:, None]
        labels = torch.from_numpy(np.asarray(bunch.target)).to(torch.int64)
        train, held = stratified_split(labels, labels.shape[0], self.heldout_fraction, self.seed)
        return RealData(train=images[train].contiguous(), heldout=images[held].contiguous(),
                        train_labels=labels[train], heldout_labels=labels[held])
