"""Tests of lightning_curate.plots: valid PNGs, one panel per round, robust inputs."""

from __future__ import annotations

import csv
import math
import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lightning_curate.plots import (  # noqa: E402
    build_image_grid_figure,
    build_round_metrics_figure,
    build_rounds_2d_figure,
    build_sweep_figure,
    common,
    plot_image_grid,
    plot_round_metrics,
    plot_rounds_2d,
    plot_sweep_metric,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- #
# helpers and fixtures
# --------------------------------------------------------------------------- #


@pytest.fixture(autouse=True)
def _no_open_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open in pyplot"


def check_png(path, *, width=None, height=None):
    """A real PNG with more than one colour; ``width``/``height`` in pixels, if given."""
    assert path.is_file()
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    if width is not None:
        assert abs(w - width) <= 2, (w, width)
    if height is not None:
        assert abs(h - height) <= 2, (h, height)
    assert len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 1
    return img


def expected_pixels(fig):
    w, h = fig.get_size_inches() * common.DPI
    return round(w), round(h)


def no_tmp_files(directory):
    return [p.name for p in directory.iterdir() if ".tmp" in p.name] == []


def panel_axes(fig):
    return [ax for ax in fig.axes if ax.get_label().startswith("round_")]


CENTRES = 4.0 * torch.stack(
    [torch.cos(torch.arange(8) * math.pi / 4), torch.sin(torch.arange(8) * math.pi / 4)], dim=1
)


def reward_two_modes(x):
    d = torch.cdist(x, CENTRES[[0, 2]]).min(dim=1).values
    return -(d - 0.5).clamp(min=0)


def ring_rounds(n_rounds, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    samples, labels = [], []
    for t in range(n_rounds):
        w = torch.ones(8)
        w[[0, 2]] += 2.0 * t
        lab = torch.multinomial(w / w.sum(), n, replacement=True, generator=g)
        samples.append(CENTRES[lab] + 0.3 * torch.randn(n, 2, generator=g))
        labels.append(lab)
    return samples, labels


def metric_rows(n_rounds, n_shares=3, with_distance=True):
    rows = []
    for t in range(n_rounds):
        shares = np.full(n_shares, 1.0 / n_shares)
        shares[0] += 0.1 * t / max(n_rounds, 1)
        shares[1:] -= 0.1 * t / max(n_rounds, 1) / max(n_shares - 1, 1)
        row = {
            "round": t,
            "reward_mean": -2.0 + 0.3 * t,
            "reward_std": 0.5,
            "curated_reward_mean": math.nan if t == 0 else -1.8 + 0.3 * t,
            "real_fraction": 0.2,
            "n_real": 100,
            "n_synthetic": 400,
        }
        if with_distance:
            row["sw_distance"] = 0.1 * t
        row.update({f"share_{k}": float(s) for k, s in enumerate(shares)})
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- #
# plot_rounds_2d
# --------------------------------------------------------------------------- #


def test_rounds_2d_writes_png_with_one_panel_per_round(tmp_path):
    samples, labels = ring_rounds(3)
    real = ring_rounds(1, seed=1)[0][0]
    kwargs = dict(reward_fn=reward_two_modes, labels=labels, real=real, grid_size=60)
    fig = build_rounds_2d_figure(samples, **kwargs)
    assert len(panel_axes(fig)) == 3
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    assert [ax.get_title() for ax in panel_axes(fig)] == ["round 0", "round 1", "round 2"]
    width, height = expected_pixels(fig)

    out = plot_rounds_2d(samples, tmp_path / "rounds.png", **kwargs)
    assert out == tmp_path / "rounds.png"
    check_png(out, width=width, height=height)
    assert no_tmp_files(tmp_path)


def test_rounds_2d_grid_shares_limits_and_aspect():
    samples, _ = ring_rounds(8, n=50)
    fig = build_rounds_2d_figure(samples, titles=[f"t={t}" for t in range(8)])
    axes = panel_axes(fig)
    assert len(axes) == 8  # 2 rows of up to 6 columns; the unused cells are removed
    assert len(fig.axes) == 8
    assert len({ax.get_xlim() for ax in axes}) == 1
    assert len({ax.get_ylim() for ax in axes}) == 1
    assert all(ax.get_aspect() == 1.0 for ax in axes)
    # The default window holds all the data.
    (x0, x1), (y0, y1) = axes[0].get_xlim(), axes[0].get_ylim()
    pts = torch.cat(samples)
    assert x0 < pts[:, 0].min() and pts[:, 0].max() < x1 and y0 < pts[:, 1].min() and pts[:, 1].max() < y1
    fig.canvas.draw()  # renders without error (saving is covered by the other tests)


def test_rounds_2d_explicit_bounds_and_numpy_input():
    samples = [np.random.default_rng(0).normal(size=(30, 2)) for _ in range(2)]
    fig = build_rounds_2d_figure(samples, bounds=(-3, 3, -2, 2))
    for ax in panel_axes(fig):
        assert ax.get_xlim() == (-3, 3) and ax.get_ylim() == (-2, 2)


def test_rounds_2d_reward_is_evaluated_without_grad_on_float32_grid():
    calls = []

    class Reward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, x):
            calls.append((x.dtype, tuple(x.shape), torch.is_grad_enabled()))
            return -self.scale * x.square().sum(dim=1)

    build_rounds_2d_figure([torch.randn(20, 2)], reward_fn=Reward(), grid_size=30)
    assert calls == [(torch.float32, (900, 2), False)]


def test_rounds_2d_subsamples_deterministically():
    samples, labels = ring_rounds(2, n=500)

    def offsets(fig):
        return [c.get_offsets().copy() for ax in panel_axes(fig) for c in ax.collections]

    a = offsets(build_rounds_2d_figure(samples, labels=labels, max_points=100))
    b = offsets(build_rounds_2d_figure(samples, labels=labels, max_points=100))
    assert [len(o) for o in a] == [100, 100]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_rounds_2d_flat_reward_and_off_mode_labels_do_not_crash(tmp_path):
    samples, labels = ring_rounds(2, n=60)
    labels[1][:10] = -1  # samples outside every mode
    out = plot_rounds_2d(
        samples, tmp_path / "flat.png", labels=labels, reward_fn=lambda x: torch.zeros(len(x)), grid_size=20
    )
    check_png(out)


def test_rounds_2d_single_round(tmp_path):
    fig = build_rounds_2d_figure([torch.randn(10, 2)], reward_fn=reward_two_modes, grid_size=20)
    assert len(panel_axes(fig)) == 1
    check_png(plot_rounds_2d([torch.randn(10, 2)], tmp_path / "one.png"))


@pytest.mark.parametrize(
    "samples, kwargs, match",
    [
        ([], {}, r"^samples: .*empty"),
        (torch.randn(5, 2), {}, r"^samples: "),
        ([torch.randn(5, 3)], {}, r"^samples\[0\]: .*\[n, 2\]"),
        ([torch.randn(5, 2), torch.randn(5)], {}, r"^samples\[1\]: "),
        ([torch.randn(5, 2)], {"titles": ["a", "b"]}, r"^titles: "),
        ([torch.randn(5, 2)], {"labels": [torch.zeros(4, dtype=torch.long)]}, r"^labels\[0\]: "),
        ([torch.randn(5, 2)], {"labels": []}, r"^labels: "),
        ([torch.randn(5, 2)], {"real": torch.randn(5, 3)}, r"^real: "),
        ([torch.randn(5, 2)], {"bounds": (1, 0, 0, 1)}, r"^bounds: "),
        ([torch.randn(5, 2)], {"reward_fn": lambda x: x}, r"^reward_fn: "),
        ([torch.randn(5, 2)], {"max_points": 0}, r"^max_points must be an int >= 1, got 0$"),
        ([torch.randn(5, 2)], {"grid_size": 1}, r"^grid_size must be an int >= 2, got 1$"),
        ([torch.randn(5, 2)], {"real_panels": "last"}, r"^real_panels must be one of \('first', 'all'\), got 'last'$"),
    ],
)
def test_rounds_2d_bad_input_names_the_argument(tmp_path, samples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_rounds_2d(samples, tmp_path / "bad.png", **kwargs)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- #
# plot_round_metrics
# --------------------------------------------------------------------------- #


def test_round_metrics_panels_and_nan_round_zero(tmp_path):
    rows = metric_rows(5)
    fig = build_round_metrics_figure(rows)
    assert [ax.get_label() for ax in fig.axes] == ["reward", "distance", "shares"]
    reward_ax = fig.axes[0]
    curated = [ln for ln in reward_ax.lines if ln.get_label().startswith("curated")][0]
    assert np.isnan(curated.get_ydata()[0]) and np.isfinite(curated.get_ydata()[1:]).all()
    assert list(reward_ax.get_xticks()) == [0, 1, 2, 3, 4]
    assert fig.axes[2].get_ylim() == (0.0, 100.0)  # shares in percent
    width, height = expected_pixels(fig)
    out = plot_round_metrics(rows, tmp_path / "metrics.png")
    check_png(out, width=width, height=height)
    assert no_tmp_files(tmp_path)


def test_round_metrics_single_panel_without_shares_or_distances(tmp_path):
    rows = [{k: v for k, v in r.items() if not k.startswith("share_")} for r in metric_rows(3, with_distance=False)]
    fig = build_round_metrics_figure(rows)
    assert [ax.get_label() for ax in fig.axes] == ["reward"]
    check_png(plot_round_metrics(rows, tmp_path / "m.png"))


def test_round_metrics_single_round(tmp_path):
    rows = metric_rows(1)
    fig = build_round_metrics_figure(rows)
    assert len(fig.axes) == 3
    assert list(fig.axes[0].get_xticks()) == [0]
    check_png(plot_round_metrics(rows, tmp_path / "one.png"))


def test_round_metrics_reads_csv_strings_and_blank_cells(tmp_path):
    rows = metric_rows(4)
    with open(tmp_path / "rounds.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    with open(tmp_path / "rounds.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert read[0]["curated_reward_mean"] == ""
    check_png(plot_round_metrics(read, tmp_path / "from_csv.png"))


def test_round_metrics_all_nan_columns_and_unsorted_rounds(tmp_path):
    rows = metric_rows(3)[::-1]
    for r in rows:
        r["curated_reward_mean"] = math.nan
        r["reward_std"] = None
    fig = build_round_metrics_figure(rows)
    mean = [ln for ln in fig.axes[0].lines if ln.get_label().startswith("model")][0]
    assert list(mean.get_xdata()) == [0, 1, 2]
    check_png(plot_round_metrics(rows, tmp_path / "nan.png"))


def test_round_metrics_many_shares_are_lines():
    fig = build_round_metrics_figure(metric_rows(4, n_shares=15))
    assert len(fig.axes[-1].lines) == 15
    fig.canvas.draw()


@pytest.mark.parametrize("rows, match",
                         [([], r"^rows: .*empty"), ({"round": 0}, r"^rows: "), ([1, 2], r"^rows\[0\]: ")])
def test_round_metrics_bad_input(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        plot_round_metrics(rows, tmp_path / "bad.png")


# --------------------------------------------------------------------------- #
# plot_image_grid
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_writes_one_grid_per_round(tmp_path, channels):
    g = torch.Generator().manual_seed(0)
    rounds = [torch.rand(70, channels, 12, 12, generator=g) * 2 - 1 for _ in range(3)]
    fig = build_image_grid_figure(rounds, nrow=4, titles=["a", "b", "c"])
    axes = panel_axes(fig)
    assert len(axes) == 3 and [ax.get_title() for ax in axes] == ["a", "b", "c"]
    img = axes[0].images[0].get_array()
    pad = 1
    assert img.shape[:2] == (4 * (12 + pad) + pad, 4 * (12 + pad) + pad)  # first nrow*nrow images only
    width, height = expected_pixels(fig)
    out = plot_image_grid(rounds, tmp_path / "grid.png", nrow=4)
    check_png(out, width=width, height=height)
    assert no_tmp_files(tmp_path)


def test_image_grid_few_images_mixed_channels_and_3d_input(tmp_path):
    rounds = [torch.zeros(3, 1, 8, 8), torch.ones(5, 3, 8, 8), torch.full((2, 8, 8), -1.0)]
    fig = build_image_grid_figure(rounds, nrow=8)
    assert len(panel_axes(fig)) == 3
    check_png(plot_image_grid(rounds, tmp_path / "few.png"))


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        ([], {}, r"^images_per_round: .*empty"),
        ([torch.zeros(4, 2, 8, 8)], {}, r"^images_per_round\[0\]: .*C = 1 or 3"),
        ([torch.zeros(4, 1, 8, 8), torch.zeros(8, 8)], {}, r"^images_per_round\[1\]: "),
        ([torch.zeros(0, 1, 8, 8)], {}, r"^images_per_round\[0\]: "),
        ([torch.zeros(4, 1, 8, 8)], {"nrow": 0}, r"^nrow must be an int >= 1, got 0$"),
        ([torch.zeros(4, 1, 8, 8)], {"titles": []}, r"^titles: "),
    ],
)
def test_image_grid_bad_input(tmp_path, images, kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_image_grid(images, tmp_path / "bad.png", **kwargs)


# --------------------------------------------------------------------------- #
# atomic writes
# --------------------------------------------------------------------------- #


SMALL_ROWS = [{"round": t, "reward_mean": float(t), "reward_std": 0.1} for t in range(3)]  # one panel


def test_save_creates_parents_and_overwrites(tmp_path):
    target = tmp_path / "a" / "b" / "metrics.png"
    plot_round_metrics(SMALL_ROWS[:1], target)
    first = target.read_bytes()
    plot_round_metrics(SMALL_ROWS, target)
    assert target.read_bytes() != first
    check_png(target)
    assert no_tmp_files(target.parent)


def test_failed_write_keeps_old_file_and_leaves_no_tmp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.png"
    plot_round_metrics(SMALL_ROWS[:1], target)
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(common.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        plot_round_metrics(SMALL_ROWS, target)
    monkeypatch.setattr(common.os, "replace", os.replace)
    assert target.read_bytes() == before
    assert no_tmp_files(tmp_path)


# --------------------------------------------------------------------------- #
# sweep figures
# --------------------------------------------------------------------------- #


def test_sweep_figure_lines_bands_and_order(tmp_path):
    summary = {
        "rho=0.5": ([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [0.1, 0.2, 0.3], 3),
        "rho=0": ([0.0, 1.0, 2.0], [1.0, 1.5, 1.7], [0.0, 0.0, 0.0], 1),
    }
    fig = build_sweep_figure("reward_mean", summary, point_order=["rho=0.5"])
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["rho=0.5", "rho=0"]  # point_order first
    assert list(ax.lines[0].get_ydata()) == [1.0, 2.0, 3.0]
    assert len(ax.collections) == 1  # a band for the point with three seeds only
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(0.9) and band[:, 1].max() == pytest.approx(3.3)
    assert ax.get_title() == "reward_mean (mean over 3 seeds, 95% band)" and ax.get_legend() is not None
    path = plot_sweep_metric("share_mode0/x", summary, tmp_path)
    assert path == tmp_path / "share_mode0_x.png"
    check_png(path)
    alone = build_sweep_figure("w2", {"base": ([0.0, 1.0], [0.5, 0.4], [0.0, 0.0], 1)})
    assert alone.axes[0].get_legend() is None and alone.axes[0].get_title() == "w2 (one seed)"
