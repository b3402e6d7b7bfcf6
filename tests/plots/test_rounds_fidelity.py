"""round_metrics.png: the observed-vs-predicted shares and the fidelity panels."""

import math

from lightning_curate.plots import build_round_metrics_figure


def _rows():
    rows = []
    for t in range(4):
        rows.append({"round": t, "reward_mean": -2.0 + t, "reward_std": 1.0, "share_a": 0.2 + 0.1 * t,
                     "share_b": 0.8 - 0.1 * t, "predicted_reward_mean": -1.0 + t,
                     "predicted_share_a": 0.35 + 0.1 * t, "predicted_share_b": 0.65 - 0.1 * t})
        if t:
            rows[-1].update(reward_fidelity=0.9 + 0.05 * t, reward_fidelity_stderr=0.02, gain_share_fidelity=0.8,
                            class_fidelity_a=0.8)
    return rows


def test_fidelity_and_prediction_panels_are_drawn():
    fig = build_round_metrics_figure(_rows())
    labels = [ax.get_label() for ax in fig.axes]
    assert labels == ["reward", "shares", "predicted shares", "fidelity"]
    fidelity = fig.axes[3]
    bars = [c for c in fidelity.containers if c.get_label() == "reward fidelity"]
    ydata = bars[0].lines[0].get_ydata()
    assert [round(v, 9) for v in ydata[1:]] == [0.95, 1.0, 1.05]
    assert math.isnan(ydata[0])  # round 0 has no previous round
    assert sorted(t.get_text() for t in fidelity.get_legend().get_texts()) == [
        "0.85-1.15", "gain share fidelity", "reward fidelity"]
    predicted = fig.axes[2]
    ideal = [line for line in predicted.get_lines() if line.get_label() == "a ideal learner"][0]
    # Row t predicts round t + 1: drawn one round to the right, in percent.
    assert list(ideal.get_xdata()) == [1.0, 2.0, 3.0, 4.0]
    assert [round(v, 6) for v in ideal.get_ydata()] == [35.0, 45.0, 55.0, 65.0]
    # The fidelity columns are not mistaken for class shares.
    shares = fig.axes[1]
    assert sorted(t.get_text() for t in shares.get_legend().get_texts()) == ["a", "b"]


def test_no_fidelity_columns_no_extra_panels():
    rows = [{k: v for k, v in r.items() if "fidelity" not in k and not k.startswith("predicted_share")}
            for r in _rows()]
    assert [ax.get_label() for ax in build_round_metrics_figure(rows).axes] == ["reward", "shares"]


def test_learner_gap_panel_shows_the_curated_rounds_with_their_errors():
    rows = _rows()
    for t, row in enumerate(rows):
        row.update(learner_gap=-0.5 if t == 0 else -0.001 * t, learner_gap_stderr=0.0005)
    fig = build_round_metrics_figure(rows)
    assert [ax.get_label() for ax in fig.axes] == ["reward", "shares", "predicted shares", "fidelity", "learner gap"]
    bars = fig.axes[4].containers[0]
    # Round 0's gap (p_0 against the real data) stays in rounds.csv, off this panel's scale.
    assert list(bars.lines[0].get_xdata()) == [1.0, 2.0, 3.0]
    assert [round(v, 9) for v in bars.lines[0].get_ydata()] == [-0.001, -0.002, -0.003]
    assert fig.axes[4].get_legend() is not None


def test_six_panels_are_a_grid_that_fits_a_laptop_screen(tmp_path):
    from lightning_curate.plots import plot_round_metrics
    from lightning_curate.plots.common import DPI

    rows = _rows()
    for t, row in enumerate(rows):
        row.update(sw_distance=0.1 * t, learner_gap=-0.001 * t, learner_gap_stderr=0.0005)
    fig = build_round_metrics_figure(rows)
    assert len(fig.axes) == 6
    # Reading order on 2 rows x 3 columns: the top row holds the first three panels.
    spec = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in fig.axes]
    assert spec == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    width, height = fig.get_size_inches() * DPI
    assert 1400 <= width <= 1700 and height < width
    # Every panel says what to look for, not only what it shows.
    assert all(":" in ax.get_title() for ax in fig.axes)
    assert plot_round_metrics(rows, tmp_path / "m.png").stat().st_size > 0


def test_fewer_panels_leave_no_empty_cells():
    rows = [{k: v for k, v in r.items() if "fidelity" not in k and not k.startswith("predicted_share")}
            for r in _rows()]
    fig = build_round_metrics_figure(rows)
    assert len(fig.axes) == 2  # reward and shares on one row; no blank third cell
