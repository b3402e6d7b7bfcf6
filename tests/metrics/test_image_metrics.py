"""Frechet distance and precision / recall in a feature space, against closed forms and brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from lightning_curate.classifiers import SmallCNN
from lightning_curate.metrics.image import FeatureExtractor, FeatureFID, PrecisionRecall, frechet_distance


def gaussian(n: int, mean, scales, seed: int, mix: bool = False) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    d = len(mean)
    z = torch.randn(n, d, generator=gen) * torch.tensor(scales)
    if mix:  # a non-diagonal covariance
        z = z @ (torch.eye(d) + 0.5 * torch.randn(d, d, generator=gen))
    return z + torch.tensor(mean)


def empirical(x: torch.Tensor):
    x = x.double()
    return x.mean(0), torch.cov(x.T)


# -- the Frechet distance ---------------------------------------------------------
def test_reference_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    a, b = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = (mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum()  # 5 + (4 + 1 + 0)
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert abs(float(got) - 10.0) < 1e-12 and abs(float(got) - float(expected)) < 1e-12


def test_identical_sets_give_zero():
    x = gaussian(600, [1.0, -1.0, 0.5, 2.0, 0.0], [1.0, 2.0, 0.5, 1.0, 3.0], seed=0, mix=True)
    fid = FeatureFID(nn.Identity(), num_features=5)
    fid.update(real=x, fake=x)
    _, cov = empirical(x)
    assert abs(float(fid.compute())) < 1e-9 * float(cov.trace())


def test_fid_equals_the_frechet_distance_of_the_empirical_gaussians():
    real = gaussian(800, [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], seed=1, mix=True)
    fake = gaussian(500, [1.0, -0.5, 0.0, 2.0], [2.0, 0.5, 1.0, 1.5], seed=2, mix=True)
    fid = FeatureFID(nn.Identity(), num_features=4)
    for start in range(0, 800, 300):  # batches: the same sums as one update
        fid.update(real=real[start:start + 300])
    fid.update(fake=fake)
    (m1, s1), (m2, s2) = empirical(real), empirical(fake)
    mine = frechet_distance(m1, s1, m2, s2)
    # An independent reference: scipy's matrix square root of S1 S2.
    scipy_value = float((m1 - m2).square().sum() + s1.trace() + s2.trace()
                        - 2 * np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real))
    value = float(fid.compute())
    assert value > 1.0
    assert abs(value - scipy_value) < 1e-5 * scipy_value
    assert abs(float(mine) - scipy_value) < 1e-9 * scipy_value


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_fid_keeps_the_real_statistics_across_resets_when_asked():
    real, fake = gaussian(300, [0.0, 0.0], [1.0, 1.0], 3), gaussian(300, [1.0, 0.0], [1.0, 1.0], 4)
    fid = FeatureFID(nn.Identity(), num_features=2, reset_real_features=False)
    fid.update(real=real, fake=fake)
    first = fid.compute()
    fid.reset()
    fid.update(fake=fake)
    torch.testing.assert_close(fid.compute(), first)
    with pytest.raises(ValueError, match="at least 2 real and 2 generated"):
        FeatureFID(nn.Identity(), num_features=2).compute()
    with pytest.raises(ValueError, match="real=... and/or fake="):
        fid.update()


def test_fid_uses_the_classifier_features_and_keeps_the_judge_out_of_its_state():
    torch.manual_seed(0)
    judge = SmallCNN(width=4).eval()
    images = torch.rand(40, 1, 8, 8) * 2 - 1
    fid = FeatureFID(judge, batch_size=16)
    assert fid.num_features == judge.num_features == 8
    assert list(fid.state_dict()) == [] and list(fid.parameters()) == []
    fid.train()  # a parent module in training mode must not switch the judge's batch norm to batch statistics
    assert not judge.training
    fid.update(real=images, fake=images)
    feats = judge.features(images).double()
    assert abs(float(fid.compute())) < 1e-9 * float(torch.cov(feats.T).trace())
    other = FeatureFID(judge)
    other.update(real=images[:20], fake=images[20:])
    (m1, s1), (m2, s2) = (empirical(judge.features(half).detach()) for half in (images[:20], images[20:]))
    torch.testing.assert_close(other.compute().double(), frechet_distance(m1, s1, m2, s2), rtol=1e-4, atol=1e-6)


def test_counts_are_checked_by_name():
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        FeatureExtractor(nn.Identity(), num_features=2, batch_size=0)
    with pytest.raises(ValueError, match="num_features must be an int >= 1, got 0"):
        FeatureExtractor(nn.Identity(), num_features=0)
    with pytest.raises(ValueError, match="k must be an int >= 1, got 0"):
        PrecisionRecall(k=0)
    with pytest.raises(ValueError, match="max_samples must be an int >= 2, got 1"):
        PrecisionRecall(max_samples=1)
    with pytest.raises(ValueError, match="block_rows must be an int >= 1, got 2.0"):
        PrecisionRecall(block_rows=2.0)


def test_feature_extractor_needs_a_feature_count():
    with pytest.raises(ValueError, match="num_features or input_shape"):
        FeatureExtractor(nn.Identity())
    probe = FeatureExtractor(nn.Flatten(), input_shape=(2, 3))
    assert probe.num_features == 6
    assert probe(torch.zeros(5, 2, 3)).shape == (5, 6)


# -- precision and recall ---------------------------------------------------------
def test_identical_sets_give_precision_and_recall_one():
    x = gaussian(200, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], seed=5, mix=True)
    metric = PrecisionRecall(k=3)
    metric.update(real=x, fake=x)
    out = metric.compute()
    assert float(out["precision"]) == 1.0 and float(out["recall"]) == 1.0


def test_precision_recall_on_points_of_a_line():
    # Real 0..9, k=1: every real radius is 1. Fake 0.5 and 4.2 lie within 1 of a real point; 20 and 30 do not.
    real = torch.arange(10, dtype=torch.float32)[:, None]
    fake = torch.tensor([[0.5], [4.2], [20.0], [30.0]])
    # Fake radii (k=1): 3.7, 3.7, 10, 10; they cover [-3.2, 4.2], [0.5, 7.9], [10, 30], [20, 40]: reals 0..7.
    metric = PrecisionRecall(k=1)
    metric.update(real=real, fake=fake)
    out = metric.compute()
    assert float(out["precision"]) == 0.5 and float(out["recall"]) == pytest.approx(0.8, abs=1e-7)


def test_a_point_exactly_on_the_radius_counts_as_inside():
    metric = PrecisionRecall(k=1)
    metric.update(real=torch.tensor([[0.0], [1.0], [2.0]]), fake=torch.tensor([[3.0], [3.0]]))
    # |3 - 2| = 1 = radius of 2: inside. The fakes are duplicates: their radius is 0, covering only 3.
    out = metric.compute()
    assert float(out["precision"]) == 1.0 and float(out["recall"]) == 0.0


def test_far_apart_sets_give_zero():
    metric = PrecisionRecall(k=2)
    metric.update(real=gaussian(50, [0.0, 0.0], [1.0, 1.0], 6), fake=gaussian(50, [100.0, 0.0], [1.0, 1.0], 7))
    out = metric.compute()
    assert float(out["precision"]) == 0.0 and float(out["recall"]) == 0.0


def brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkaanniemi et al.'s definition, loop by loop in float64."""
    def radii(x):
        return np.array([np.sort(np.linalg.norm(x - p, axis=1))[k] for p in x])

    def inside(queries, support, r):
        return np.mean([np.any(np.linalg.norm(support - q, axis=1) <= r) for q in queries])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@pytest.mark.parametrize("k,block_rows", [(1, 1024), (3, 7), (5, 1024)])
def test_precision_recall_match_brute_force(k, block_rows):
    real = gaussian(120, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], seed=8, mix=True)
    fake = gaussian(90, [0.8, 0.0, 0.0], [0.6, 1.5, 1.0], seed=9, mix=True)
    metric = PrecisionRecall(k=k, block_rows=block_rows)
    metric.update(real=real[:50], fake=fake[:40])
    metric.update(real=real[50:], fake=fake[40:])
    out = metric.compute()
    p, r = brute_force(real.double().numpy(), fake.double().numpy(), k)
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0
    assert abs(float(out["precision"]) - p) < 1e-6 and abs(float(out["recall"]) - r) < 1e-6


def test_precision_recall_in_a_feature_space_and_sample_cap():
    class FirstCoordinate(nn.Module):
        num_features = 1

        def forward(self, x):
            return x[:, :1]

    real = torch.tensor([[0.0, 0.0], [1.0, 50.0], [2.0, -50.0], [3.0, 9.0]])
    fake = torch.tensor([[1.5, 1000.0], [2.5, -1000.0]])
    metric = PrecisionRecall(k=1, feature_extractor=FirstCoordinate())
    metric.update(real=real, fake=fake)
    # On the first coordinate: every fake is within 1 (the real radius) of a real point; the fake radii
    # (1 each) cover [0.5, 3.5], every real point but 0.
    out = metric.compute()
    assert float(out["precision"]) == 1.0 and float(out["recall"]) == 0.75
    raw = PrecisionRecall(k=1)  # on the raw coordinates the fakes are far from everything
    raw.update(real=real, fake=fake)
    assert float(raw.compute()["precision"]) == 0.0
    capped = PrecisionRecall(k=1, max_samples=3)
    capped.update(real=real, fake=real)
    capped.update(real=real)
    assert capped.real_features[0].shape[0] == 3 and len(capped.real_features) == 1
    small = PrecisionRecall(k=3)
    small.update(real=real[:3], fake=real)
    with pytest.raises(ValueError, match="more than 3 real and generated samples, got 3 and 4"):
        small.compute()
