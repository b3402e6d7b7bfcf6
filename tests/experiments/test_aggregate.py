"""A sweep's bookkeeping without running anything: run status from files on disk, sweep.csv, and the
mean over seeds with its Student-t band, against numbers worked out by hand."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from scipy import stats

from lightning_curate.experiments.aggregate import aggregate, as_float, metric_columns, summarise
from lightning_curate.experiments.grid import RunSpec
from lightning_curate.experiments.runner import run_status, table_path


def spec(tmp_path: Path, point: str = "real_fraction=0", seed: int = 0, rounds: int = 2,
         values: dict | None = None) -> RunSpec:
    run_dir = tmp_path / point / f"seed={seed}"
    return RunSpec(point=point, values=values if values is not None else {"data.init_args.real_fraction": 0},
                   seed=seed, run_dir=run_dir, config={}, rounds=rounds)


def write_rounds(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_run_status_reads_the_run_directory(tmp_path):
    run = spec(tmp_path, rounds=2)
    assert run_status(run) == "fresh"
    (run.run_dir / "rounds" / "round_000").mkdir(parents=True)
    assert run_status(run) == "stale"  # stored rounds, nothing to resume from
    (run.run_dir / "checkpoints").mkdir()
    (run.run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run_status(run) == "resumable"
    write_rounds(run.run_dir / "rounds.csv", [{"round": t, "reward_mean": t} for t in range(2)])
    assert run_status(run) == "resumable"  # 2 of the 3 rounds (0..2)
    write_rounds(run.run_dir / "rounds.csv", [{"round": t, "reward_mean": t} for t in range(3)])
    assert run_status(run) == "finished"


def test_table_path_finds_a_logger_nested_table_but_not_the_store(tmp_path):
    run = spec(tmp_path)
    write_rounds(run.run_dir / "rounds" / "round_000" / "rounds.csv", [{"round": 0}])  # inside the store
    assert table_path(run.run_dir) is None
    write_rounds(run.run_dir / "lightning_logs" / "version_0" / "rounds.csv", [{"round": 0}])
    assert table_path(run.run_dir) == run.run_dir / "lightning_logs" / "version_0" / "rounds.csv"
    write_rounds(run.run_dir / "rounds.csv", [{"round": 0}])
    assert table_path(run.run_dir) == run.run_dir / "rounds.csv"


def test_sweep_csv_has_point_keys_seed_then_metrics(tmp_path):
    a = spec(tmp_path, seed=0)
    b = spec(tmp_path, point="real_fraction=0.5", seed=0, values={"data.init_args.real_fraction": 0.5})
    missing = spec(tmp_path, point="real_fraction=1", seed=0, values={"data.init_args.real_fraction": 1})
    write_rounds(a.run_dir / "rounds.csv", [{"round": 0, "reward_mean": 1.0}, {"round": 1, "reward_mean": 2.0}])
    write_rounds(b.run_dir / "rounds.csv", [{"round": 0, "reward_mean": 1.5, "share_mode0": 0.5}])
    table, rows = aggregate([a, b, missing], tmp_path / "out")
    with open(table, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    assert header == ["point", "data.init_args.real_fraction", "seed", "round", "reward_mean", "share_mode0"]
    assert body == [["real_fraction=0", "0", "0", "0", "1.0", ""], ["real_fraction=0", "0", "0", "1", "2.0", ""],
                    ["real_fraction=0.5", "0.5", "0", "0", "1.5", "0.5"]]
    assert len(rows) == 3 and not list((tmp_path / "out").glob("*.tmp"))


def test_summarise_is_the_mean_and_student_t_half_width():
    rows = [{"point": "p", "seed": s, "round": t, "reward_mean": v}
            for s, values in enumerate([[1.0, 2.0], [3.0, 5.0], [2.0, "nan"]]) for t, v in enumerate(values)]
    rows.append({"point": "q", "seed": 0, "round": 0, "reward_mean": ""})  # an empty cell: no value
    rounds, means, halfs, n = summarise(rows, "reward_mean")["p"]
    assert rounds == [0.0, 1.0] and n == 3
    assert means == pytest.approx([2.0, 3.5])
    sd0, sd1 = 1.0, math.sqrt(4.5)  # seeds' values 1, 3, 2 and 2, 5 (the NaN is left out)
    assert halfs == pytest.approx([stats.t.ppf(0.975, 2) * sd0 / math.sqrt(3),
                                   stats.t.ppf(0.975, 1) * sd1 / math.sqrt(2)])
    assert summarise(rows, "reward_mean")["q"] == ([], [], [], 0)


def test_metric_columns_leave_out_bookkeeping_grid_keys_and_text():
    rows = [{"point": "p", "data.init_args.real_fraction": "0", "seed": "0", "round": "0", "epoch": "3",
             "reward_mean": "1.0", "share_mode0": "0.5", "share_mode1": "", "note": "warm"}]
    assert metric_columns(rows) == ["reward_mean", "share_mode0"]
    assert metric_columns(rows, ["share_*"]) == ["share_mode0"]
    assert metric_columns(rows, exclude=["reward_mean"]) == ["share_mode0"]
    assert as_float("2.5") == 2.5 and math.isnan(as_float("")) and math.isnan(as_float(None))
