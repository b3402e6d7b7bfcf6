"""Fake data files in real formats, shared by tests that read them (nothing is downloaded)."""

import pickle
import struct

import numpy as np

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle did for the real CIFAR-10 files: protocol 2, bytes as Python 2 ``str``.

    Python 3 would pickle bytes at protocol 2 through ``_codecs.encode``, a
    global the real files never name; Python 2 wrote them with the
    (SHORT_)BINSTRING opcodes, which ``encoding="bytes"`` reads back as bytes.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def _write_pickle(path, obj):
    """``obj`` pickled like the real CIFAR-10 files (Python 2, numpy 1.x global names)."""
    with open(path, "wb") as fh:
        _Python2Pickler(fh, protocol=2).dump(obj)
    raw = path.read_bytes().replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                                    b"cnumpy.core.multiarray\n_reconstruct\n")  # numpy 1.x's module name
    path.write_bytes(raw)


def make_fake_cifar(root, n=4, seed=0):
    """A ``cifar-10-batches-py`` folder in the real format: n images per batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        data[0, 0], data[0, 1] = 0, 255
        labels = [(i + j) % 10 for j in range(n)]
        _write_pickle(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                                      b"filenames": [f"{name}_{j}.png".encode() for j in range(n)]})
        batches[name] = (data, labels)
    _write_pickle(folder / "batches.meta", {b"num_cases_per_batch": n, b"num_vis": 3072,
                                            b"label_names": [c.encode() for c in CIFAR_NAMES]})
    return folder, batches
