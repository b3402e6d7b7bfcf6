"""RoundCheckpoint: one save at each round's end, after the round's commit; ModelCheckpoint's otherwise."""

import json

import lightning as L
import pytest
import torch
from run_configs import tiny_config, write_config

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
