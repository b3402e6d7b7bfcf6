"""``lightning-curate diagnose budget``: one round refitted from a run's state at several budgets; its gap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from run_configs import read_rows, tiny_config, tree_digest, write_config

from lightning_curate.cli import main as curate
from lightning_curate.diagnostics import budget as script
from lightning_curate.diagnostics.cli import main as diagnose
from lightning_curate.rewards import ClippedDistanceReward
from lightning_curate.store import RoundStore


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A run stopped at the end of round 1: the state round 2 starts from."""
    root = tmp_path_factory.mktemp("learner_budget")
    cfg = tiny_config(root / "run", rounds=1)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    cfg["model"]["init_args"]["generator"]["init_args"]["ema_reset"] = "round"
    curate(["fit", "-c", str(write_config(root / "tiny.yaml", cfg))])
    return root / "run"


def test_refits_score_against_the_set_the_round_trains_on_and_leave_the_run_alone(base_run, capsys):
    before = tree_digest(base_run)
    assert diagnose(["budget", str(base_run), "--steps", "3", "6", "--batch-sizes", "50", "--seeds", "2", "-n", "300",
                        "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["round"] == 2
    # Round 2 trains on round 1's curated set (real_fraction 0): its mean reward, by hand.
    curated = RoundStore(base_run / "rounds").read(1).tensors["x"]
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5)
    assert result["training_set_reward_mean"] == pytest.approx(reward(curated).double().mean().item(), abs=1e-9)
    assert float(read_rows(base_run)[1]["curated_reward_mean"]) == pytest.approx(
        result["training_set_reward_mean"], abs=1e-6)
    refits = result["refits"]
    assert [(r["steps"], r["batch_size"], r["seed"]) for r in refits] == [(3, 50, 0), (3, 50, 1), (6, 50, 0),
                                                                          (6, 50, 1)]
    for r in refits:
        assert r["learner_gap"] == r["reward_mean"] - result["training_set_reward_mean"]
    assert len({r["reward_mean"] for r in refits}) == 4  # other seeds and budgets land elsewhere
    assert "round 2 on its 600 training samples" in out and "gap of each seed" in out
    assert tree_digest(base_run) == before  # only read


def test_a_refit_takes_exactly_its_steps_and_restores_the_run_state(base_run):
    module, datamodule, state, _, t = script.load_round_start(base_run)
    data = datamodule.dataset_for_round(t).tensors[0]
    generator = module.generator
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    shapes = []
    loss = generator.loss

    def spy(x):
        shapes.append(x.shape[0])
        assert all((data == row).all(dim=1).any() for row in x[:5])  # rows of the training set
        return loss(x)

    generator.loss = spy
    rounds_started = []
    start_round = generator.start_round
    generator.start_round = lambda t: (rounds_started.append(t), start_round(t))
    kwargs = dict(steps=9, batch_size=256, n=64, train_mean=0.0)
    first = script.refit_gap(module, state["optimizer_states"][0], data, t, seed=0, **kwargs)
    # 600 rows in batches of 256: 256, 256, 88, then the next epoch's, until 9 steps.
    assert shapes == [256, 256, 88, 256, 256, 88, 256, 256, 88]
    assert rounds_started == [2]  # the round's EMA restart (ema_reset: round), as the loop does
    # With a fixed budget an epoch is steps_per_epoch full batches, over consecutive shuffles.
    shapes.clear()
    script.refit_gap(module, None, data, t, seed=0, steps_per_epoch=2, **kwargs)
    assert shapes == [256] * 9
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    # Same seed and budget from the restored state: the same refit; another seed: another one.
    assert script.refit_gap(module, state["optimizer_states"][0], data, t, seed=0, **kwargs)["reward_mean"] == \
        first["reward_mean"]
    assert script.refit_gap(module, state["optimizer_states"][0], data, t, seed=1, **kwargs)["reward_mean"] != \
        first["reward_mean"]
    # The run's optimizer moments are part of the round's start: without them, another refit.
    assert script.refit_gap(module, None, data, t, seed=0, **kwargs)["reward_mean"] != first["reward_mean"]


def test_the_trainers_gradient_clipping_is_applied(base_run, monkeypatch):
    assert script.gradient_clip({"trainer": {}}) is None
    assert script.gradient_clip({"trainer": {"gradient_clip_val": 0}}) is None
    assert script.gradient_clip({"trainer": {"gradient_clip_val": 1}}) == (1.0, "norm")
    assert script.gradient_clip({"trainer": {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}}) == \
        (0.5, "value")
    module, datamodule, state, _, t = script.load_round_start(base_run)
    calls = []
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, value: calls.append(value))
    data = datamodule.dataset_for_round(t).tensors[0]
    script.refit_gap(module, None, data, t, steps=5, batch_size=100, seed=0, n=16, train_mean=0.0, clip=(1.0, "norm"))
    assert calls == [1.0] * 5


def test_the_runs_own_budget_is_the_default_and_is_marked(base_run, capsys):
    assert diagnose(["budget", str(base_run), "--steps", "2", "--seeds", "1", "-n", "50"]) == 0
    out = capsys.readouterr().out
    # tiny_config: batch 128 on 600 rows, 2 epochs a round: 10 steps of 128; the batch sizes default to 128, 256.
    assert "(10 steps of 128)" in out
    lines = [line for line in out.splitlines() if line[1:].split()[:2] in (["2", "128"], ["2", "256"])]
    assert len(lines) == 2 and not any(line.startswith("*") for line in lines)
    assert diagnose(["budget", str(base_run), "--steps", "10", "--seeds", "1", "-n", "50"]) == 0
    own = [line for line in capsys.readouterr().out.splitlines() if line.startswith("*")]
    assert len(own) == 1 and own[0][1:].split()[:3] == ["10", "128", "1280"]


def _copy_of(base_run: Path, where: Path, *, checkpoint: bool = True, config: dict | None = None) -> Path:
    """A run directory with the base's config (or ``config``) and last checkpoint, and no round store."""
    (where / "checkpoints").mkdir(parents=True)
    (where / "config.yaml").write_text(yaml.safe_dump(config) if config else (base_run / "config.yaml").read_text())
    if checkpoint:
        (where / "checkpoints" / "last.ckpt").write_bytes((base_run / "checkpoints" / "last.ckpt").read_bytes())
    return where


def test_bad_input_is_named(base_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        diagnose(["budget", str(base_run), "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps must be positive ints" in capsys.readouterr().err
    assert diagnose(["budget", str(tmp_path)]) == 1
    assert "no config.yaml" in capsys.readouterr().err
    assert diagnose(["budget", str(_copy_of(base_run, tmp_path / "no_ckpt", checkpoint=False))]) == 1
    assert "checkpoints/last.ckpt does not exist" in capsys.readouterr().err
    cfg = yaml.safe_load((base_run / "config.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["init"] = "scratch"
    assert diagnose(["budget", str(_copy_of(base_run, tmp_path / "scratch", config=cfg))]) == 1
    assert "only warm rounds" in capsys.readouterr().err
    # A checkpoint from inside a round (a crash, a per-epoch ModelCheckpoint) is not a round's start.
    mid = _copy_of(base_run, tmp_path / "mid")
    state = torch.load(base_run / "checkpoints" / "last.ckpt", weights_only=True)
    state["epoch"] -= 1
    torch.save(state, mid / "checkpoints" / "last.ckpt")
    assert diagnose(["budget", str(mid)]) == 1
    assert "not at the end of round 1 (epoch 4)" in capsys.readouterr().err
    # A store without the round's curated set: named, not a traceback.
    assert diagnose(["budget", str(_copy_of(base_run, tmp_path / "bare"))]) == 1
    assert "the round store has no round 1" in capsys.readouterr().err
