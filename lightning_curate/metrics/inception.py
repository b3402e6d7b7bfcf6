"""Standard (Inception-feature) FID from local weights: the number papers report, never downloaded.

:class:`InceptionFID` is torchmetrics' ``FrechetInceptionDistance`` with its
default feature extractor, torch-fidelity's TensorFlow-faithful InceptionV3
(2048-d pool features, bilinear resize to 299x299 as TF 1.x does), the
extractor clean-fid's ``legacy_tensorflow`` mode and torchcfm's CIFAR-10 FID
use. It differs from torchmetrics' default in two ways only:

* the weights come from a file the user gives (``inception_weights``;
  torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``), and
  nothing is ever fetched: without a file there is no Inception FID, only
  :data:`MISSING_WEIGHTS_MESSAGE`;
* the file is read with ``torch.load(weights_only=True)`` (tensors only, no
  code from the file). torch-fidelity itself unpickles its weights file with
  ``weights_only=False``, so it is handed a copy written from those tensors.

Images go in as the package holds them, float ``[n, C, H, W]`` in ``[-1, 1]``,
and are quantised to uint8 first (``round((x + 1) * 127.5)``, the inverse of
:func:`~lightning_curate.data.images.to_unit_range`, so real CIFAR-10 images
are their original bytes); one-channel images are repeated to three.

torch-fidelity is an optional extra (``pip install 'lightning-curate[fid]'``);
it imports torchvision, so install the torchvision build that matches your
torch first.
"""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_curate.utils.validation import check_int

__all__ = ["INCEPTION_FEATURES", "InceptionFID", "MISSING_WEIGHTS_MESSAGE", "WEIGHTS_FILE", "load_inception_weights",
           "to_uint8"]

INCEPTION_FEATURES = 2048
WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release asset
MISSING_WEIGHTS_MESSAGE = (f"inception_fid is not reported: set the data source's inception_weights to a local copy "
                           f"of torch-fidelity's {WEIGHTS_FILE} (nothing is downloaded)")


def load_inception_weights(path: str | Path) -> dict[str, Tensor]:
    """The InceptionV3 state dict in ``path``, read without running code from the file.

    Raises:
        FileNotFoundError: no such file (naming ``inception_weights``).
        ValueError: the file holds anything but a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"inception_weights: no file {path} (expected torch-fidelity's {WEIGHTS_FILE})")
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"inception_weights {path}: refused: it holds objects other than tensors, and loading it "
                         f"would run code from the file ({exc})") from exc
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"inception_weights {path}: expected a state dict of tensors (torch-fidelity's "
                         f"{WEIGHTS_FILE}), found {type(state).__name__}")
    return dict(state)


def to_uint8(images: Tensor) -> Tensor:
    """Float images in ``[-1, 1]`` -> uint8 ``0..255`` (rounded, clamped); one channel repeated to three."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Inception FID needs images [n, 3, H, W] or [n, 1, H, W], got {shape}")
    out = ((images.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out


class InceptionFID(FrechetInceptionDistance):
    """Inception-feature FID between real and generated images, from local InceptionV3 weights.

    Args:
        inception_weights: path of torch-fidelity's InceptionV3 weights (see the module).
        reset_real_features: ``False`` keeps the real statistics across ``reset()``.
        batch_size: images per Inception call (each is resized to 299x299 first).
        kwargs: passed to torchmetrics' ``Metric``.

    ``update(real=..., fake=...)`` takes float images in ``[-1, 1]``;
    ``compute()`` needs at least two of each and returns float32.

    Example:
        >>> fid = InceptionFID("checkpoints/weights-inception-2015-12-05-6726825d.pth")  # doctest: +SKIP
        >>> fid.update(real=real_images, fake=generated_images)  # doctest: +SKIP
        >>> float(fid.compute())  # doctest: +SKIP
    """

    def __init__(self, inception_weights: str | Path, reset_real_features: bool = True, batch_size: int = 200,
                 **kwargs: Any) -> None:
        check_int("batch_size", batch_size, minimum=1)
        state = load_inception_weights(inception_weights)
        try:
            import torch_fidelity  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"inception_weights is set but torch-fidelity cannot be imported ({exc}): "
                              f"pip install 'lightning-curate[fid]' (with the torchvision build that matches "
                              f"your torch)") from exc
        with tempfile.TemporaryDirectory() as folder:
            # torch-fidelity unpickles its file with weights_only=False: give it one written from tensors only.
            copy = Path(folder) / WEIGHTS_FILE
            torch.save(state, copy)
            try:
                super().__init__(feature=INCEPTION_FEATURES, reset_real_features=reset_real_features,
                                 normalize=False, feature_extractor_weights_path=str(copy), **kwargs)
            except RuntimeError as exc:  # load_state_dict: missing, unexpected or misshapen keys
                raise ValueError(f"inception_weights {inception_weights}: not InceptionV3 weights in torch-fidelity's "
                                 f"format ({exc})") from exc
        self.inception_weights = str(inception_weights)
        self.batch_size = batch_size

    def update(self, real: Optional[Tensor] = None, fake: Optional[Tensor] = None) -> None:  # type: ignore[override]
        """Add a batch of real and/or generated images, float ``[n, C, H, W]`` in ``[-1, 1]``."""
        if real is None and fake is None:
            raise ValueError("InceptionFID.update needs real=... and/or fake=... batches")
        for batch, is_real in ((real, True), (fake, False)):
            if batch is None:
                continue
            for start in range(0, batch.shape[0], self.batch_size):  # 299x299 inputs: bounded memory
                super().update(to_uint8(batch[start:start + self.batch_size]), real=is_real)

    def compute(self) -> Tensor:
        """The Frechet distance between the real and generated Inception features seen."""
        if self.real_features_num_samples < 2 or self.fake_features_num_samples < 2:
            raise ValueError(f"InceptionFID needs at least 2 real and 2 generated images, got "
                             f"{int(self.real_features_num_samples)} and {int(self.fake_features_num_samples)}")
        return super().compute().to(torch.float32)
