"""The science, end to end: what curated retraining does to a 2D mixture (docs/THEORY.md sections 3-5).

Reduced versions of configs/mog8.yaml with and without configs/overlays/mog8_real.yaml: 8 Gaussians,
reward = clipped distance to modes 0 and 1 (25% of the data), K = 4, six rounds.
Fixed seeds make each run deterministic; the thresholds are the issue's claims.
"""

from __future__ import annotations

import pytest
import yaml
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.data import BlendingDataModule, Toy2D
from lightning_curate.loop import RetrainingLoop
from lightning_curate.rewards import ClippedDistanceReward
from lightning_curate.store import RoundStore


def run_mog8(tmp_path, real_fraction: float) -> list[dict]:
    run = tmp_path / f"run_{real_fraction}"
    cfg = tiny_config(run, rounds=6, real_fraction=real_fraction, num_slots=1000)
    cfg["trainer"]["limit_train_batches"] = None
    cfg["trainer"]["callbacks"][0]["init_args"].update(epochs_per_round=6, initial_epochs=20)
    cfg["data"]["init_args"]["source"]["init_args"]["num_train"] = 4000
    cfg["data"]["init_args"]["batch_size"] = 256
    generator = cfg["model"]["init_args"]["generator"]["init_args"]
    generator["velocity"]["init_args"].update(hidden=128, depth=3)
    generator["steps"] = 16
    main(["fit", "-c", str(write_config(tmp_path / f"cfg_{real_fraction}.yaml", cfg))])
    return [{k: float(v) for k, v in row.items() if v != ""} for row in read_rows(run)]


def mode_shares(row: dict) -> list[float]:
    return [row[f"share_mode{i}"] for i in range(8)]


@pytest.mark.slow
def test_curated_only_collapses_onto_the_rewarded_modes(tmp_path):
    rows = run_mog8(tmp_path, real_fraction=0.0)
    rewards = [r["reward_mean"] for r in rows]
    assert all(later > earlier for earlier, later in zip(rewards, rewards[1:])), rewards
    start, end = mode_shares(rows[0]), mode_shares(rows[-1])
    assert 0.2 < start[0] + start[1] < 0.3
    assert end[0] + end[1] >= 0.90, end


@pytest.mark.slow
def test_real_data_keeps_every_mode_while_the_reward_rises(tmp_path):
    rows = run_mog8(tmp_path, real_fraction=0.5)
    assert all(abs(r["real_fraction"] - 0.5) < 1e-9 for r in rows[1:])
    assert rows[-1]["reward_mean"] > rows[0]["reward_mean"] + 1.0
    for row in rows:
        assert min(mode_shares(row)) >= 0.04, (row["round"], mode_shares(row))
    # The rewarded modes gain, but stay far from collapse.
    assert 0.4 < mode_shares(rows[-1])[0] + mode_shares(rows[-1])[1] < 0.8
    # Each round's learner gap is taken against the blend it trained on, rebuilt here from the store.
    cfg = yaml.safe_load((tmp_path / "cfg_0.5.yaml").read_text())
    data = BlendingDataModule(Toy2D(**cfg["data"]["init_args"]["source"]["init_args"]), real_fraction=0.5,
                              batch_size=256)
    loop_args = cfg["trainer"]["callbacks"][0]["init_args"]
    data.attach(RoundStore(tmp_path / "run_0.5" / "rounds"), RetrainingLoop(**loop_args).round_of_epoch)
    reward = ClippedDistanceReward(**cfg["model"]["init_args"]["reward"]["init_args"])
    for row in rows:
        blend = data.dataset_for_round(int(row["round"])).tensors[0]
        assert len(blend) == (4000 if row["round"] == 0 else 2000)
        assert row["training_set_reward_mean"] == pytest.approx(reward(blend).double().mean().item(), abs=1e-6)
        assert row["learner_gap"] == pytest.approx(row["reward_mean"] - row["training_set_reward_mean"], abs=1e-9)
