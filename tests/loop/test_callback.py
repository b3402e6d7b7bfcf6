"""RetrainingLoop on its own: the round schedule, the resume checks, the settings it records."""

import math

import pytest
import torch
from torch import nn

from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.store.rounds import RoundStore


@pytest.mark.parametrize("rounds, per_round, initial", [(3, 2, 3), (0, 1, 1), (4, 1, None), (2, 5, 1)])
def test_round_schedule_matches_an_epoch_by_epoch_oracle(rounds, per_round, initial):
    loop = RetrainingLoop(rounds=rounds, epochs_per_round=per_round, initial_epochs=initial)
    first = initial if initial is not None else per_round
    # The oracle: list every epoch's round explicitly.
    schedule = [0] * first + [t for t in range(1, rounds + 1) for _ in range(per_round)]
    assert loop.total_epochs == len(schedule)
    assert [loop.round_of_epoch(e) for e in range(len(schedule))] == schedule
    for t in range(rounds + 1):
        last = max(e for e, r in enumerate(schedule) if r == t)
        assert loop.last_epoch_of_round(t) == last
    ends = [e for e in range(len(schedule)) if e + 1 == len(schedule) or schedule[e + 1] != schedule[e]]
    assert [e for e in range(len(schedule)) if loop.ends_round(e)] == ends


def test_schedule_of_the_tiny_config():
    loop = RetrainingLoop(rounds=3, epochs_per_round=2, initial_epochs=3)
    assert loop.total_epochs == 9
    assert [loop.round_of_epoch(e) for e in range(9)] == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert [loop.last_epoch_of_round(t) for t in range(4)] == [2, 4, 6, 8]


@pytest.mark.parametrize("key, value", [("seed", 1), ("epochs_per_round", 3), ("initial_epochs", 4)])
def test_resume_from_a_checkpoint_with_another_schedule_is_refused(key, value):
    saved = RetrainingLoop(rounds=3, epochs_per_round=2, initial_epochs=3, seed=0).state_dict()
    saved[key] = value
    loop = RetrainingLoop(rounds=3, epochs_per_round=2, initial_epochs=3, seed=0)
    with pytest.raises(ValueError, match=f"cannot resume: the checkpoint was made with {key}={value!r}, "
                                         f"the config now says"):
        loop.load_state_dict(saved)
    assert not loop._restored


def test_resume_with_more_rounds_is_allowed():
    saved = RetrainingLoop(rounds=3, epochs_per_round=2, initial_epochs=3).state_dict()
    loop = RetrainingLoop(rounds=5, epochs_per_round=2, initial_epochs=3)
    loop.load_state_dict(saved)
    assert loop._restored and loop.total_epochs == 13


def test_complete_only_when_every_round_is_there():
    loop = RetrainingLoop(rounds=2)
    loop.rows = {0: {}, 1: {}}
    assert not loop.complete
    loop.rows[2] = {}
    assert loop.complete


def test_complete_counts_stored_rounds(tmp_path):
    """A finished run resumed again trains nothing: its stored rounds make it complete."""
    loop = RetrainingLoop(rounds=1)
    loop.store = RoundStore(tmp_path / "rounds")
    loop.store.write(0, {"x": torch.zeros(2)}, {})
    assert not loop.complete
    loop.store.write(1, {"x": torch.zeros(2)}, {})
    assert loop.complete


def test_allow_changed_settings_is_validated():
    assert RetrainingLoop(allow_changed_settings="beta,mode").allow_changed_settings == ("beta", "mode")
    with pytest.raises(ValueError, match="allow_changed_settings: 'seed' cannot change"):
        RetrainingLoop(allow_changed_settings=["seed"])


class _Reward(nn.Module):
    def __init__(self, gamma: float = 2.0, targets=(0, 1)):
        super().__init__()
        self.gamma, self.targets = gamma, list(targets)

    def forward(self, x):
        return x.sum(-1)


class _Module(nn.Module):
    num_slots, num_candidates, beta, num_winners, mode = 10, 4, 1.5, 1, "softmax"

    def __init__(self):
        super().__init__()
        self.reward, self.generator = _Reward(), nn.Linear(1, 1)


class _Data:
    real_fraction, policy = 0.5, "replace"


def test_science_settings_record_every_key():
    loop = RetrainingLoop(rounds=2, epochs_per_round=2, initial_epochs=3, seed=7)
    settings = loop.science_settings(_Module(), _Data())
    assert settings == {
        "num_slots": 10, "num_candidates": 4, "beta": 1.5, "num_winners": 1, "mode": "softmax",
        "real_fraction": 0.5, "policy": "replace", "generator": "torch.nn.modules.linear.Linear",
        "reward": {"class_path": f"{__name__}._Reward", "init_args": {"gamma": 2.0, "targets": [0, 1]}},
        "seed": 7, "epochs_per_round": 2, "initial_epochs": 3, "init": "warm", "steps_per_epoch": None,
    }
    # With the CLI the reward's config (class_path and init_args as written) is recorded instead.
    loop.reward_config = {"class_path": "pkg.R", "init_args": {"gamma": 5.0}}
    assert loop.science_settings(_Module(), _Data())["reward"] == loop.reward_config
    assert torch.is_tensor(torch.zeros(1))  # keeps torch imported for the modules above


def _rows():
    return {t: {"round": t, "reward_mean": -1.0 + t, "curated_reward_mean": 0.5, "real_fraction": 0.0,
                "share_mode0": 0.25, "share_mode1": 0.75} for t in range(2)}


def test_summary_lists_config_and_checkpoint_only_when_they_exist(tmp_path):
    """A plain Trainer with logger=False and no checkpoint: the summary promises neither file."""
    loop = RetrainingLoop(rounds=1)
    loop.rows, loop.run_dir = _rows(), tmp_path
    text = loop.summary(None)
    assert "rounds.csv            per-round metrics (2 rows)" in text
    assert "config.yaml" not in text and "last.ckpt" not in text and ".png" not in text
    (tmp_path / "samples.png").write_bytes(b"")
    assert "  samples.png           model samples of every round\n  rounds/round_NNN/" in loop.summary(None)
    (tmp_path / "config.yaml").write_text("x: 1\n")
    (tmp_path / "checkpoints").mkdir()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert "last.ckpt" not in loop.summary(ckpt)  # named, but not on disk
    ckpt.write_bytes(b"")
    text = loop.summary(ckpt)
    assert "  config.yaml           the full config of this run" in text
    assert "  checkpoints/last.ckpt resume with --ckpt_path last" in text


def _fit_tiny(tmp_path, init, logger=False, plots=False, callbacks=(), policy="replace"):
    import lightning as L

    from lightning_curate import BlendingDataModule, CurationModule, FlowMatching, MLPVelocity, Toy2D
    from lightning_curate.rewards import ClippedDistanceReward

    calls = []

    class Recording(FlowMatching):
        def start_round(self, round_idx):
            calls.append((round_idx, {k: v.clone() for k, v in self.velocity.state_dict().items()}))

    L.seed_everything(0)
    generator = Recording(MLPVelocity(dim=2, hidden=16, depth=1), data_shape=[2], steps=2, ema_decay=0.0)
    initial = {k: v.clone() for k, v in generator.velocity.state_dict().items()}
    reward = ClippedDistanceReward(dataset="mog8", targets=[0])
    model = CurationModule(generator, reward, num_slots=64, num_candidates=2, preview_size=16)
    data = BlendingDataModule(Toy2D("mog8", num_train=256, num_heldout=64), batch_size=64, policy=policy)
    loop = RetrainingLoop(rounds=2, epochs_per_round=2, initial_epochs=2, plots=plots, init=init)
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=[loop, *callbacks], accelerator="cpu", logger=logger,
                        max_epochs=1,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, data)
    return calls, initial, trainer


def test_round_rows_go_to_the_loggers_not_into_lightning_results(tmp_path):
    """Every round's row reaches the logger (metrics.csv), and none of it sits in callback_metrics,
    which Lightning copies at every checkpoint and resets at every epoch."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    _, _, trainer = _fit_tiny(tmp_path, "warm", logger=CSVLogger(tmp_path, name="", version=""))
    logged = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("round/reward_mean")]
    stored = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    assert [float(r["round/round"]) for r in logged] == [0.0, 1.0, 2.0]
    assert [float(r["round/reward_mean"]) for r in logged] == [float(r["reward_mean"]) for r in stored]
    assert not [k for k in trainer.callback_metrics if k.startswith("round/")]


@pytest.mark.parametrize("init", ["warm", "scratch"])
def test_each_curated_round_starts_once_and_scratch_restarts_from_the_initial_weights(tmp_path, init):
    calls, initial, _ = _fit_tiny(tmp_path, init)
    assert [t for t, _ in calls] == [1, 2]  # rounds 1 and 2, at their first epoch; never round 0
    # Either way round 2 trained on round 1's curated set, and its gap is taken against that set.
    import csv

    from lightning_curate.rewards import ClippedDistanceReward
    from lightning_curate.store import RoundStore

    rows = list(csv.DictReader(open(tmp_path / "rounds.csv")))
    curated = RoundStore(tmp_path / "rounds").read(1).tensors["x"]
    assert float(rows[2]["training_set_reward_mean"]) == pytest.approx(
        ClippedDistanceReward(dataset="mog8", targets=[0])(curated).double().mean().item(), abs=1e-6)
    for _, state in calls:
        same = all(torch.equal(state[k], initial[k]) for k in initial)
        assert same == (init == "scratch")


def test_init_must_be_warm_or_scratch():
    with pytest.raises(ValueError, match=r"init must be one of \('warm', 'scratch'\), got 'cold'"):
        RetrainingLoop(init="cold")


def test_learner_noise_must_be_a_non_negative_number():
    for bad in (-0.5, float("nan"), "1"):
        with pytest.raises(ValueError, match="learner_noise"):
            RetrainingLoop(learner_noise=bad)
    assert RetrainingLoop(learner_noise=1.5).learner_noise == 1.5


def test_a_run_stopped_before_its_last_round_still_draws_its_last_finished_round(tmp_path, monkeypatch):
    """The figures are redrawn only within their time budget; a run that ends early redraws at its end."""
    from lightning.pytorch.callbacks import Callback

    from lightning_curate.loop.report import PlotBudget
    from lightning_curate.loop.writing import RunWriter

    drawn = []
    monkeypatch.setattr(PlotBudget, "due", lambda self, last: last)  # only the last round on its own
    monkeypatch.setattr(RunWriter, "plot", lambda self, trainer, module: drawn.append(max(self.rows)))

    class StopAfterRoundOne(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 3:  # the last epoch of round 1 (round 0: epochs 0-1)
                trainer.should_stop = True

    _fit_tiny(tmp_path, "warm", plots=True, callbacks=[StopAfterRoundOne()])
    assert drawn == [1]
    drawn.clear()
    _fit_tiny(tmp_path / "full", "warm", plots=True)
    assert drawn == [2]  # drawn after the last round, not again at the end


def test_predictions_and_fidelity_only_under_the_replace_policy(tmp_path):
    """The ideal learner's predictions are the replace policy's: an accumulating run reports none
    (and so no fidelity) instead of comparing itself with the wrong process."""
    import csv

    _fit_tiny(tmp_path / "replace", "warm")
    _fit_tiny(tmp_path / "accumulate", "warm", policy="accumulate")
    replace = list(csv.DictReader(open(tmp_path / "replace" / "rounds.csv")))
    accumulate = list(csv.DictReader(open(tmp_path / "accumulate" / "rounds.csv")))
    assert "predicted_reward_mean" in replace[0] and "reward_fidelity" in replace[0]
    assert not [k for k in accumulate[0] if k.startswith(("predicted_", "reward_fidelity", "ideal_"))]
    assert [r["reward_mean"] != "" for r in accumulate] == [True] * 3
    # The learner gap needs no prediction: under accumulate round 2 trained on rounds 0 and 1's curated sets.
    from lightning_curate.rewards import ClippedDistanceReward
    from lightning_curate.store import RoundStore

    store, reward = RoundStore(tmp_path / "accumulate" / "rounds"), ClippedDistanceReward(dataset="mog8", targets=[0])
    both = torch.cat([store.read(0).tensors["x"], store.read(1).tensors["x"]])
    assert float(accumulate[2]["training_set_reward_mean"]) == pytest.approx(reward(both).double().mean().item(),
                                                                           abs=1e-6)
    assert float(accumulate[2]["learner_gap"]) == pytest.approx(
        float(accumulate[2]["reward_mean"]) - float(accumulate[2]["training_set_reward_mean"]), abs=1e-9)


def test_learner_noise_reaches_the_rows_fidelity(tmp_path):
    """The same run with a learner noise far above every move reports no ratio; without one it does."""
    import lightning as L
    from loop_helpers import build_module

    from lightning_curate import BlendingDataModule, Toy2D
    from lightning_curate.rewards import ClippedDistanceReward

    rows = {}
    for noise in (0.0, 100.0):
        model = build_module(ClippedDistanceReward(dataset="mog8", targets=[0]), num_slots=256, num_candidates=4)
        data = BlendingDataModule(Toy2D("mog8", num_train=512, num_heldout=64), batch_size=128)
        loop = RetrainingLoop(rounds=2, epochs_per_round=2, initial_epochs=3, plots=False, learner_noise=noise)
        trainer = L.Trainer(default_root_dir=tmp_path / str(noise), callbacks=[loop], accelerator="cpu",
                            logger=False, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False)
        trainer.fit(model, data)
        rows[noise] = loop.rows
    assert [rows[0.0][t]["reward_mean"] for t in range(3)] == [rows[100.0][t]["reward_mean"] for t in range(3)]
    assert rows[0.0][1]["fidelity_reliable"] == 1.0 and math.isfinite(rows[0.0][1]["reward_fidelity"])
    assert all(rows[100.0][t]["fidelity_reliable"] == 0.0 for t in (1, 2))
