"""Closed-form generators (no trainable parameters): fit(x) once a round on the round's set, no optimizer."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_curate.data import Atoms, BlendingDataModule
from lightning_curate.loop import CurationModule, RetrainingLoop
from lightning_curate.loop.component_check import GeneratorError
from lightning_curate.loop.training import TrainingSetupError
from lightning_curate.models import ExactCategorical, Generator
from lightning_curate.rewards import AtomReward


class Recording(ExactCategorical):
    """The exact learner, remembering every set it was fitted on."""

    def __init__(self, num_atoms: int):
        super().__init__(num_atoms)
        self.seen: list[torch.Tensor] = []

    def fit(self, x):
        self.seen.append(x.clone())
        super().fit(x)


def run(tmp_path, generator, steps_per_batch=1, rounds=2):
    module = CurationModule(generator, AtomReward([1.0, 0.0, 0.0], gamma=2.0), num_slots=300, num_candidates=3,
                            preview_size=50, steps_per_batch=steps_per_batch)
    data = BlendingDataModule(Atoms([0.2, 0.3, 0.5], num_train=400, num_heldout=100, seed=0), batch_size=64)
    loop = RetrainingLoop(rounds=rounds, epochs_per_round=2, initial_epochs=3, seed=0, plots=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, callbacks=[loop], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return trainer, module, loop


def test_fit_is_called_once_per_round_with_the_whole_round_and_no_optimizer(tmp_path):
    generator = Recording(num_atoms=3)
    trainer, module, loop = run(tmp_path, generator)
    assert loop.complete and module.configure_optimizers() is None  # no optimizer was made
    # Three rounds of 3, 2 and 2 epochs: one fit each, on every row of the round's set.
    assert [x.shape[0] for x in generator.seen] == [400, 300, 300]
    assert torch.equal(generator.seen[0], trainer.datamodule.real.train)
    for t in (1, 2):  # real_fraction 0: round t trains on round t - 1's winners exactly
        assert torch.equal(generator.seen[t], loop.store.read(t - 1).tensors["x"])
    assert int(generator.fits) == 3
    final = torch.bincount(generator.seen[-1].long().flatten(), minlength=3)
    assert generator.counts.tolist() == final.tolist()  # the MLE of the last round's set
    # Lightning still counts a step a batch (7 epochs: 3 x 7 batches of 400 rows, then 4 x 5 of 300).
    assert trainer.global_step == 3 * 7 + 4 * 5
    assert "train/loss_epoch" in trainer.callback_metrics  # the loss is logged, not trained on


def test_grouped_steps_are_refused_for_a_closed_form_generator(tmp_path):
    with pytest.raises(TrainingSetupError, match="fitted in closed form.*use steps_per_batch: 1"):
        run(tmp_path, ExactCategorical(num_atoms=3), steps_per_batch=2, rounds=0)


def test_a_generator_with_neither_parameters_nor_fit_is_named_at_fit_start(tmp_path):
    class Frozen(Generator):
        def __init__(self):
            super().__init__()
            self.data_shape = (1,)

        def sample(self, n, *, generator=None, device=None):
            return torch.randint(0, 3, (n, 1), generator=generator).float()

    with pytest.raises(GeneratorError, match="Frozen has no trainable parameters, so no optimizer can train it"):
        run(tmp_path, Frozen(), rounds=0)
    assert not (tmp_path / "rounds").exists()


def test_the_per_round_reward_guard_still_names_the_round():
    module = CurationModule(ExactCategorical(num_atoms=3), torch.nn.Identity(), num_slots=10)
    with pytest.raises(ValueError, match=r"round 3: the reward model returned shape \(4, 1\) for 4 samples"):
        module.score(torch.zeros(4, 1), 3)
