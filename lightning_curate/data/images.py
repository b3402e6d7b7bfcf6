"""Real image data sources: scikit-learn's 8x8 digits, CIFAR-10 from local files, a user's own tensors.

Every source here returns images as float32 ``[n, C, H, W]`` scaled to
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
``recall`` (see :mod:`lightning_curate.metrics.image`).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_curate.data.source import DataSource, RealData

__all__ = ["ImageSource", "Digits", "CIFAR10", "TensorImages", "stratified_split", "to_unit_range"]

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

    def __init__(self, judge: Optional[nn.Module] = None) -> None:
        super().__init__()
        if judge is not None and not isinstance(judge, nn.Module):
            raise TypeError(f"judge must be a torch.nn.Module mapping images to logits, got {type(judge).__name__}")
        self.judge = judge
        self._data: Optional[RealData] = None

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
        """``fid``, ``precision`` and ``recall`` of ``samples`` vs ``reference`` in the judge's feature space.

        Features are the judge's ``features(x)`` when it has them, else its
        logits. Precision and recall use ``k = PR_NEIGHBOURS`` nearest
        neighbours. Without a judge, or with fewer than 2 samples on a side,
        returns ``{}`` (precision/recall need more than ``k``).
        """
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
    """

    def __init__(self, heldout_fraction: float = 0.2, seed: int = 0, judge: Optional[nn.Module] = None) -> None:
        super().__init__(judge)
        if not 0.0 < heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        self.heldout_fraction = float(heldout_fraction)
        self.seed = int(seed)
        self.class_names = [str(i) for i in range(10)]

    @property
    def data_shape(self) -> list[int]:
        return [1, 8, 8]

    def _read(self) -> RealData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = to_unit_range(torch.from_numpy(np.asarray(bunch.images, dtype=np.float32)), 16.0)[:, None]
        labels = torch.from_numpy(np.asarray(bunch.target)).to(torch.int64)
        train, held = stratified_split(labels, labels.shape[0], self.heldout_fraction, self.seed)
        return RealData(train=images[train].contiguous(), heldout=images[held].contiguous(),
                        train_labels=labels[train], heldout_labels=labels[held])


# -- CIFAR-10 ------------------------------------------------------------------
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"


class CIFAR10(ImageSource):
    """CIFAR-10 read from a local ``cifar-10-batches-py`` folder (the python pickle batches).

    Train = ``data_batch_1`` .. ``data_batch_5`` (50,000 images), held out =
    ``test_batch`` (10,000); images ``[n, 3, 32, 32]`` in ``[-1, 1]``
    (0 -> -1, 255 -> 1); ``class_names`` from ``batches.meta``. No torchvision,
    no download: get ``cifar-10-python.tar.gz`` (the "CIFAR-10 python version",
    https://www.cs.toronto.edu/~kriz/cifar.html) and extract it yourself.

    The batches are pickles, and unpickling runs code: only point this at files
    you trust.

    Args:
        root: the ``cifar-10-batches-py`` folder, or the folder that contains it.
        heldout: ``"test"`` (the test batch) or one of ``data_batch_1`` ..
            ``data_batch_5``, which is then left out of the training set.
        judge: optional classifier labelling generated images (see :meth:`ImageSource.label`).
    """

    def __init__(self, root: str, heldout: str = "test", judge: Optional[nn.Module] = None) -> None:
        super().__init__(judge)
        choices = ("test",) + CIFAR_TRAIN_BATCHES
        if heldout not in choices:
            raise ValueError(f"heldout must be one of {list(choices)}, got {heldout!r}")
        self.root = str(root)
        self.heldout = heldout
        self.class_names = None  # read from batches.meta on load()

    @property
    def data_shape(self) -> list[int]:
        return [3, 32, 32]

    @property
    def folder(self) -> Path:
        """The ``cifar-10-batches-py`` folder that ``root`` designates."""
        root = Path(self.root).expanduser()
        if root.name != CIFAR_FOLDER and (root / CIFAR_FOLDER).is_dir():
            return root / CIFAR_FOLDER
        return root

    def _missing(self, what: str) -> FileNotFoundError:
        root = Path(self.root).expanduser()
        expected = root if root.name == CIFAR_FOLDER else root / CIFAR_FOLDER
        return FileNotFoundError(
            f"CIFAR-10 {what}. Download the 'CIFAR-10 python version' (cifar-10-python.tar.gz) from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html and extract it so that the folder {expected} holds "
            f"{', '.join(CIFAR_TRAIN_BATCHES)}, {CIFAR_TEST_BATCH} and {CIFAR_META} "
            f"(e.g. `tar -xzf cifar-10-python.tar.gz -C {expected.parent}`). "
            f"Nothing is downloaded at run time.")

    def _read(self) -> RealData:
        folder = self.folder
        if not folder.is_dir():
            raise self._missing(f"folder not found: {folder}")
        names = list(CIFAR_TRAIN_BATCHES) + [CIFAR_TEST_BATCH, CIFAR_META]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise self._missing(f"file(s) missing in {folder}: {', '.join(missing)}")
        self.class_names = _read_meta(folder / CIFAR_META)
        held_name = CIFAR_TEST_BATCH if self.heldout == "test" else self.heldout
        train = [_read_batch(folder / n, len(self.class_names)) for n in CIFAR_TRAIN_BATCHES if n != held_name]
        held = _read_batch(folder / held_name, len(self.class_names))
        return RealData(train=to_unit_range(torch.cat([x for x, _ in train])),
                        heldout=to_unit_range(held[0]),
                        train_labels=torch.cat([y for _, y in train]), heldout_labels=held[1])


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed CIFAR-10 file {path}: cannot unpickle it ({type(err).__name__}: {err})") from err
    if not isinstance(obj, dict):
        raise ValueError(f"malformed CIFAR-10 file {path}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _get(obj: dict, key: str) -> Any:
    """``obj[b"key"]``, or ``obj["key"]`` for batches re-pickled with str keys."""
    if key.encode() in obj:
        return obj[key.encode()]
    return obj.get(key)


def _read_meta(path: Path) -> list[str]:
    names = _get(_unpickle(path), "label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"malformed CIFAR-10 file {path}: expected a non-empty list under b'label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_batch(path: Path, num_classes: int) -> tuple[Tensor, Tensor]:
    """One pickle batch -> uint8 images ``[n, 3, 32, 32]`` and int64 labels ``[n]``.

    Each row of ``b"data"`` holds 1024 red, then 1024 green, then 1024 blue
    values, each plane a row-major 32x32 image, so a reshape gives CHW.
    """
    obj = _unpickle(path)
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"malformed CIFAR-10 batch {path}: b'data' must be a uint8 array [n, 3072], got {got}")
    try:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
    except (TypeError, ValueError) as err:
        raise ValueError(f"malformed CIFAR-10 batch {path}: b'labels' must be a list of ints ({err})") from err
    if labels is None or y.shape[0] != data.shape[0]:
        raise ValueError(f"malformed CIFAR-10 batch {path}: {data.shape[0]} images but "
                         f"{0 if labels is None else y.shape[0]} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"malformed CIFAR-10 batch {path}: labels must lie in 0..{num_classes - 1}, "
                         f"got {int(y.min())}..{int(y.max())}")
    x = torch.from_numpy(np.ascontiguousarray(data)).reshape(-1, 3, 32, 32)
    return x, y


# -- a user's own tensors --------------------------------------------------------
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
    """

    def __init__(self, path: str, heldout_fraction: float = 0.1, seed: int = 0,
                 class_names: Optional[list[str]] = None, judge: Optional[nn.Module] = None) -> None:
        super().__init__(judge)
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
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for bad files
            raise ValueError(f"cannot read {path} with torch.load(weights_only=True): {err}") from err
        if isinstance(obj, Tensor):
            return obj, None, None
        if isinstance(obj, dict) and "images" in obj:
            images, labels, names = obj["images"], obj.get("labels"), obj.get("class_names")
            images = torch.as_tensor(images)
            labels = None if labels is None else torch.as_tensor(labels)
            names = None if names is None else [str(n) for n in names]
            return images, labels, names
        raise ValueError(f"{path} must hold a tensor of images or a dict with 'images' (and optional 'labels'), "
                         f"got {type(obj).__name__}" + (f" with keys {sorted(map(str, obj))}" if isinstance(obj, dict) else ""))
    if suffix == ".npy":
        images = torch.from_numpy(np.load(path, allow_pickle=False))
        label_path = path.with_name(f"{path.stem}_labels.npy")
        labels = torch.from_numpy(np.load(label_path, allow_pickle=False)) if label_path.is_file() else None
        return images, labels, None
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use a .pt or .npy file")


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
        lo, hi = int(images.min()), int(images.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{path}: integer images must lie in 0..255, got values in {lo}..{hi}")
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
