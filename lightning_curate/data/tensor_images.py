"""A user's own images from a ``.pt`` or ``.npy`` file, loaded without running code from it.

``.pt`` files are read with ``torch.load(weights_only=True)`` (tensors and
plain containers only; torch >= 2.6, where that mode holds), ``.npy`` files
with ``np.load(allow_pickle=False)``: an object array, which would be a pickle,
is refused with an error naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_curate.data.images import ImageSource, stratified_split, to_unit_range
from lightning_curate.data.source import RealData

__all__ = ["TensorImages"]


class TensorImages(ImageSource):
    """Your own images from a ``.pt`` or ``.npy`` file, with optional labels.

    - ``.pt``: a tensor of images, or a dict with ``"images"`` and optional
      ``"labels"`` (and optional ``"class_names"``); loaded with
      ``torch.load(weights_only=True)``.
    - ``.npy``: the images; labels, if any, in a sibling ``<stem>_labels.npy``.

    Images may be ``[n, H, W]`` (one channel is added), ``[n, C, H, W]`` or
    ``[n, H, W, C]`` with ``C`` in {1, 3} (channels-first wins when both fit).
    uint8 (or other integer) images in ``0..255`` are scaled to ``[-1, 1]``;
    float images must already lie in ``[-1, 1]``. The held-out set is a seeded
    split, stratified by label when there are labels.

    Args:
        path: the ``.pt`` or ``.npy`` file.
        heldout_fraction: fraction held out.
        seed: seeds the split.
        class_names: names of the label values (default: from the file, else
            ``"0"``, ``"1"``, ... up to the largest label; ``None`` without labels).
        judge: optional classifier labelling generated images (see :meth:`ImageSource.label`).
        inception_weights: local InceptionV3 weights for ``inception_fid`` (see :meth:`ImageSource.sample_metrics`).
    """

    def __init__(self, path: str, heldout_fraction: float = 0.1, seed: int = 0,
                 class_names: Optional[list[str]] = None, judge: Optional[nn.Module] = None,
                 inception_weights: Optional[str] = None) -> None:
        super().__init__(judge, inception_weights)
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.path = str(path)
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        self._given_names = None if class_names is None else [str(c) for c in class_names]
        self.class_names = self._given_names

    def _read(self) -> RealData:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"image file not found: {path}. Save your images there as a .pt file (a tensor [n, C, H, W], "
                f"or a dict with 'images' and optional 'labels') or as a .npy array (labels, if any, in "
                f"{path.stem}_labels.npy beside it). Nothing is downloaded at run time.")
        images, labels, names = _read_tensor_file(path)
        x = _as_nchw(images, path)
        y = None if labels is None else _as_labels(labels, x.shape[0], path)
        names = self._given_names or names
        if y is not None:
            top = int(y.max()) if y.numel() else -1
            if names is None:
                names = [str(i) for i in range(top + 1)]
            elif top >= len(names):
                raise ValueError(f"{path}: labels go up to {top} but only {len(names)} class names were given")
        self.class_names = names
        train, held = stratified_split(y, x.shape[0], self.heldout_fraction, self.seed)
        return RealData(train=x[train].contiguous(), heldout=x[held].contiguous(),
                        train_labels=None if y is None else y[train],
                        heldout_labels=None if y is None else y[held])


def _read_tensor_file(path: Path) -> tuple[Tensor, Optional[Tensor], Optional[list[str]]]:
    suffix = path.suffix.lower()
    if suffix == ".pt" or suffix == ".pth":
        _check_safe_torch_load(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for bad files
            raise ValueError(f"cannot read {path} with torch.load(weights_only=True), which loads only tensors and "
                             f"plain containers and runs nothing from the file: {err}") from err
        if isinstance(obj, Tensor):
            return obj, None, None
        if isinstance(obj, dict) and "images" in obj:
            images, labels, names = obj["images"], obj.get("labels"), obj.get("class_names")
            images = torch.as_tensor(images)
            labels = None if labels is None else torch.as_tensor(labels)
            names = None if names is None else [str(n) for n in names]
            return images, labels, names
        keys = f" with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else ""
        raise ValueError(f"{path} must hold a tensor of images or a dict with 'images' (and optional 'labels'), "
                         f"got {type(obj).__name__}{keys}")
    if suffix == ".npy":
        images = torch.from_numpy(_load_npy(path))
        label_path = path.with_name(f"{path.stem}_labels.npy")
        labels = torch.from_numpy(_load_npy(label_path)) if label_path.is_file() else None
        return images, labels, None
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use a .pt or .npy file")


def _check_safe_torch_load(path: Path) -> None:
    """``torch.load(weights_only=True)`` can be bypassed before torch 2.6 (CVE-2025-32434): refuse there."""
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    if version < (2, 6):
        raise RuntimeError(f"{path}: reading .pt files safely needs torch >= 2.6 (this is torch "
                           f"{torch.__version__}); upgrade torch or save the images as .npy")


def _load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickles (object arrays are refused): errors name the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:  # numpy's refusal of object arrays, or a malformed header
        hint = " (object arrays are pickles and are never loaded: save a numeric array)" \
            if "allow_pickle" in str(err) else ""
        raise ValueError(f"cannot read {path} as a numeric .npy array{hint}: {err}") from err
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read {path} as a .npy array: {err}") from err
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} must hold one .npy array, got {type(array).__name__}")
    return array


def _as_nchw(images: Tensor, path: Path) -> Tensor:
    """Any accepted layout and dtype -> float32 ``[n, C, H, W]`` in ``[-1, 1]``."""
    if images.dim() == 3:
        images = images[:, None]
    elif images.dim() == 4:
        if images.shape[1] not in (1, 3):
            if images.shape[3] in (1, 3):
                images = images.permute(0, 3, 1, 2)
            else:
                raise ValueError(f"{path}: images must be [n, H, W], [n, C, H, W] or [n, H, W, C] with C in "
                                 f"{{1, 3}}, got shape {list(images.shape)}")
    else:
        raise ValueError(f"{path}: images must be [n, H, W], [n, C, H, W] or [n, H, W, C] with C in {{1, 3}}, "
                         f"got shape {list(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{path}: need at least 2 images (train and held out), got {images.shape[0]}")
    if images.dtype == torch.bool or images.is_complex():
        raise ValueError(f"{path}: images must be uint8 in 0..255 or float in [-1, 1], got dtype {images.dtype}")
    if not images.is_floating_point():
        imin, imax = int(images.min()), int(images.max())
        if imin < 0 or imax > 255:
            raise ValueError(f"{path}: integer images must lie in 0..255, got values in {imin}..{imax}")
        return to_unit_range(images).contiguous()
    images = images.to(torch.float32)
    if not torch.isfinite(images).all():
        raise ValueError(f"{path}: images contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1.0 - 1e-6 or hi > 1.0 + 1e-6:
        hint = " (they look like 0..255: save them as uint8, or scale them with x / 127.5 - 1)" \
            if lo >= 0 and hi <= 255 else ""
        raise ValueError(f"{path}: float images must already lie in [-1, 1], got values in "
                         f"[{lo:.4g}, {hi:.4g}]{hint}")
    return images.clamp(-1.0, 1.0).contiguous()


def _as_labels(labels: Tensor, n: int, path: Path) -> Tensor:
    labels = labels.reshape(-1) if labels.dim() > 1 and labels.numel() == n else labels
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{path}: expected {n} labels (one per image), got shape {list(labels.shape)}")
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError(f"{path}: labels must be integers")
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{path}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.to(torch.int64)
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{path}: labels must be >= 0, got a minimum of {int(labels.min())}")
    return labels
