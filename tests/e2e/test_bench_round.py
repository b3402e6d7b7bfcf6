"""Smoke tests of scripts/bench_round.py: one round of a tiny config, one JSON line out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_configs import load_script, tiny_config, write_config

from lightning_curate.experiments.records import read_record

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_round.py"

PHASE_KEYS = ("generate", "reward", "curate", "store", "train")
KEYS = PHASE_KEYS + (
    "total_round_seconds", "curate_fraction", "curate_fraction_of_curation", "generate_samples_per_s",
    "num_slots", "num_candidates", "peak_rss_bytes", "rss_before_round_bytes", "winners_bytes",
    "winners_x_bytes", "store_bytes", "threads", "chunks",
)


@pytest.fixture
def tiny_cfg(tmp_path) -> Path:
    return write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run", chunk_size=1024))


def test_bench_round_prints_one_json_line_with_every_phase(tmp_path, tiny_cfg):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["--config", str(tiny_cfg), "--num-slots", "2000", "--train-batches", "2", "--threads", "1",
            "--record", str(tmp_path / "rec"), "--record-name", "bench_round_tiny"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout  # Lightning's chatter goes to stderr
    result = json.loads(lines[0])
    missing = [k for k in KEYS if k not in result]
    assert not missing, missing
    assert result["num_slots"] == 2000 and result["num_candidates"] == 4
    assert result["train_batches"] == 2 and result["train"] > 0
    assert all(result[k] >= 0 for k in PHASE_KEYS) and result["generate"] > 0
    assert result["total_round_seconds"] >= sum(result[k] for k in PHASE_KEYS) * 0.99
    assert 0 <= result["curate_fraction"] <= result["curate_fraction_of_curation"] <= 1
    assert result["generate_samples_per_s"] == pytest.approx(2000 * 4 / result["generate"])
    assert result["chunks"] == 2  # 2000 slots in chunks of 1024
    # One winner per slot: x float32 [2000, 2], slot int64, rewards float32, labels int64.
    assert result["winners_x_bytes"] == 2000 * 2 * 4
    assert result["winners_bytes"] == 2000 * (2 * 4 + 8 + 4 + 8)
    assert result["store_bytes"] > result["winners_bytes"]
    assert result["peak_rss_bytes"] > 0
    if sys.platform.startswith("linux"):
        assert result["peak_rss_reset"] and result["peak_rss_bytes"] >= result["rss_before_round_bytes"]
    assert not list(tmp_path.glob("runs")), "the bench writes into a temporary folder only"
    # --record: the same figures as the JSON line, with the command and the device it ran on.
    record = read_record(tmp_path / "rec" / "bench_round_tiny.json")
    assert record["figures"] == result and record["machine"]["device"] == "cpu"
    assert record["command"] == "python scripts/bench_round.py " + " ".join(args)


def _load_script():
    return load_script(SCRIPT)


def test_bench_round_profile_and_compile_compare(tmp_path, tiny_cfg, monkeypatch, capsys):
    """In process: --profile writes a Chrome trace with the phase regions; --compile-compare times both.

    ``torch.compile`` uses the eager backend here (inductor takes 30 s+ to compile on 2 busy cores).
    """
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend="eager"))
    bench = _load_script()
    profile_dir = tmp_path / "profile"
    result = bench.main(["--config", str(tiny_cfg), "--num-slots", "600", "--train-batches", "1",
                         "--profile", "--profile-dir", str(profile_dir), "--compile-compare",
                         "--compare-blocks", "1", "--compare-repeats", "1"])
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["num_slots"] == 600
    assert result["profiled"] is True
    trace = Path(result["profile_trace"])
    assert trace.parent == profile_dir and trace.is_file()
    names = {event.get("name") for event in json.loads(trace.read_text())["traceEvents"]}
    assert {f"curate_round/{phase}" for phase in ("generate", "reward", "curate", "store")} <= names
    assert set(result["profile_regions_seconds"]) >= {"curate_round/generate", "curate_round/curate"}
    assert str(trace) in out.err
    compare = result["compile_compare"]
    assert compare["eager_samples_per_s"] > 0 and compare["compiled_samples_per_s"] > 0
    assert compare["compiled_over_eager"] == pytest.approx(
        compare["compiled_samples_per_s"] / compare["eager_samples_per_s"])
    assert compare["max_abs_diff"] < 1e-4
    assert result["compile"] is False  # the config's own switch is restored
