"""CIFAR-10 from a local ``cifar-10-batches-py`` folder, parsed without executing pickles.

The "CIFAR-10 python version" stores its batches as pickles. Plain
``pickle.load`` would run whatever a file asks for, so the batches are read by
a restricted unpickler (:func:`read_cifar_pickle`) that knows only the few
objects these files contain.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_curate.data.images import ImageSource, to_unit_range
from lightning_curate.data.source import RealData

__all__ = ["CIFAR10", "read_cifar_pickle"]

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

    The batches are pickles, but they are never unpickled with ``pickle.load``:
    :func:`read_cifar_pickle` accepts only what these files hold (dicts,
    lists, bytes, strings, numbers and uint8 numpy arrays) and refuses any other
    object a file asks for, naming the file; nothing in a file is run.

    Args:
        root: the ``cifar-10-batches-py`` folder, or the folder that contains it.
        heldout: ``"test"`` (the test batch) or one of ``data_batch_1`` ..
            ``data_batch_5``, which is then left out of the training set.
        judge: optional classifier labelling generated images (see :meth:`ImageSource.label`).
        inception_weights: local InceptionV3 weights for ``inception_fid`` (see :meth:`ImageSource.sample_metrics`).
    """

    def __init__(self, root: str, heldout: str = "test", judge: Optional[nn.Module] = None,
                 inception_weights: Optional[str] = None) -> None:
        super().__init__(judge, inception_weights)
        choices = ("test",) + CIFAR_TRAIN_BATCHES
        if heldout not in choices:
            raise ValueError(f"heldout must be one of {list(choices)}, got {heldout!r}")
        self.root = str(root)
        self.heldout = heldout
        self.class_names = None  # read from batches.meta on load()

    @property
    def data_shape(self) -> list[int]:
        """``[3, 32, 32]``, known without reading the files."""
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


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only plain data and numpy arrays: every other global a file names is refused.

    A CIFAR-10 batch (pickled by Python 2 with numpy 1.x) names exactly three
    globals, for its arrays: ``numpy.core.multiarray._reconstruct``,
    ``numpy.ndarray`` and ``numpy.dtype`` (``numpy._core...`` when re-pickled
    with numpy 2). Those three are served by guarded stand-ins: ``ndarray`` is
    a name only ``_reconstruct`` accepts (it cannot be called or
    instantiated), ``_reconstruct`` builds only an empty plain ndarray, as
    numpy writes it, and ``dtype`` refuses object dtypes. Persistent ids are
    refused by ``pickle`` itself.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds")
        return allowed


class _NdarrayName:
    """Stands for ``numpy.ndarray`` in a stream: only :func:`_reconstruct` accepts it, nothing can call it."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("it calls numpy.ndarray directly, which numpy's pickles never do")


_NDARRAY = _NdarrayName()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
    """The ``_reconstruct`` of numpy, as every ndarray pickle calls it: ``(ndarray, (0,), b'b')``."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"it asks for an array of type {subtype!r}, not numpy.ndarray")
    if tuple(shape) != (0,):  # numpy writes (0,); the real shape and data come with __setstate__, from the file
        raise pickle.UnpicklingError(f"it asks for an empty array of shape {shape!r}, numpy writes (0,)")
    return _multiarray._reconstruct(np.ndarray, (0,), _dtype(dtype))


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` from a type code (``'u1'``), refusing object dtypes."""
    if isinstance(spec, np.dtype):
        dtype = spec
    elif isinstance(spec, (str, bytes)):
        dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, bool(align), bool(copy))
    else:
        raise pickle.UnpicklingError(f"it asks for a numpy dtype from {type(spec).__name__}, not a type code")
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"it asks for a numpy array of Python objects (dtype {dtype})")
    return dtype


try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


def read_cifar_pickle(path: Path) -> dict:
    """The dict pickled in a CIFAR-10 file, read without running anything the file asks for.

    Raises:
        ValueError: the file is not a pickle, is refused (it names an object that is not plain data or a
            numpy array), or does not hold a dict; the message names the file.
    """
    try:
        with open(path, "rb") as fh:
            obj = _CifarUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"CIFAR-10 file {path} refused or malformed: {err}. Only dicts, lists, bytes, strings, "
                         f"numbers and numeric numpy arrays are read from these files; nothing in them is run"
                         ) from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, UnicodeDecodeError,
            MemoryError) as err:
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
    names = _get(read_cifar_pickle(path), "label_names")
    if not isinstance(names, (list, tuple)) or not names:
        raise ValueError(f"malformed CIFAR-10 file {path}: expected a non-empty list under b'label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def _read_batch(path: Path, num_classes: int) -> tuple[Tensor, Tensor]:
    """One pickle batch -> uint8 images ``[n, 3, 32, 32]`` and int64 labels ``[n]``.

    Each row of ``b"data"`` holds 1024 red, then 1024 green, then 1024 blue
    values, each plane a row-major 32x32 image, so a reshape gives CHW.
    """
    obj = read_cifar_pickle(path)
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


