"""``lightning-curate diagnose solver``: one checkpoint sampled with several ODE solvers on the same noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_configs import tiny_config, tree_digest, write_config

from lightning_curate.cli import main as curate
from lightning_curate.diagnostics import solver as script
from lightning_curate.diagnostics.cli import main as diagnose
from lightning_curate.models import FlowMatching, MLPVelocity
from lightning_curate.rewards import ClippedDistanceReward

CONSOLE = Path(sys.executable).parent / "lightning-curate"  # the console script installed with the package


def test_solver_specs_and_same_cost_alternatives():
    assert script.parse_solver("rk4:6") == ("rk4", 6)
    assert script.parse_solver("dopri5") == ("dopri5", 0)
    for bad in ("rk5:3", "euler", "euler:0", "midpoint:x", "dopri5:3"):
        with pytest.raises(ValueError, match="--solvers"):
            script.parse_solver(bad)
    # 24 evaluations a sample: Euler 24, midpoint 12, rk4 6; the run's own first.
    assert script.same_cost_solvers("euler", 24) == [("euler", 24), ("midpoint", 12), ("rk4", 6)]
    assert script.same_cost_solvers("rk4", 1) == [("rk4", 1), ("euler", 4), ("midpoint", 2)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("solver_check")
    cfg = tiny_config(root / "run", rounds=2)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    curate(["fit", "-c", str(write_config(root / "tiny.yaml", cfg))])  # returns only when every round finished
    return root / "run"


def test_each_solver_samples_the_same_noise_with_the_run_weights(finished_run, capsys):
    before = tree_digest(finished_run)
    assert diagnose(["solver", str(finished_run), "--solvers", "euler:8", "midpoint:4", "-n", "300", "--seed", "5",
                        "--json"]) == 0
    out = capsys.readouterr().out
    rows = {row["solver"]: row for row in json.loads(out.strip().splitlines()[-1])}
    assert list(rows) == ["dopri5", "euler:8", "midpoint:4"]  # the reference first
    assert rows["euler:8"]["nfe"] == rows["midpoint:4"]["nfe"] == 8 and rows["dopri5"]["nfe"] > 8
    assert rows["dopri5"]["reward_gap"] == 0.0
    # The oracle: the tiny config's generator, rebuilt by hand, with the run's last weights.
    generator = FlowMatching(MLPVelocity(dim=2, hidden=64, depth=2), data_shape=[2], solver="euler", steps=8,
                             ema_decay=0.9)
    state = torch.load(finished_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in state.items() if k.startswith("generator.")})
    x = generator.sample(300, generator=torch.Generator().manual_seed(5))
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5)(x).double().mean().item()
    assert rows["euler:8"]["reward_mean"] == reward
    assert rows["euler:8"]["reward_gap"] == reward - rows["dopri5"]["reward_mean"]
    assert sum(rows["euler:8"]["shares"]) == pytest.approx(1.0) and len(rows["euler:8"]["shares"]) == 8
    assert "<- the run's" in out  # the config's own solver, euler:8, is marked
    assert tree_digest(finished_run) == before  # the check only reads the run


def test_bad_input_is_named(finished_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        diagnose(["solver", str(finished_run), "--solvers", "rk5:3"])
    assert err.value.code == 2 and "--solvers" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        diagnose(["solver", str(finished_run), "-n", "1"])
    assert err.value.code == 2 and "-n must be >= 2" in capsys.readouterr().err
    assert diagnose(["solver", str(tmp_path)]) == 1
    assert "no config.yaml" in capsys.readouterr().err
    assert diagnose(["solver", str(finished_run), "--ckpt", str(tmp_path / "nope.ckpt")]) == 1
    assert "nope.ckpt does not exist" in capsys.readouterr().err
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:4000])
    assert diagnose(["solver", str(finished_run), "--ckpt", str(truncated)]) == 1
    assert f"checkpoint {truncated} is truncated or damaged" in capsys.readouterr().err


def test_the_yardstick_is_the_smallest_move_whose_fidelity_is_reported(tmp_path):
    rows = ["round,reward_mean,predicted_reward_mean,reward_fidelity",
            "0,0.5,1.5,", "1,1.4,3.4,0.9", "2,3.3,3.5,0.95", "3,3.49,3.50,nan", "4,3.5,3.6,"]
    (tmp_path / "rounds.csv").write_text("\n".join(rows) + "\n")
    # Rounds 0 and 1 predicted moves that rounds 1 and 2 report (1.0 and 2.0); round 3 reports none.
    assert script.smallest_counted_move(tmp_path) == pytest.approx(1.0)
    assert script.smallest_counted_move(tmp_path / "nowhere") is None


def test_chunked_sampling_counts_evaluations_per_sample_and_the_generator_is_restored(finished_run):
    module, datamodule, _ = script.load_run(finished_run)
    generator = module.generator
    generator.sample_batch_size = 128  # 300 samples in 3 chunks
    rows = script.check_solvers(module, datamodule, [("euler", 8), ("rk4", 2)], n=300, seed=0)
    assert [r["nfe"] for r in rows[1:]] == [8, 8]
    assert (generator.solver, generator.steps, generator.rtol, generator.atol) == ("euler", 8, 1e-5, 1e-5)
    assert not generator.sampling_velocity._forward_hooks  # the counter is gone


def test_a_run_sampling_with_dopri5_is_checked_at_its_own_tolerance(finished_run):
    module, datamodule, _ = script.load_run(finished_run)
    generator = module.generator
    generator.solver, generator.rtol, generator.atol = "dopri5", 1e-3, 1e-3
    solvers = script.same_cost_solvers("dopri5", generator.steps)
    assert solvers == [script.RUN_DOPRI5, ("euler", 32), ("midpoint", 16), ("rk4", 8)]
    rows = script.check_solvers(module, datamodule, solvers, n=200, seed=0, tolerance=1e-6)
    assert [r["solver"] for r in rows] == ["dopri5", "dopri5@0.001", "euler:32", "midpoint:16", "rk4:8"]
    assert rows[1]["nfe"] < rows[0]["nfe"]  # the run's looser tolerance takes fewer steps than the reference
    assert (generator.solver, generator.rtol, generator.atol) == ("dopri5", 1e-3, 1e-3)


def test_the_console_script_and_the_fit_cli_dispatch_to_it(finished_run, capsys):
    """``lightning-curate diagnose solver`` as installed, and ``lightning_curate.cli.main`` with ``diagnose``."""
    proc = subprocess.run([str(CONSOLE), "diagnose", "solver", str(finished_run), "--solvers", "rk4:2", "-n", "50",
                           "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["solver"] for r in rows] == ["dopri5", "rk4:2"] and rows[1]["nfe"] == 8
    assert curate(["diagnose", "solver", str(finished_run), "--solvers", "euler:2", "-n", "50"]) is None
    assert "euler:2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:  # a refusal keeps its exit status through the fit CLI
        curate(["diagnose", "solver", str(finished_run / "nowhere")])
    assert err.value.code == 1 and "no config.yaml" in capsys.readouterr().err
    proc = subprocess.run([str(CONSOLE), "diagnose", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and all(name in proc.stdout for name in ("jitter", "budget", "solver"))
