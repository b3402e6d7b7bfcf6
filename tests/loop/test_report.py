"""rounds.csv, the end-of-run summary and the fidelity guard."""

import csv
import math

from lightning_curate.loop.report import fidelity_advice, summary, write_table


def _rows(fidelities):
    rows = [{"round": 0, "reward_mean": -1.0, "real_fraction": 0.0, "share_a": 0.5, "share_b": 0.5}]
    for t, f in enumerate(fidelities, start=1):
        rows.append({"round": t, "reward_mean": -1.0 + t, "curated_reward_mean": t, "real_fraction": 0.0,
                     "share_a": 0.5 + 0.1 * t, "share_b": 0.5 - 0.1 * t, "reward_fidelity": f})
    return rows


def test_guard_warns_below_threshold_and_names_the_knobs():
    assert fidelity_advice(_rows([1.0, 0.9]), 0.85) is None
    advice = fidelity_advice(_rows([0.5, 0.6]), 0.85)
    assert "0.55x" in advice and "epochs_per_round" in advice and "ema_decay" in advice and "p0_" in advice
    # No meaningful ratio at all: nothing to say (a collapsed run is not an unfaithful one).
    assert fidelity_advice(_rows([math.nan, math.nan]), 0.85) is None


def test_summary_shows_fidelity_and_only_existing_artifacts(tmp_path):
    text = summary(_rows([0.5, 0.6]), tmp_path)
    lines = text.splitlines()
    head = next(line for line in lines if line.lstrip().startswith("round"))
    assert "fidelity" in head
    row1 = next(line for line in lines if line.strip().startswith("1 "))
    assert "0.50" in row1
    assert "learner fidelity (mean over rounds whose predicted move is above noise): 0.55" in text
    assert "round_metrics.png" not in text and "config.yaml" not in text
    (tmp_path / "config.yaml").write_text("x")
    assert "config.yaml" in summary(_rows([0.5]), tmp_path)


def test_table_puts_fixed_columns_first(tmp_path):
    path = tmp_path / "rounds.csv"
    write_table(_rows([0.9]), path)
    header = next(csv.reader(open(path)))
    assert header[:4] == ["round", "real_fraction", "reward_mean", "curated_reward_mean"]
    assert header.index("reward_fidelity") < header.index("share_a")
    assert not (tmp_path / "rounds.csv.tmp").exists()
