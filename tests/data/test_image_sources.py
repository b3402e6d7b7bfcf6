"""Image data sources: digits, the CIFAR-10 pickle reader (on a fake folder), a user's tensors, judge labels."""

import pickle
import pickletools
import subprocess

import numpy as np
import pytest
import torch
from fakes import CIFAR_NAMES, _write_pickle, make_fake_cifar
from torch import nn

from lightning_curate.data import CIFAR10, Digits, TensorImages
from lightning_curate.data.images import stratified_split
from lightning_curate.data.source import DataSource, RealData


# -- digits ----------------------------------------------------------------------
def test_digits_shapes_range_labels():
    src = Digits()
    assert isinstance(src, DataSource)
    data = src.load()
    assert isinstance(data, RealData)
    assert src.class_names == [str(i) for i in range(10)]
    assert data.train.shape[1:] == (1, 8, 8) and data.heldout.shape[1:] == (1, 8, 8)
    assert data.train.shape[0] + data.heldout.shape[0] == 1797
    assert data.train.dtype == torch.float32 and data.train_labels.dtype == torch.int64
    both = torch.cat([data.train, data.heldout])
    assert both.min() == -1.0 and both.max() == 1.0
    # 17 intensity values 0..16 map to multiples of 1/8 in [-1, 1].
    assert torch.equal((both + 1) * 8, ((both + 1) * 8).round())
    assert data.train_labels.shape == (data.train.shape[0],)
    assert data.heldout_labels.shape == (data.heldout.shape[0],)
    assert src.load() is data  # cached
    assert src.data_shape == [1, 8, 8]
    assert src.label(data.train[:3]) is None  # no judge


def test_digits_stratified_split_is_deterministic_and_disjoint():
    from sklearn.datasets import load_digits

    raw = load_digits()
    all_counts = torch.bincount(torch.as_tensor(raw.target), minlength=10)
    a, b, c = Digits(seed=0).load(), Digits(seed=0).load(), Digits(seed=1).load()
    assert torch.equal(a.train, b.train) and torch.equal(a.heldout_labels, b.heldout_labels)
    assert not torch.equal(a.heldout, c.heldout)
    held_counts = torch.bincount(a.heldout_labels, minlength=10)
    assert held_counts.sum() == 359  # round(0.2 * 1797)
    assert ((held_counts - 0.2 * all_counts.double()).abs() < 1).all()  # per class: stratified
    assert torch.equal(torch.bincount(a.train_labels, minlength=10) + held_counts, all_counts)
    # Disjoint, and together exactly the original set.
    train_idx, held_idx = stratified_split(torch.as_tensor(raw.target), 1797, 0.2, 0)
    assert set(train_idx.tolist()).isdisjoint(held_idx.tolist())
    assert sorted(train_idx.tolist() + held_idx.tolist()) == list(range(1797))
    images = torch.as_tensor(raw.images, dtype=torch.float32)[:, None] / 8 - 1
    assert torch.equal(a.heldout, images[held_idx]) and torch.equal(a.train, images[train_idx])
    assert torch.equal(a.heldout_labels, torch.as_tensor(raw.target)[held_idx])


def test_digits_bad_fraction():
    with pytest.raises(ValueError, match="heldout_fraction"):
        Digits(heldout_fraction=1.0)


# -- CIFAR-10 on a fake folder -------------------------------------------------------
def test_cifar_reader_shapes_values_layout(tmp_path):
    folder, batches = make_fake_cifar(tmp_path)
    for root in (folder, tmp_path):  # the folder itself or its parent
        src = CIFAR10(str(root))
        data = src.load()
        assert src.class_names == CIFAR_NAMES
        assert data.train.shape == (20, 3, 32, 32) and data.heldout.shape == (4, 3, 32, 32)
        assert data.train.dtype == torch.float32 and data.train_labels.dtype == torch.int64
        expected_labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
        assert data.train_labels.tolist() == expected_labels
        assert data.heldout_labels.tolist() == batches["test_batch"][1]
    # 0 -> -1 and 255 -> 1 exactly, and an affine map in between.
    first = data.train[0]
    assert first[0, 0, 0].item() == -1.0 and first[0, 0, 1].item() == 1.0
    raw = torch.as_tensor(batches["data_batch_1"][0].astype(np.float32))
    flat = data.train[:4].reshape(4, 3072)
    assert torch.allclose(flat, raw / 127.5 - 1, atol=1e-6, rtol=0)
    # Plane layout: 1024 R, 1024 G, 1024 B per image, each a row-major 32x32 plane.
    row = batches["test_batch"][0][2]
    img = data.heldout[2]
    for c in range(3):
        for (r, col) in [(0, 0), (0, 31), (1, 0), (5, 17), (31, 31)]:
            assert img[c, r, col].item() == pytest.approx(row[c * 1024 + r * 32 + col] / 127.5 - 1, abs=1e-6)


def test_cifar_heldout_data_batch(tmp_path):
    folder, batches = make_fake_cifar(tmp_path)
    data = CIFAR10(str(folder), heldout="data_batch_5").load()
    assert data.train.shape[0] == 16 and data.heldout_labels.tolist() == batches["data_batch_5"][1]
    with pytest.raises(ValueError, match="heldout"):
        CIFAR10(str(folder), heldout="train")


def test_cifar_missing_folder_and_file(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        CIFAR10(str(missing)).load()
    msg = str(err.value)
    assert "cifar-10-python.tar.gz" in msg and str(missing / "cifar-10-batches-py") in msg
    assert "Nothing is downloaded" in msg
    folder, _ = make_fake_cifar(tmp_path / "data")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as err:
        CIFAR10(str(folder)).load()
    assert "cifar-10-python.tar.gz" in str(err.value) and str(folder) in str(err.value)


@pytest.mark.parametrize("bad", ["garbage", "short_rows", "float_data", "label_count", "label_range", "not_dict"])
def test_cifar_malformed_batch(tmp_path, bad):
    folder, _ = make_fake_cifar(tmp_path)
    path = folder / "data_batch_2"
    ok = {b"labels": [0, 1, 2, 3], b"data": np.zeros((4, 3072), np.uint8)}
    if bad == "garbage":
        path.write_bytes(b"this is not a pickle")
    elif bad == "short_rows":
        _write_pickle(path, {**ok, b"data": np.zeros((4, 1024), np.uint8)})
    elif bad == "float_data":
        _write_pickle(path, {**ok, b"data": np.zeros((4, 3072), np.float32)})
    elif bad == "label_count":
        _write_pickle(path, {**ok, b"labels": [0, 1]})
    elif bad == "label_range":
        _write_pickle(path, {**ok, b"labels": [0, 1, 2, 10]})
    else:
        _write_pickle(path, [1, 2, 3])
    with pytest.raises(ValueError, match="data_batch_2"):
        CIFAR10(str(folder)).load()


class Payload:
    """A classic malicious pickle: unpickling it runs ``touch <target>``."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.target)],)


def test_fake_cifar_files_name_only_what_the_real_files_name(tmp_path):
    """The fakes are Python-2-style pickles whose only globals are numpy's three array reconstructors."""
    folder, _ = make_fake_cifar(tmp_path)
    for path in folder.iterdir():
        names = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
        assert names == ({"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
                         if path.name != "batches.meta" else set()), path.name


class Call:
    """Pickles as a call of ``fn(*args)``: a way to write streams numpy itself never writes."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("hostile", ["payload_value", "payload_top", "object_array", "other_numpy_global",
                                     "ndarray_call", "reconstruct_shape"])
def test_cifar_hostile_pickle_is_refused_and_runs_nothing(tmp_path, hostile):
    folder, batches = make_fake_cifar(tmp_path / "data")
    target = tmp_path / "X"
    path = folder / "data_batch_2"
    ok = {b"labels": [0, 1, 2, 3], b"data": np.zeros((4, 3072), np.uint8)}
    if hostile == "payload_value":
        obj, refused = {**ok, b"filenames": [Payload(target)]}, ".call, which"  # commands.call at protocol 2
    elif hostile == "payload_top":
        obj, refused = Payload(target), ".call, which"
    elif hostile == "object_array":
        obj, refused = {**ok, b"data": np.array([1, "a"], dtype=object)}, "array of Python objects"
    elif hostile == "other_numpy_global":
        obj, refused = {**ok, b"data": np.ones(3).view(np.recarray)}, "numpy.rec"
    elif hostile == "ndarray_call":
        obj, refused = {**ok, b"data": Call(np.ndarray, (4, 3072))}, "calls numpy.ndarray directly"
    else:
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy 1.x
            from numpy.core.multiarray import _reconstruct

        obj, refused = {**ok, b"data": Call(_reconstruct, np.ndarray, (4, 3072), b"B")}, "shape (4, 3072)"
    _write_pickle(path, obj)
    if hostile.startswith("payload"):  # the payload is live: plain unpickling of the same pickle runs it
        proof = tmp_path / "proof"
        _write_pickle(tmp_path / "proof.pickle", Payload(proof))
        pickle.loads((tmp_path / "proof.pickle").read_bytes(), encoding="bytes")
        assert proof.exists()
    with pytest.raises(ValueError) as err:
        CIFAR10(str(folder)).load()
    message = str(err.value)
    assert str(path) in message and "refused" in message and refused in message, message
    assert not target.exists()
    # The same folder with a real-format batch loads again.
    _write_pickle(path, {b"labels": batches["data_batch_2"][1], b"data": batches["data_batch_2"][0]})
    assert CIFAR10(str(folder)).load().train.shape == (20, 3, 32, 32)


# -- a user's tensors -----------------------------------------------------------------
def test_tensor_images_pt_dict(tmp_path):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 6, 6, generator=g) * 2 - 1
    labels = torch.arange(40) % 4
    torch.save({"images": images, "labels": labels}, tmp_path / "mine.pt")
    src = TensorImages(str(tmp_path / "mine.pt"), heldout_fraction=0.25, seed=3)
    data = src.load()
    assert src.class_names == ["0", "1", "2", "3"]
    assert data.train.shape == (30, 1, 6, 6) and data.heldout.shape == (10, 1, 6, 6)
    held_counts = torch.bincount(data.heldout_labels).tolist()
    assert sorted(held_counts) == [2, 2, 3, 3]  # 10 of 40, as evenly as the classes allow
    # Every image is kept once, with its own label.
    both = torch.cat([data.train, data.heldout])
    both_labels = torch.cat([data.train_labels, data.heldout_labels])
    order = [int(torch.nonzero((images == x).all(dim=(1, 2, 3)))[0]) for x in both]
    assert sorted(order) == list(range(40))
    assert torch.equal(both_labels, labels[order])
    named = TensorImages(str(tmp_path / "mine.pt"), class_names=["a", "b", "c", "d"])
    named.load()
    assert named.class_names == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="class names"):
        TensorImages(str(tmp_path / "mine.pt"), class_names=["a", "b"]).load()


def test_tensor_images_pt_tensor_uint8_and_hw(tmp_path):
    images = torch.randint(0, 256, (10, 5, 7), dtype=torch.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    torch.save(images, tmp_path / "gray.pt")
    src = TensorImages(str(tmp_path / "gray.pt"), heldout_fraction=0.2)
    data = src.load()
    assert src.class_names is None and data.train_labels is None and data.heldout_labels is None
    assert data.train.shape == (8, 1, 5, 7) and data.heldout.shape == (2, 1, 5, 7)
    both = torch.cat([data.train, data.heldout])
    assert torch.equal(torch.sort(both.reshape(-1)).values,
                       torch.sort(images.float().reshape(-1) / 127.5 - 1).values)
    assert both.min() == -1.0 and both.max() == 1.0


def test_tensor_images_npy_with_labels_and_nhwc(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(12, 4, 5, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    np.save(tmp_path / "rgb.npy", nhwc)
    np.save(tmp_path / "rgb_labels.npy", labels)
    data = TensorImages(str(tmp_path / "rgb.npy"), heldout_fraction=0.25, seed=1).load()
    assert data.train.shape == (9, 3, 4, 5) and data.heldout.shape == (3, 3, 4, 5)
    assert torch.bincount(data.heldout_labels).tolist() == [1, 1, 1]  # stratified
    expected = torch.as_tensor(nhwc).permute(0, 3, 1, 2).float() / 127.5 - 1
    both = torch.cat([data.train, data.heldout])
    both_labels = torch.cat([data.train_labels, data.heldout_labels])
    for x, y in zip(both, both_labels):
        match = torch.nonzero((expected == x).all(dim=(1, 2, 3))).reshape(-1)
        assert match.numel() == 1 and labels[int(match)] == int(y)
    # Without the sibling labels file: no labels.
    np.save(tmp_path / "plain.npy", nhwc[..., :1].astype(np.float32) / 255 * 2 - 1)
    plain = TensorImages(str(tmp_path / "plain.npy")).load()
    assert plain.train.shape[1:] == (1, 4, 5) and plain.train_labels is None


def test_tensor_images_errors(tmp_path):
    torch.save(torch.linspace(0, 255, 160).reshape(10, 1, 4, 4), tmp_path / "bad_range.pt")
    with pytest.raises(ValueError, match=r"must already lie in \[-1, 1\], got values in \[0, 255\]"):
        TensorImages(str(tmp_path / "bad_range.pt")).load()
    torch.save(torch.linspace(-1.5, 0.5, 160).reshape(10, 1, 4, 4), tmp_path / "below.pt")
    with pytest.raises(ValueError, match=r"got values in \[-1.5, 0.5\]"):
        TensorImages(str(tmp_path / "below.pt")).load()
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        TensorImages(str(missing)).load()
    torch.save(torch.zeros(10, 5, 4, 4), tmp_path / "five_channels.pt")
    with pytest.raises(ValueError, match="C in"):
        TensorImages(str(tmp_path / "five_channels.pt")).load()
    torch.save({"images": torch.zeros(10, 1, 4, 4), "labels": torch.zeros(7, dtype=torch.long)},
               tmp_path / "label_count.pt")
    with pytest.raises(ValueError, match="10 labels"):
        TensorImages(str(tmp_path / "label_count.pt")).load()


def test_tensor_images_refuse_pickles_and_name_the_file(tmp_path):
    target = tmp_path / "X"
    np.save(tmp_path / "objects.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"objects\.npy as a numeric \.npy array \(object arrays are pickles"):
        TensorImages(str(tmp_path / "objects.npy")).load()
    np.save(tmp_path / "fine.npy", np.zeros((4, 1, 2, 2), np.uint8))
    np.save(tmp_path / "fine_labels.npy", np.array([Payload(target)] * 4, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"fine_labels\.npy as a numeric \.npy array \(object arrays"):
        TensorImages(str(tmp_path / "fine.npy")).load()
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "fine.npy").read_bytes()[:20])
    with pytest.raises(ValueError, match=r"truncated\.npy"):
        TensorImages(str(tmp_path / "truncated.npy")).load()
    torch.save({"images": torch.zeros(4, 1, 2, 2), "labels": Payload(target)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt with torch\.load\(weights_only=True\)"):
        TensorImages(str(tmp_path / "evil.pt")).load()
    (tmp_path / "evil2.pt").write_bytes(pickle.dumps(Payload(target)))
    with pytest.raises(ValueError, match=r"evil2\.pt with torch\.load\(weights_only=True\)"):
        TensorImages(str(tmp_path / "evil2.pt")).load()
    assert not target.exists()


def test_tensor_images_pt_needs_a_torch_whose_weights_only_holds(tmp_path, monkeypatch):
    torch.save(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), tmp_path / "fine.pt")
    monkeypatch.setattr(torch, "__version__", "2.5.1+cpu")  # weights_only=True can be bypassed before 2.6
    with pytest.raises(RuntimeError, match=r"fine\.pt: reading \.pt files safely needs torch >= 2\.6"):
        TensorImages(str(tmp_path / "fine.pt")).load()
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert TensorImages(str(tmp_path / "fine.pt")).load().train.shape[1:] == (1, 2, 2)


# -- labels from a judge ---------------------------------------------------------------
class MeanJudge(nn.Module):
    """Logits favour class 1 for bright images, class 0 for dark ones (10 classes)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))
        with torch.no_grad():
            self.w[1] = 1.0
            self.w[0] = -1.0

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None] * self.w[None, :]


def test_label_with_and_without_judge():
    x = torch.cat([torch.full((3, 1, 8, 8), 0.5), torch.full((2, 1, 8, 8), -0.5)])
    assert Digits().label(x) is None
    judge = MeanJudge()
    judge.train()
    src = Digits(judge=judge)
    labels = src.label(x)
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(labels, judge(x).argmax(1))
    assert judge.training  # mode restored
    labels += 1  # an ordinary tensor, not an inference tensor
    # More than one judge batch (1024).
    big = torch.randn(2500, 1, 8, 8)
    assert torch.equal(src.label(big), judge(big).argmax(1))
    with pytest.raises(ValueError, match="outputs 3 classes.*has 10"):
        Digits(judge=nn.Sequential(nn.Flatten(), nn.Linear(64, 3))).label(x)


def test_prepare_prepares_the_judge_and_sample_metrics_use_its_features():
    class PreparedJudge(MeanJudge):
        prepared = 0

        def prepare(self):
            self.prepared += 1

    judge = PreparedJudge()
    src = Digits(judge=judge)
    src.prepare()
    assert judge.prepared == 1
    Digits().prepare()  # no judge: nothing to do
    real = src.load().heldout
    same = src.sample_metrics(real, real)  # a judge without features(): its logits are the features
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["precision"] == 1.0 and same["recall"] == 1.0
    brighter = src.sample_metrics(real.clamp(min=0.0), real)
    assert brighter["fid"] > 0.01
    assert set(brighter) == {"fid", "precision", "recall"}
    assert Digits().sample_metrics(real, real) == {}  # no judge, no feature space
    assert src.sample_metrics(real[:1], real) == {}  # too few samples for a covariance
    assert set(src.sample_metrics(real[:3], real)) == {"fid"}  # precision/recall need more than k = 3
