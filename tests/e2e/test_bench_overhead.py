"""Smoke test of scripts/bench_overhead.py: the bare loop and the package at a tiny size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from run_configs import load_script

from lightning_curate.experiments.records import read_record

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "bench_overhead.py"


def _load():
    return load_script(SCRIPT)


def test_bench_overhead_tiny_prints_both_programs_phases_and_ratios(tmp_path):
    args = ["--sizes", "tiny", "--json", "--repeats", "2", "--record", "rec"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    results = json.loads(lines[-1])
    # --record FOLDER (relative to the working directory): the size's figures, exactly as --json prints them.
    record = read_record(tmp_path / "rec" / "bench_overhead_tiny.json")
    assert record["figures"] == results[0] and record["machine"]["device"] == "cpu"
    assert record["command"] == "python scripts/bench_overhead.py " + " ".join(args)
    assert [r["size"] for r in results] == ["tiny"]
    result = results[0]
    bench = _load()
    work = bench.SIZES["tiny"]
    assert result["work"] == {**work, "threads": 1}
    # 2 initial epochs of 512 / 128 batches, then 2 rounds of 1 epoch of 256 / 128 batches.
    assert result["optimizer_steps"] == 2 * 4 + 2 * 1 * 2
    for program in ("bare", "package"):
        run = result[program]
        assert set(run["phases"]) >= {"train", "generate", "reward", "curate", "store", "other"}
        assert set(run["cpu_phases"]) == set(run["phases"])
        assert run["seconds"] > 0 and run["cpu_seconds"] > 0 and run["wall"] >= run["seconds"]
        assert sum(run["phases"].values()) == pytest.approx(run["seconds"])
        assert run["phases"]["train"] > 0 and run["phases"]["generate"] > 0
    assert set(result["package"]["phases"]) == set(bench.PHASES)
    assert result["ratio"] == pytest.approx(result["package"]["seconds"] / result["bare"]["seconds"])
    assert result["ratio_cpu"] == pytest.approx(result["package"]["cpu_seconds"] / result["bare"]["cpu_seconds"])
    # Two alternating runs of each; the fastest of each is the one compared.
    each = result["cpu_seconds_of_each_run"]
    assert result["repeats"] == 2 and len(each["bare"]) == len(each["package"]) == 2
    for program in ("bare", "package"):
        assert result[program]["cpu_seconds"] == min(each[program])
    # The bare loop's per-round rows: round 0 plus 2 curated rounds, shares of a real mixture.
    rows = result["bare"]["rows"]
    assert [r["round"] for r in rows] == [0, 1, 2] and all(0 <= r["share_mode0"] <= 1 for r in rows)
    # The table: one line per phase and the ratio line.
    text = proc.stdout
    assert "size tiny: 256 slots x K=4, 4 euler steps, batch 128, 12 optimizer steps" in text
    for phase in bench.PHASES + ("total",):
        assert re.search(rf"^ *{phase} +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ ", text, re.M), phase
    assert f"package / bare = {result['ratio']:.2f}x wall, {result['ratio_cpu']:.2f}x CPU" in text
    assert "fastest of 2 alternating runs each (CPU s: bare " in text
    assert [p.name for p in tmp_path.iterdir()] == ["rec"], "the bench writes into a temporary folder and its record"


def test_package_config_is_the_main_job_at_the_benchmark_sizes(tmp_path):
    bench = _load()
    work = {**bench.SIZES["large"], "threads": 1}
    cfg = bench.package_config(work, tmp_path / "run", threads=1)
    loop = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("RetrainingLoop"))["init_args"]
    assert loop == {"rounds": 10, "epochs_per_round": 20, "initial_epochs": 37, "seed": 0, "plots": False,
                    "learner_noise": 0.6}  # the shipped noise rule: it changes no work
    assert cfg["trainer"]["callbacks"][0]["class_path"] == "bench_timer.EpochTimer"
    # The whole-process mode runs the config as shipped: its figures (the loop's default) and no timer.
    whole = bench.package_config(work, tmp_path / "run", threads=1, whole=True)
    whole_loop = next(c for c in whole["trainer"]["callbacks"]
                      if c["class_path"].endswith("RetrainingLoop"))["init_args"]
    assert whole_loop == {k: v for k, v in loop.items() if k != "plots"}
    assert [c["class_path"] for c in whole["trainer"]["callbacks"]] == \
        [c["class_path"] for c in cfg["trainer"]["callbacks"][1:]]
    assert {k: v for k, v in whole.items() if k != "trainer"} == {k: v for k, v in cfg.items() if k != "trainer"}
    model = cfg["model"]["init_args"]
    generator = model["generator"]["init_args"]
    assert (model["num_slots"], model["num_candidates"]) == (10000, 4)
    assert (generator["solver"], generator["steps"]) == ("euler", 20)
    assert model["generator"]["init_args"]["velocity"]["init_args"] == {"dim": 2, "hidden": 128, "depth": 3}
    data = cfg["data"]["init_args"]
    assert data["batch_size"] == 512 and data["source"]["init_args"]["num_train"] == 20000
    assert data["steps_per_epoch"] is None  # one pass an epoch, as the bare loop takes
    assert cfg["torch_num_threads"] == 1 and cfg["trainer"]["default_root_dir"] == str(tmp_path / "run")
    # The bare loop restarts its EMA each round, as the shipped config does.
    shipped = yaml.safe_load(bench.MAIN_CONFIG.read_text())
    shipped_model = shipped["model"]["init_args"]
    assert shipped_model["generator"]["init_args"]["ema_reset"] == "round"
    assert "restart_ema=True" in bench.bare_loop_source()
    # The bare loop is valid Python that reads its sizes from argv.
    compile(bench.bare_loop_source(), "bare_loop.py", "exec")
    assert "json.loads(sys.argv[1])" in bench.bare_loop_source()


@pytest.mark.parametrize("solver", ["euler", "rk4"])
def test_the_bare_loop_steps_as_the_named_solver(solver):
    """On v(x, t) = x a step multiplies by Euler's 1 + h, or RK4's Taylor polynomial of exp(h) to h^4."""
    import torch

    source = _load().bare_loop_source()
    step_source = source[source.index("def ode_step"):source.index("def train")]
    namespace = {"torch": torch, "work": {"solver": solver}, "ema": lambda y, t: y}
    exec(step_source, namespace)
    h = 0.25
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    factor = 1 + h if solver == "euler" else 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24
    assert torch.allclose(namespace["ode_step"](x, 0.0, h), x * factor, rtol=1e-15, atol=0)


def test_bench_overhead_whole_tiny_times_both_whole_processes(tmp_path):
    """--whole: the bare loop's process against ``python -m lightning_curate fit`` as shipped, from outside."""
    args = ["--whole", "--sizes", "tiny", "--pairs", "1", "--json", "--record", "rec"]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    record = read_record(tmp_path / "rec" / "bench_overhead_whole_tiny.json")
    assert record["figures"] == results[0] and record["command"] == "python scripts/bench_overhead.py " + " ".join(args)
    result = results[0]
    assert (result["size"], result["mode"], result["pairs"]) == ("tiny", "whole", 1)
    assert result["package_command"] == "python -m lightning_curate fit -c package.yaml"
    assert result["optimizer_steps"] == 2 * 4 + 2 * 1 * 2
    runs = result["runs"]
    for program in ("bare", "package"):
        assert len(runs[program]) == 1 and runs[program][0]["wall"] > 0 and runs[program][0]["cpu"] > 0
        assert result["median"][program] == runs[program][0]
    # The whole package process starts Lightning and the CLI on top of torch: it cannot be the cheaper one.
    assert runs["package"][0]["cpu"] > runs["bare"][0]["cpu"]
    assert result["ratio_wall"] == pytest.approx(runs["package"][0]["wall"] / runs["bare"][0]["wall"])
    assert result["ratio_cpu"] == pytest.approx(runs["package"][0]["cpu"] / runs["bare"][0]["cpu"])
    assert "whole processes, size tiny: 256 slots x K=4, 4 euler steps, batch 128, 12 optimizer steps" in proc.stdout
    assert re.search(r"^ +0 +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$", proc.stdout, re.M)
    assert (f"whole package / bare = {result['ratio_wall']:.2f}x wall, {result['ratio_cpu']:.2f}x CPU "
            "(median of 1 alternating pairs)") in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]


def test_whole_mode_alternates_the_pairs_and_reports_median_ratios(monkeypatch):
    """Three pairs (bare first, package first, bare first); each pair's ratio, and the medians."""
    bench = _load()
    calls = []
    timings = iter([(10.0, 5.0), (13.0, 6.0),   # pair 0: bare, then package
                    (30.0, 9.0), (20.0, 8.0),   # pair 1: package, then bare
                    (12.0, 6.0), (12.0, 7.0)])  # pair 2: bare, then package

    def fake_run(cmd, cwd, env, timeout):
        program = "package" if "lightning_curate" in cmd else "bare"
        calls.append(program)
        if program == "package":  # the run the package would leave
            cfg = yaml.safe_load((cwd / "package.yaml").read_text())
            loop = next(c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("RetrainingLoop"))
            assert "plots" not in loop["init_args"] and "bench_timer" not in str(cfg), "the config as shipped"
            root = Path(cfg["trainer"]["default_root_dir"])
            root.mkdir(parents=True)
            (root / "rounds.csv").write_text("round\n0\n")
        assert env["OMP_NUM_THREADS"] == "1"
        wall, cpu = next(timings)
        return {"wall": wall, "cpu": cpu}

    monkeypatch.setattr(bench, "_run_whole", fake_run)
    result = bench.run_whole("tiny", pairs=3)
    assert calls == ["bare", "package", "package", "bare", "bare", "package"]
    assert result["ratios_wall"] == pytest.approx([1.3, 1.5, 1.0])
    assert result["ratios_cpu"] == pytest.approx([6 / 5, 9 / 8, 7 / 6])
    assert result["ratio_wall"] == pytest.approx(1.3) and result["ratio_cpu"] == pytest.approx(7 / 6)
    assert result["median"] == {"bare": {"wall": 12.0, "cpu": 6.0}, "package": {"wall": 13.0, "cpu": 7.0}}
    text = bench.format_whole(result)
    assert "median      12.00     13.00   1.30      6.00     7.00   1.17" in text


def test_whole_mode_refuses_a_package_run_that_left_no_table(monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "_run_whole", lambda cmd, cwd, env, timeout: {"wall": 1.0, "cpu": 1.0})
    with pytest.raises(RuntimeError, match="left no rounds.csv"):
        bench.run_whole("tiny", pairs=1)
