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
    """Records every redraw as (epoch, batches done in the bar, bar total, description)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.draws = []

    def _draw(self, trainer, pl_module):
        super()._draw(trainer, pl_module)
        bar = self.train_progress_bar
        self.draws.append((trainer.current_epoch, bar.n, bar.total, bar.desc.removesuffix(": ")))


def _fit(tmp_path, bar, model=None):
    """A curated run of 2 rounds, or ``model`` alone for 3 epochs."""
    if model is None:
        model = build_module(ClippedDistanceReward(dataset="mog8", targets=[0]), num_slots=32, num_candidates=2)
        data = BlendingDataModule(Toy2D("mog8", num_train=256, num_heldout=64), batch_size=128)
        loop = RetrainingLoop(rounds=2, epochs_per_round=3, initial_epochs=2, plots=False)
        callbacks, epochs = [loop, bar], loop.total_epochs
    else:
        data, callbacks, epochs = None, [bar], 3
    trainer = L.Trainer(default_root_dir=tmp_path, callbacks=callbacks, accelerator="cpu", logger=False,
                        max_epochs=epochs, enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)


def test_one_bar_per_round_drawn_only_at_round_ends_when_the_interval_is_long(tmp_path):
    bar = CountingBar(min_interval=1e9)
    _fit(tmp_path, bar)
    # Round 0 is epochs 0-1 of 2 batches (256 real points), rounds 1 and 2 are epochs 2-4 and 5-7
    # of one batch (32 curated points).
    assert bar.draws == [(1, 4, 4, "Round 0/2 · epoch 1"), (4, 3, 3, "Round 1/2 · epoch 4"),
                         (7, 3, 3, "Round 2/2 · epoch 7")]


def test_every_batch_is_drawn_when_the_interval_is_zero(tmp_path):
    bar = CountingBar(min_interval=0.0)
    _fit(tmp_path, bar)
    done = [(epoch, n) for epoch, n, _, _ in bar.draws]
    # Each batch, counted from the round's start, then the round's end once more after the epoch.
    expected = [(0, 1), (0, 2), (1, 3), (1, 4), (1, 4), (2, 1), (3, 2), (4, 3), (4, 3), (5, 1), (6, 2), (7, 3),
                (7, 3)]
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
    assert bar.draws == [(0, 3, 3, "Epoch 0"), (1, 3, 3, "Epoch 1"), (2, 3, 3, "Epoch 2")]


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="min_interval"):
        RoundProgressBar(min_interval=-1.0)
