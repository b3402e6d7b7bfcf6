"""Fake data files in real formats, shared by tests that read them (nothing is downloaded)."""

import pickle

import numpy as np

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _write_pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


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
