"""Inception FID from local weights only: torchmetrics' own number, and never a download.

The weights are a randomly initialised InceptionV3 made here and saved in torch-fidelity's format
(the state dict of its ``FeatureExtractorInceptionV3``). Our ``InceptionFID`` on float images in
[-1, 1] must equal torchmetrics' ``FrechetInceptionDistance`` computed directly on the same images as
uint8 with the same weights file. Every test runs with the network cut off (a socket that connects
raises), so a download attempt would fail the test.
"""

from __future__ import annotations

import math
import socket
import sys

import pytest
import torch
from fakes import make_fake_cifar

from lightning_curate.data import CIFAR10, TensorImages
from lightning_curate.data.images import to_unit_range
from lightning_curate.metrics.inception import (
    MISSING_WEIGHTS_MESSAGE,
    InceptionFID,
    load_inception_weights,
    to_uint8,
)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: any connection attempt (a download) raises."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _images(n, seed, channels=3, size=32):
    gen = torch.Generator().manual_seed(seed)
    return to_unit_range(torch.randint(0, 256, (n, channels, size, size), generator=gen))


def test_to_uint8_inverts_the_unit_range_exactly():
    raw = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    assert torch.equal(to_uint8(to_unit_range(raw)), raw)
    gray = to_uint8(to_unit_range(raw[:, :1]))
    assert gray.shape == (2, 3, 16, 16) and torch.equal(gray[:, 2], raw[:, 0])
    clamped = to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 1, 1, 2))
    assert clamped.shape == (1, 3, 1, 2) and clamped.flatten().tolist() == [0, 255] * 3
    with pytest.raises(ValueError, match=r"Inception FID needs images \[n, 3, H, W\]"):
        to_uint8(torch.zeros(2, 2, 8, 8))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bad_weights_files_are_refused_naming_the_parameter(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="inception_weights: no file"):
        InceptionFID(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="inception_weights: no file"):
        CIFAR10(str(tmp_path), inception_weights=str(tmp_path / "missing.pth"))
    evil = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": _Payload()}, evil)
    with pytest.raises(ValueError, match="inception_weights .*refused"):
        load_inception_weights(evil)
    assert "code ran" not in capsys.readouterr().out
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict of tensors"):
        load_inception_weights(tmp_path / "list.pth")


def test_without_torch_fidelity_the_error_names_the_extra(tmp_path, monkeypatch):
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import torch_fidelity raises ImportError
    with pytest.raises(ImportError, match=r"lightning-curate\[fid\]"):
        InceptionFID(tmp_path / "w.pth")


def test_without_weights_one_line_says_which_parameter_and_nothing_is_reported(tmp_path, caplog):
    make_fake_cifar(tmp_path, n=4)
    source = CIFAR10(str(tmp_path / "cifar-10-batches-py"))
    real = source.load()
    with caplog.at_level("INFO"):
        first = source.sample_metrics(real.train[:4], real.heldout)
        second = source.sample_metrics(real.train[4:8], real.heldout)
    assert first == {} and second == {}  # no judge, no weights: nothing measured
    said = [r.getMessage() for r in caplog.records if MISSING_WEIGHTS_MESSAGE in r.getMessage()]
    assert len(said) == 1 and "inception_weights" in said[0] and "\n" not in said[0]
    # Grayscale sources (the 8x8 digits) are not told about a number nobody reports for them.
    caplog.clear()
    path = tmp_path / "gray.pt"
    torch.save({"images": torch.rand(20, 1, 8, 8) * 2 - 1}, path)
    gray = TensorImages(str(path))
    with caplog.at_level("INFO"):
        gray.sample_metrics(gray.load().train[:5], gray.load().heldout)
    assert not [r for r in caplog.records if MISSING_WEIGHTS_MESSAGE in r.getMessage()]


# -- with torch-fidelity: the value itself ------------------------------------------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random InceptionV3 saved as torch-fidelity's weights file (its FeatureExtractorInceptionV3's state dict)."""
    inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3", reason=(
        "torch-fidelity is not installed (the fid extra; it needs a torchvision matching torch)"))
    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    cls = inception.FeatureExtractorInceptionV3
    original = cls.load_state_dict
    cls.load_state_dict = lambda self, *args, **kwargs: None  # keep the fresh random initialisation
    try:
        net = cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    finally:
        cls.load_state_dict = original
    gen = torch.Generator().manual_seed(0)
    state = net.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and value.dim() >= 2:  # He-scaled weights: features stay O(1) through depth
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * math.sqrt(2.0 / fan_in)
    path = folder / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_equals_torchmetrics_fid_on_the_same_images_and_weights(weights):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _images(6, seed=1), _images(5, seed=2) * 0.5
    ours = InceptionFID(weights, batch_size=4)  # batches of 4, 2 and 4, 1: the sums do not depend on it
    ours.update(real=real)
    ours.update(fake=fake)
    direct = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(weights))
    direct.update(to_uint8(real), real=True)
    direct.update(to_uint8(fake), real=False)
    value, expected = ours.compute(), direct.compute()
    assert float(expected) > 1.0  # different sets, O(1) features: a distance well away from 0
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


def test_identical_sets_give_zero_and_the_source_reports_it_beside_the_judge_fid(tmp_path, weights):
    images = _images(4, seed=3)
    fid = InceptionFID(weights, reset_real_features=False)
    fid.update(real=images, fake=images)
    same = float(fid.compute())
    fid.reset()  # the real statistics stay
    fid.update(fake=_images(4, seed=4))
    assert abs(same) < 1e-4 * float(fid.compute())
    # Through a data source: inception_fid appears in its per-round metrics, with the same value.
    make_fake_cifar(tmp_path, n=4)
    source = CIFAR10(str(tmp_path / "cifar-10-batches-py"), inception_weights=str(weights))
    real = source.load()
    metrics = source.sample_metrics(real.train[:4], real.heldout)
    direct = InceptionFID(weights)
    direct.update(real=real.heldout, fake=real.train[:4])
    assert set(metrics) == {"inception_fid"}  # no judge here: the judge's fid is absent, Inception's is not
    assert metrics["inception_fid"] == pytest.approx(float(direct.compute()), rel=1e-6)
    # The network is held outside the source's module tree: not saved with it.
    assert not any("inception" in k.lower() for k in source.state_dict())
