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
                    "learner_noise": 1.2}  # the shipped noise rule: it changes no work
    assert cfg["trainer"]["callbacks"][0]["class_path"] == "bench_timer.EpochTimer"
    model = cfg["model"]["init_args"]
    generator = model["generator"]["init_args"]
    assert (model["num_slots"], model["num_candidates"]) == (10000, 4)
    assert (generator["solver"], generator["steps"]) == ("euler", 20)
    assert model["generator"]["init_args"]["velocity"]["init_args"] == {"dim": 2, "hidden": 128, "depth": 3}
    data = cfg["data"]["init_args"]
    assert data["batch_size"] == 512 and data["source"]["init_args"]["num_train"] == 20000
    assert cfg["torch_num_threads"] == 1 and cfg["trainer"]["default_root_dir"] == str(tmp_path / "run")
    # The main size is the shipped main job's, and the bare loop restarts its EMA each round as the config does.
    shipped = yaml.safe_load(bench.MAIN_CONFIG.read_text())
    main_loop = next(c for c in shipped["trainer"]["callbacks"]
                     if c["class_path"].endswith("RetrainingLoop"))["init_args"]
    main, shipped_model, shipped_data = bench.SIZES["main"], shipped["model"]["init_args"], shipped["data"]["init_args"]
    assert {k: main[k] for k in ("epochs_per_round", "initial_epochs", "rounds")} == \
        {k: main_loop[k] for k in ("epochs_per_round", "initial_epochs", "rounds")}
    shipped_generator = shipped_model["generator"]["init_args"]
    assert (main["num_slots"], main["num_candidates"], main["solver"], main["steps"], main["batch_size"],
            main["num_train"]) == (shipped_model["num_slots"], shipped_model["num_candidates"],
                                   shipped_generator["solver"], shipped_generator["steps"],
                                   shipped_data["batch_size"], shipped_data["source"]["init_args"]["num_train"])
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
