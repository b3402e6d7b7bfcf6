import math

import ot
import pytest
import torch

from lightning_curate.metrics.curation import MMD, ModeShares, RewardStats, SelectionEntropy, SlicedWasserstein


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- RewardStats


def test_reward_stats_matches_torch_over_several_updates():
    g = _gen(0)
    parts = [torch.randn(n, generator=g) * 3 + 1 for n in (17, 1, 250)]
    metric = RewardStats()
    for p in parts:
        metric.update(p)
    out = metric.compute()
    everything = torch.cat(parts)
    torch.testing.assert_close(out["mean"], everything.mean())
    torch.testing.assert_close(out["std"], everything.std())  # unbiased
    assert out["min"].item() == everything.min().item()
    assert out["max"].item() == everything.max().item()


def test_reward_stats_keeps_precision_with_a_large_offset():
    r = 1000.0 + 0.01 * torch.randn(5000, generator=_gen(1), dtype=torch.float64)
    metric = RewardStats()
    metric.update(r.float())
    torch.testing.assert_close(metric.compute()["std"], r.float().double().std().float(), rtol=1e-3, atol=0)


def test_reward_stats_single_value_has_zero_std_and_reset_forgets():
    metric = RewardStats()
    metric.update(torch.tensor([100.0, -100.0]))
    metric.reset()
    metric.update(torch.tensor([2.5]))
    out = metric.compute()
    assert out["mean"].item() == 2.5 and out["std"].item() == 0.0
    assert out["min"].item() == 2.5 and out["max"].item() == 2.5


def test_reward_stats_merge_equals_one_pass():
    """The DDP reduction (sum / min / max states) gives what one process over all data would."""
    a, b, whole = RewardStats(), RewardStats(), RewardStats()
    x, y = torch.tensor([1.0, 5.0, -2.0]), torch.tensor([7.0, 0.5])
    a.update(x), b.update(y), whole.update(torch.cat([x, y]))
    a.merge_state(b)
    for key, value in whole.compute().items():
        torch.testing.assert_close(a.compute()[key], value)


# ---------------------------------------------------------------- ModeShares


def test_mode_shares_counts_across_updates():
    metric = ModeShares(num_modes=4)
    metric.update(torch.tensor([0, 0, 1]))
    metric.update(torch.tensor([3]))
    torch.testing.assert_close(metric.compute(), torch.tensor([0.5, 0.25, 0.0, 0.25], dtype=torch.float64))
    metric.reset()
    metric.update(torch.tensor([2, 2]))
    torch.testing.assert_close(metric.compute(), torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))


def test_mode_shares_merge_sums_counts():
    a, b = ModeShares(3), ModeShares(3)
    a.update(torch.tensor([0, 0, 0]))
    b.update(torch.tensor([1]))
    a.merge_state(b)
    torch.testing.assert_close(a.compute(), torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))


def test_mode_shares_errors():
    with pytest.raises(ValueError, match="0..2"):
        ModeShares(3).update(torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="0..2"):
        ModeShares(3).update(torch.tensor([-1]))
    with pytest.raises(ValueError, match="integer"):
        ModeShares(3).update(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="num_modes must be an int >= 1, got 0"):
        ModeShares(0)


# ---------------------------------------------------------------- SelectionEntropy


def _entropy_of(rows):
    metric = SelectionEntropy()
    metric.update(torch.tensor(rows))
    return metric.compute().item()


def test_selection_entropy_reference_values():
    assert _entropy_of([[0.3, 0.3, 0.3, 0.3]]) == pytest.approx(1.0, abs=1e-6)
    assert _entropy_of([[0.0, -1000.0, -1000.0]]) == pytest.approx(0.0, abs=1e-6)
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4) / ln 2
    hand = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert _entropy_of([[0.0, math.log(3.0)]]) == pytest.approx(hand, abs=1e-6)
    # a -inf candidate never wins: p = (1/2, 1/2, 0), normalised by log K = log 3
    assert _entropy_of([[1.0, 1.0, -math.inf]]) == pytest.approx(math.log(2) / math.log(3), abs=1e-6)
    assert _entropy_of([[5.0], [-2.0]]) == 0.0  # K = 1: no choice


def test_selection_entropy_averages_rows_over_updates():
    metric = SelectionEntropy()
    metric.update(torch.tensor([[0.0, 0.0]]))        # 1
    metric.update(torch.tensor([[0.0, -1e4]] * 3))   # 0, three times
    assert metric.compute().item() == pytest.approx(0.25, abs=1e-6)


def test_selection_entropy_errors():
    with pytest.raises(ValueError, match="all -inf"):
        _entropy_of([[-math.inf, -math.inf]])
    with pytest.raises(ValueError, match="NaN"):
        _entropy_of([[0.0, math.nan]])
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        SelectionEntropy().update(torch.zeros(3))


# ---------------------------------------------------------------- SlicedWasserstein


def test_sliced_wasserstein_identical_sets_is_zero():
    x = torch.randn(300, 2, generator=_gen(0))
    metric = SlicedWasserstein()
    metric.update(x, x.clone())
    assert metric.compute().item() == 0.0


def test_sliced_wasserstein_of_a_shift_is_exact_over_the_projections():
    """Shifting by v moves each projection by <v, theta>: SW = sqrt(mean_theta <v, theta>^2)."""
    x = torch.randn(1000, 2, generator=_gen(1))
    v = torch.tensor([1.0, -2.0])
    metric = SlicedWasserstein(num_projections=128, seed=0)
    metric.update(x, x + v)
    expected = (metric.projections(2) @ v).square().mean().sqrt()
    torch.testing.assert_close(metric.compute(), expected, rtol=1e-4, atol=1e-5)
    # and the fixed projections average <v, theta>^2 to about |v|^2 / 2 (std of the mean ~3% here)
    assert abs(expected.item() / (v.norm().item() / math.sqrt(2)) - 1) < 0.1


def test_sliced_wasserstein_unequal_sizes_by_hand():
    # 1D: quantiles of {0, 1} vs {0, 0.5, 1} differ by 0.5 on (1/3, 2/3): W2^2 = 0.25 / 3
    metric = SlicedWasserstein(num_projections=4)
    metric.update(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.5], [1.0]]))
    assert metric.compute().item() == pytest.approx(math.sqrt(1 / 12), rel=1e-6)


def test_sliced_wasserstein_matches_pot_with_the_same_projections():
    x = torch.randn(301, 3, generator=_gen(2))
    y = torch.randn(517, 3, generator=_gen(3)) * 1.5 + 0.7
    metric = SlicedWasserstein(num_projections=32, seed=7)
    metric.update(x, y)
    theta = metric.projections(3).double().numpy()
    expected = ot.sliced_wasserstein_distance(x.double().numpy(), y.double().numpy(), projections=theta.T)
    assert metric.compute().item() == pytest.approx(float(expected), rel=1e-5)


def test_sliced_wasserstein_reuses_the_reference_only_when_it_is_the_same():
    """The reference's sorted projections are kept between rounds; a changed reference is sorted again."""
    x, y = torch.randn(300, 2, generator=_gen(6)), torch.randn(400, 2, generator=_gen(7))

    def fresh(a, b):
        metric = SlicedWasserstein(num_projections=16)
        metric.update(a, b)
        return metric.compute().item()

    metric = SlicedWasserstein(num_projections=16)
    for a, b in ((x, y), (x + 1, y.clone()), (x, y + 0.5), (x, y[:-1]), (x, y)):
        metric.reset()
        metric.update(a, b)
        assert metric.compute().item() == fresh(a, b)
    y[0, 0] += 1e-3  # in place: the kept copy is compared, not the object
    metric.reset()
    metric.update(x, y)
    assert metric.compute().item() == fresh(x, y)
    metric.seed = 5  # other projections: the kept sort is not theirs
    metric.reset()
    metric.update(x, y)
    other = SlicedWasserstein(num_projections=16, seed=5)
    other.update(x, y)
    assert metric.compute().item() == other.compute().item() != fresh(x, y)


def test_sliced_wasserstein_seed_fixes_the_value():
    x, y = torch.randn(200, 2, generator=_gen(4)), torch.randn(200, 2, generator=_gen(5)) + 1

    def value(seed):
        metric = SlicedWasserstein(num_projections=8, seed=seed)
        metric.update(x, y)
        return metric.compute().item()

    assert value(0) == value(0)
    assert value(0) != value(1)


def test_sliced_wasserstein_keeps_the_first_max_samples_and_resets():
    x = torch.randn(30, 2, generator=_gen(6))
    y = torch.randn(40, 2, generator=_gen(7)) + 2
    capped = SlicedWasserstein(max_samples=20)
    capped.update(x[:15], y[:25])
    capped.update(x[15:], y[25:])  # only 5 more samples fit, no more real rows
    reference = SlicedWasserstein()
    reference.update(x[:20], y[:20])
    assert capped.compute().item() == pytest.approx(reference.compute().item(), rel=1e-6)
    capped.reset()
    capped.update(x, x)
    assert capped.compute().item() == 0.0


def test_sliced_wasserstein_accepts_separate_updates_and_images():
    x = torch.randn(64, 1, 2, 2, generator=_gen(8))
    y = torch.randn(64, 1, 2, 2, generator=_gen(9))
    split = SlicedWasserstein()
    split.update(samples=x)
    split.update(real=y)
    flat = SlicedWasserstein()
    flat.update(x.reshape(64, 4), y.reshape(64, 4))
    assert split.compute().item() == flat.compute().item()


def test_sliced_wasserstein_merge_concatenates_like_ddp():
    x, y = torch.randn(100, 2, generator=_gen(10)), torch.randn(100, 2, generator=_gen(11))
    a, b, whole = SlicedWasserstein(), SlicedWasserstein(), SlicedWasserstein()
    a.update(x[:50], y[:50]), b.update(x[50:], y[50:]), whole.update(x, y)
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


@pytest.mark.filterwarnings("ignore:.*called before the ``update`` method")
def test_two_sample_errors():
    with pytest.raises(ValueError, match="at least 2"):
        SlicedWasserstein().compute()
    metric = MMD()
    metric.update(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="features"):
        metric.compute()
    with pytest.raises(ValueError, match=r"bandwidths must be a finite number > 0\.0, got 0\.0"):
        MMD(bandwidths=[1.0, 0.0])
    with pytest.raises(ValueError, match="bandwidths must be a non-empty list"):
        MMD(bandwidths=[])
    with pytest.raises(ValueError, match="max_samples must be an int >= 2, got 1"):
        MMD(max_samples=1)
    with pytest.raises(ValueError, match="num_projections must be an int >= 1, got True"):
        SlicedWasserstein(num_projections=True)


# ---------------------------------------------------------------- MMD


def _naive_unbiased_mmd2(x, y, bandwidths):
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths) / len(bandwidths)

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    off_x = kxx.sum() - kxx.diagonal().sum()
    off_y = kyy.sum() - kyy.diagonal().sum()
    return (off_x / (n * (n - 1)) + off_y / (m * (m - 1)) - 2 * k(x, y).mean()).item()


def test_mmd_identical_sets_equals_the_unbiased_value():
    # x = y: MMD^2_u = 2 S / (n (n-1)) - 2 (S + n) / n^2 = 2 S / (n^2 (n-1)) - 2 / n, with S the
    # off-diagonal kernel sum, 0 < S < n (n-1): slightly below 0, never below -2 / n.
    x = torch.randn(200, 2, generator=_gen(12))
    metric = MMD()
    metric.update(x, x)
    bw = [0.1, 0.5, 1.0, 2.0, 5.0]
    expected = _naive_unbiased_mmd2(x, x, bw)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert -2 / 200 < expected < 0


def test_mmd_matches_naive_formula_for_unequal_sets_across_blocks(monkeypatch):
    monkeypatch.setattr(MMD, "_BLOCK_ROWS", 37)  # several row blocks
    x = torch.randn(150, 3, generator=_gen(13))
    y = torch.randn(90, 3, generator=_gen(14)) + 0.3
    metric = MMD(bandwidths=[0.5, 2.0])
    metric.update(x, y)
    assert metric.compute().item() == pytest.approx(_naive_unbiased_mmd2(x, y, [0.5, 2.0]), rel=1e-4)


def test_mmd_separated_point_masses_is_two():
    # within-set kernel 1, cross kernel exp(-10000 / (2 h^2)) = 0: MMD^2 = 1 + 1 - 0
    metric = MMD()
    metric.update(torch.zeros(50, 2), torch.tensor([[100.0, 0.0]]).repeat(40, 1))
    assert metric.compute().item() == pytest.approx(2.0, abs=1e-6)


def test_mmd_same_law_small_different_law_large_and_reset():
    g = _gen(15)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    metric = MMD()
    metric.update(a, b)
    same = metric.compute().item()
    metric.reset()
    metric.update(a, b + 3.0)
    shifted = metric.compute().item()
    assert abs(same) < 0.01 and shifted > 0.3


@pytest.mark.parametrize("dtype, transposed", [(torch.float32, False), (torch.float64, False),
                                               (torch.float32, True)])
def test_sliced_wasserstein_column_sort_is_torch_sort_bit_for_bit(dtype, transposed):
    """The CPU fast path (NumPy's sort) gives torch.sort's values, NaN and infinities included,
    also on a non-contiguous input."""
    from lightning_curate.metrics.curation import _sort_columns

    p = torch.randn(300, 9, generator=torch.Generator().manual_seed(0)).to(dtype)
    p = p.T.contiguous().T if transposed else p
    assert p.is_contiguous() != transposed
    p[3, 2], p[10, 1], p[11, 1], p[5, 4] = float("nan"), float("inf"), -float("inf"), p[6, 4]  # a tie too
    expected = torch.sort(p, dim=0).values
    got = _sort_columns(p)
    assert got.shape == expected.shape and got.dtype == dtype
    assert torch.equal(got.isnan(), expected.isnan()) and torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))


def test_sliced_wasserstein_column_sort_keeps_autograd():
    from lightning_curate.metrics.curation import _sort_columns

    p = torch.randn(50, 3, requires_grad=True)
    got = _sort_columns(p)
    assert got.requires_grad and torch.equal(got, torch.sort(p, dim=0).values)
