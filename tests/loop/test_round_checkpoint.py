"""RoundCheckpoint: one save at each round's end, after the round's commit; ModelCheckpoint's otherwise."""

import json

import lightning as L
import pytest
import torch
from run_configs import read_rows, store_digest, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.loop import RoundCheckpoint


def _record_saves(monkeypatch) -> list[tuple[int, str]]:
    saves: list[tuple[int, str]] = []
    original = RoundCheckpoint._save_checkpoint

    def spy(self, trainer, filepath):
        saves.append((trainer.current_epoch, filepath.rsplit("/", 1)[-1]))
        original(self, trainer, filepath)

    monkeypatch.setattr(RoundCheckpoint, "_save_checkpoint", spy)
    return saves


def test_saves_once_per_round_end_after_the_commit(tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    run = tmp_path / "run"
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", tiny_config(run, rounds=2)))])
    # Round ends of the tiny schedule (3 initial epochs, then 2 a round): epochs 2, 4, 6.
    # Each end writes the top-k file and last.ckpt, nothing in between.
    assert sorted({epoch for epoch, _ in saves}) == [2, 4, 6]
    assert [name for epoch, name in saves if epoch == 6] == ["epoch=6-step=28.ckpt", "last.ckpt"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    loop_state = next(v for k, v in last["callbacks"].items() if k.startswith("RetrainingLoop"))
    assert last["epoch"] == 6 and loop_state["finished_rounds"] == [0, 1, 2]  # saved after round 2's commit
    manifest = json.loads((run / "rounds" / "round_002" / "manifest.json").read_text())
    assert manifest["epoch"] == 6


@pytest.mark.parametrize("name, value", [("every_n_epochs", 2), ("every_n_train_steps", 10)])
def test_schedule_arguments_are_refused(name, value):
    with pytest.raises(ValueError, match=f"RoundCheckpoint saves at each round's end: {name}={value} is not used"):
        RoundCheckpoint(**{name: value})
    with pytest.raises(ValueError, match="save_on_exception=True would save a state between two round ends"):
        RoundCheckpoint(save_on_exception=True)


def _config(tmp_path, name, checkpoint_args=None, file=None, **trainer):
    cfg = tiny_config(tmp_path / name, rounds=2)
    cfg["trainer"].update(trainer)
    cfg["trainer"]["callbacks"][1]["init_args"].update(checkpoint_args or {})
    return write_config(tmp_path / (file or f"{name}.yaml"), cfg)


def _fit(*args) -> int:
    try:
        main(["fit", *map(str, args)])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


# The tiny schedule has 4 steps an epoch: round 0 ends at step 12 (epoch 2), round 1 at 20, round 2 at 28.
@pytest.mark.parametrize("max_steps, saved, stored", [
    (14, [2], [0]),  # stopped inside round 1: round 0's end is the checkpoint
    (10, [], []),  # stopped inside round 0's last epoch: that epoch is no round end, nothing is committed
])
def test_a_run_stopped_between_round_ends_resumes_exactly(tmp_path, monkeypatch, max_steps, saved, stored):
    from lightning_curate.store.rounds import RoundStore

    assert _fit("-c", _config(tmp_path, "reference")) == 0
    saves = _record_saves(monkeypatch)
    cfg = _config(tmp_path, "run")
    assert _fit("-c", _config(tmp_path, "run", file="stopped.yaml", max_steps=max_steps)) == 1  # incomplete
    assert sorted({epoch for epoch, _ in saves}) == saved  # nothing saved at the stop itself
    assert RoundStore(tmp_path / "run" / "rounds").rounds() == stored
    assert _fit("-c", cfg, "--ckpt_path", "last") == 0
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 28
    assert store_digest(tmp_path / "run") == store_digest(tmp_path / "reference")
    assert read_rows(tmp_path / "run") == read_rows(tmp_path / "reference")


def test_last_checkpoint_follows_every_round_without_top_k_files(tmp_path, monkeypatch):
    """save_top_k: 0 writes no top-k file; Lightning would then skip last.ckpt too."""
    saves = _record_saves(monkeypatch)
    assert _fit("-c", _config(tmp_path, "run", {"save_top_k": 0})) == 0
    assert saves == [(2, "last.ckpt"), (4, "last.ckpt"), (6, "last.ckpt")]


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_without_a_retraining_loop_it_saves_every_epoch(tmp_path, monkeypatch):
    saves = _record_saves(monkeypatch)
    trainer = L.Trainer(max_epochs=3, callbacks=[RoundCheckpoint(dirpath=tmp_path)], logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_Tiny(), train_dataloaders=torch.utils.data.DataLoader(torch.randn(8, 2), batch_size=4))
    assert sorted({epoch for epoch, _ in saves}) == [0, 1, 2]
    assert (tmp_path / "last.ckpt").is_file()


def test_state_key_is_modelcheckpoints_built_once(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = RoundCheckpoint(dirpath=str(tmp_path), monitor="train/loss_epoch", mode="min")
    key = checkpoint.state_key
    assert key == ModelCheckpoint.state_key.fget(checkpoint)  # what ModelCheckpoint itself would say
    assert "train/loss_epoch" in key and checkpoint.state_key is key  # built once, then reused
