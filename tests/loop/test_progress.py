"""RoundProgressBar: one bar per round over the round's batches, redrawn at most every min_interval."""

import lightning as L
import pytest
import torch
from loop_helpers import build_module
from torch.utils.data import DataLoader, TensorDataset

from lightning_curate.data import BlendingDataModule, Toy2D
from lightning_curate.loop import RetrainingLoop, RoundProgressBar
from lightning_curate.rewards import ClippedDistanceReward


class CountingBar(RoundProgressBar):
    """Records every redraw as (epoch, batches done in the bar, bar total, description), and the
    loss it showed."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.draws, self.shown_losses = [], []

    def _draw(self, trainer, pl_module):
        super()._draw(trainer, pl_module)
        bar = self.train_progress_bar
        self.draws.append((trainer.current_epoch, bar.n, bar.total, bar.desc.removesuffix(": ")))
        shown = dict(item.split("=") for item in (bar.postfix or "").split(", ") if "=" in item)
        self.shown_losses.append(float(shown["train/loss_epoch"]) if "train/loss_epoch" in shown else None)


class EpochLosses(L.Callback):
    """Each epoch's train/loss_epoch, read just after the module logged it (its on_train_epoch_end
    runs after the other callbacks')."""

    def __init__(self):
        self.losses = {}

    def setup(self, trainer, pl_module, stage):
        logged = pl_module.on_train_epoch_end

        def record():
            logged()
            self.losses[trainer.current_epoch] = float(trainer.callback_metrics["train/loss_epoch"])

        pl_module.on_train_epoch_end = record


def _fit(tmp_path, bar, model=None, *extra):
    """A curated run of 2 rounds, or ``model`` alone for 3 epochs."""
    if model is None:
        model = build_module(ClippedDistanceReward(dataset="mog8", targets=[0]), num_slots=32, num_candidates=2)
        data = BlendingDataModule(Toy2D("mog8", num_train=256, num_heldout=64), batch_size=128)
        loop = RetrainingLoop(rounds=2, epochs_per_round=3, initial_epochs=2, plots=False)
        callbacks, epochs = [loop, bar, *extra], loop.total_epochs
    else:
        data, callbacks, epochs = None, [bar, *extra], 3
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, accelerator="cpu", logger=False,
                        max_epochs=epochs, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)


def test_one_bar_per_round_drawn_only_at_round_ends_when_the_interval_is_long(tmp_path):
    bar, losses = CountingBar(min_interval=1e9), EpochLosses()
    _fit(tmp_path, bar, None, losses)
    # Round 0 is epochs 0-1 of 2 batches (256 real points), rounds 1 and 2 are epochs 2-4 and 5-7
    # of one batch (32 curated points). A round's last draw comes at the next epoch's start (the
    # end of training for the last round), once the module has logged the round's last loss.
    assert bar.draws == [(2, 4, 4, "Round 0/2 · epoch 1"), (5, 3, 3, "Round 1/2 · epoch 4"),
                         (8, 3, 3, "Round 2/2 · epoch 7")]
    # The loss each draw shows is its round's last epoch's, as tqdm prints it (3 significant digits).
    assert bar.shown_losses == [float(f"{losses.losses[e]:.3g}") for e in (1, 4, 7)]


def test_every_batch_is_drawn_when_the_interval_is_zero(tmp_path):
    bar = CountingBar(min_interval=0.0)
    _fit(tmp_path, bar)
    done = [(epoch, n) for epoch, n, _, _ in bar.draws]
    # Each batch, counted from the round's start, then the round's end once more.
    expected = [(0, 1), (0, 2), (1, 3), (1, 4), (2, 4), (2, 1), (3, 2), (4, 3), (5, 3), (5, 1), (6, 2), (7, 3),
                (8, 3)]
    assert done == expected
    assert bar.draws[5][3] == "Round 1/2 · epoch 2"


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(6, 2, generator=gen), torch.randn(6, 1, generator=gen)),
                          batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_without_a_retraining_loop_the_bar_spans_an_epoch(tmp_path):
    bar = CountingBar(min_interval=1e9)
    _fit(tmp_path, bar, model=_Regression())
    assert bar.draws == [(1, 3, 3, "Epoch 0"), (2, 3, 3, "Epoch 1"), (3, 3, 3, "Epoch 2")]


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="min_interval"):
        RoundProgressBar(min_interval=-1.0)
