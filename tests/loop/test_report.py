"""rounds.csv, the end-of-run summary and the fidelity guard."""

import csv
import math

import pytest

from lightning_curate.loop.report import PlotBudget, fidelity_advice, summary, write_table
from lightning_curate.models import FlowMatching, MLPVelocity

FLOW = FlowMatching(MLPVelocity(dim=2, hidden=8, depth=1), data_shape=[2])


def _rows(fidelities):
    rows = [{"round": 0, "reward_mean": -1.0, "real_fraction": 0.0, "share_a": 0.5, "share_b": 0.5}]
    for t, f in enumerate(fidelities, start=1):
        rows.append({"round": t, "reward_mean": -1.0 + t, "curated_reward_mean": t, "real_fraction": 0.0,
                     "share_a": 0.5 + 0.1 * t, "share_b": 0.5 - 0.1 * t, "reward_fidelity": f})
    return rows


def test_guard_warns_below_threshold_and_names_the_knobs():
    assert fidelity_advice(_rows([1.0, 0.9]), 0.85) is None
    advice = fidelity_advice(_rows([0.5, 0.6]), 0.85, FLOW)
    assert "0.55x" in advice and "epochs_per_round" in advice and "ema_decay" in advice and "p0_" in advice
    assert "lightning-curate diagnose solver RUN_DIR" in advice and "solver and steps" in advice
    # No stderr column: nothing says how far out a ratio measurably is, so no round is named.
    assert "Measurably outside" not in advice
    rows = _rows([0.5, 0.6, 0.9])
    rows[1]["reward_fidelity_stderr"] = 0.1  # 0.35 under the band: 3.5 standard errors
    rows[2]["reward_fidelity_stderr"] = 0.2  # 0.25 under: 1.25, near
    rows[3]["reward_fidelity_stderr"] = 0.01  # inside
    assert "Measurably outside the band 0.85-1.15 (by more than 2 standard errors): round 1 (0.50 +- 0.10)." in (
        fidelity_advice(rows, 0.85))
    # No meaningful ratio at all: nothing to say (a collapsed run is not an unfaithful one).
    assert fidelity_advice(_rows([math.nan, math.nan]), 0.85) is None


def test_guard_names_a_steady_learner_gap_only_when_it_stands_above_its_noise():
    rows = _rows([0.5, 0.6])
    for row, gap in zip(rows[1:], (-0.004, -0.006)):
        row.update(learner_gap=gap, learner_gap_stderr=0.001)
    advice = fidelity_advice(rows, 0.85, FLOW)
    # Inverse-variance mean -0.005 +- 0.001 (the two rounds disagree by 1.4 errors): well below zero.
    assert "ended on average 0.005 (+-0.001) reward units below the very set it was trained on" in advice
    assert "a larger batch or more optimizer steps per round narrowed it" in advice
    assert "`lightning-curate diagnose budget RUN_DIR` measures that for this run" in advice
    for row in rows[1:]:
        row["learner_gap_stderr"] = 0.01  # the same gaps, within noise: not blamed
    assert "learner_gap" not in fidelity_advice(rows, 0.85)


def test_summary_shows_fidelity_and_only_existing_artifacts(tmp_path):
    text = summary(_rows([0.5, 0.6]), tmp_path)
    lines = text.splitlines()
    head = next(line for line in lines if line.lstrip().startswith("round"))
    assert "fidelity" in head
    row1 = next(line for line in lines if line.strip().startswith("1 "))
    assert "0.50" in row1 and "+-" not in row1  # no stderr column: the ratio alone
    assert ("against the faithful band 0.85-1.15: 0 inside, 0 outside by at most 2 standard errors, 0 further out, "
            "2 outside with no known error") in text
    with_errors = _rows([0.5, 0.9])
    with_errors[1]["reward_fidelity_stderr"] = 0.2
    with_errors[2]["reward_fidelity_stderr"] = 0.01
    err_text = summary(with_errors, tmp_path)
    assert " 0.50+-0.20 " in next(line for line in err_text.splitlines() if line.strip().startswith("1 "))
    assert "band 0.85-1.15: 1 inside, 1 outside by at most 2 standard errors, 0 further out" in err_text
    assert "learner fidelity (mean over rounds whose predicted move is above noise): 0.55" in text
    assert "(1 = the ideal learner; noise: sampling)" in text
    assert "noise: sampling + learner jitter 1.5x)" in summary(_rows([0.5, 0.6]), tmp_path, learner_noise=1.5)
    assert "round_metrics.png" not in text and "config.yaml" not in text
    assert "gap" in head and "learner gap" not in text  # no gap columns: a "-" cell and no mean line
    rows = _rows([0.5, 0.6])
    rows[1].update(learner_gap=-0.004, learner_gap_stderr=0.001)
    rows[2].update(learner_gap=-0.006, learner_gap_stderr=0.001)
    gap_text = summary(rows, tmp_path)
    assert "-0.0040" in next(line for line in gap_text.splitlines() if line.strip().startswith("1 "))
    assert "over curated rounds): -0.0050 +- 0.0010 (0 = reproduces its data)" in gap_text
    for row in rows[1:]:
        del row["learner_gap_stderr"]  # no errors: the mean alone
    assert "over curated rounds): -0.0050 (0 = reproduces its data)" in summary(rows, tmp_path)
    (tmp_path / "config.yaml").write_text("x")
    assert "config.yaml" in summary(_rows([0.5]), tmp_path)


def test_table_puts_fixed_columns_first(tmp_path):
    path = tmp_path / "rounds.csv"
    write_table(_rows([0.9]), path)
    header = next(csv.reader(open(path)))
    assert header[:4] == ["round", "real_fraction", "reward_mean", "curated_reward_mean"]
    assert header.index("reward_fidelity") < header.index("share_a")
    assert not (tmp_path / "rounds.csv.tmp").exists()


def test_plot_budget_draws_while_within_its_share_and_always_last():
    """A fake clock, a 10% share: the first drawing (expected 2 s) waits until 20 s have passed; once
    one has cost 1 s, the next (expected 1 s) waits until the 2 s of drawing are 10% of the run."""
    now = [0.0]
    budget = PlotBudget(share=0.1, clock=lambda: now[0], first_cost=2.0)
    assert not budget.due(last=False)
    assert budget.due(last=True)
    now[0] = 19.9
    assert not budget.due(last=False)
    now[0] = 20.0
    assert budget.due(last=False)

    def draw():
        now[0] += 1.0

    budget.draw(draw)
    assert budget.spent == 1.0 and budget.expected == 1.0
    now[0] = 19.9
    assert not budget.due(last=False)
    assert budget.due(last=True)
    now[0] = 20.0
    assert budget.due(last=False)


def test_a_short_run_is_drawn_once_at_its_end_and_a_long_one_mid_run():
    """With the defaults (5%, 2 s expected) and drawings of 1 s: rounds of 3 s draw only the last;
    rounds of 10 s from round 3 on, about every other round; rounds of 60 s every round."""
    from lightning_curate.loop.report import FIRST_DRAW_SECONDS, PLOT_TIME_SHARE

    assert (PLOT_TIME_SHARE, FIRST_DRAW_SECONDS) == (0.05, 2.0)
    for round_seconds, expected in ((3.0, [10]), (10.0, [3, 4, 5, 7, 9, 10]), (60.0, list(range(11)))):
        now = [0.0]
        budget = PlotBudget(clock=lambda: now[0])
        drawn = []
        for t in range(11):
            now[0] += round_seconds
            if budget.due(last=t == 10):
                budget.draw(lambda: now.__setitem__(0, now[0] + 1.0))
                drawn.append(t)
        assert drawn == expected, round_seconds


def test_plot_budget_charges_a_failed_drawing():
    now = [0.0]
    budget = PlotBudget(share=0.5, clock=lambda: now[0])

    def broken():
        now[0] += 2.0
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        budget.draw(broken)
    assert budget.spent == 2.0
