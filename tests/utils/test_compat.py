"""lightning_curate.utils.compat on the installed Lightning and torch: every private attribute and
function it reaches for still exists with the signature it expects, and does what it relies on.

An upgrade that renames or reshapes one of them fails here, by name, rather than inside a run.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer import call
from torch.utils.data import DataLoader, TensorDataset

from lightning_curate.utils import compat


def parameters(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def test_lightning_sets_the_hook_name_the_mixin_fast_paths():
    module = L.LightningModule()
    assert compat.HOOK_NAME_ATTRIBUTE in vars(module), "LightningModule no longer keeps _current_fx_name"
    assert compat.HOOK_NAME_ATTRIBUTE in inspect.getsource(call._call_lightning_module_hook), \
        "Lightning's hook caller no longer sets _current_fx_name: FastHookName skips nothing"


def test_the_hook_name_mixin_keeps_other_attributes_registered():
    class Module(compat.FastHookName, L.LightningModule):
        pass

    module = Module()
    module._current_fx_name = "training_step"
    module.layer = torch.nn.Linear(2, 2)  # still nn.Module's __setattr__: a registered submodule
    assert module._current_fx_name == "training_step" and "layer" in dict(module.named_children())
    assert "_current_fx_name" not in module._modules and "_current_fx_name" not in module._parameters


def test_model_checkpoint_internals_exist_with_their_signatures(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=7)
    assert compat.saves_every_n_train_steps(checkpoint) == 7
    assert compat.saves_every_n_train_steps(ModelCheckpoint(dirpath=tmp_path)) == 0
    assert hasattr(checkpoint, "_last_global_step_saved")
    assert parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]


def test_progress_bar_internals_exist():
    bar = TQDMProgressBar(leave=True)
    assert compat.progress_bar_leaves(bar) is True and compat.progress_bar_leaves(TQDMProgressBar()) is False
    assert compat.train_progress_bar(bar) is None  # not made yet: the public property would raise
    with pytest.raises(TypeError):
        bar.train_progress_bar


def test_torch_foreach_kernels():
    dst, src = [torch.zeros(3), torch.ones(2)], [torch.full((3,), 4.0), torch.full((2,), 3.0)]
    compat.foreach_lerp_(dst, src, 0.25)
    assert dst[0].tolist() == [1.0, 1.0, 1.0] and dst[1].tolist() == [1.5, 1.5]
    compat.foreach_copy_(dst, src)
    assert all(torch.equal(d, s) for d, s in zip(dst, src))


def test_set_unregistered_keeps_a_net_out_of_the_module_tree():
    owner, net = torch.nn.Module(), torch.nn.Linear(2, 2)
    compat.set_unregistered(owner, "_net", net)
    assert owner._net is net and not list(owner.children()) and not owner.state_dict()


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen_trainer = None

    def training_step(self, batch, batch_idx):
        self.seen_trainer = compat.attached_trainer(self)
        loss = self.layer(batch[0]).pow(2).mean()
        compat.set_epoch_metric(self.trainer, "probe", loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Probe(Callback):
    """Reads the fit loop's counters at each epoch's end; changes max_epochs at fit start."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs, self.ready, self.metrics = max_epochs, [], []

    def on_fit_start(self, trainer, pl_module):
        compat.set_max_epochs(trainer, self.max_epochs)

    def on_train_epoch_end(self, trainer, pl_module):
        self.ready.append(compat.epoch_batches_ready(trainer))
        self.metrics.append(("probe" in trainer.callback_metrics, "probe" in trainer.progress_bar_metrics))


class LastEveryEpoch(ModelCheckpoint):
    """save_top_k 0: nothing but what save_last_if_unsaved writes."""

    def on_train_epoch_end(self, trainer, pl_module):
        compat.save_last_if_unsaved(self, trainer)
        self.saved_at = getattr(self, "saved_at", []) + [self._last_global_step_saved]


def test_the_trainer_internals_behave_as_the_loop_relies_on(tmp_path: Path):
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)  # 3 batches an epoch
    module, probe = Tiny(), Probe(max_epochs=2)
    checkpoint = LastEveryEpoch(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[probe, checkpoint], default_root_dir=tmp_path)
    assert compat.attached_trainer(module) is None
    trainer.fit(module, data)
    assert module.seen_trainer is trainer
    assert trainer.current_epoch == 2 and trainer.global_step == 6  # max_epochs 5 -> 2 at fit start
    assert probe.ready == [3, 3]  # every batch of the epoch counted, at its end
    assert probe.metrics == [(True, True), (True, True)]
    assert (tmp_path / "last.ckpt").is_file() and checkpoint.saved_at == [3, 6]


def test_the_lightning_helpers_imported_from_unexported_modules_exist():
    """``is_overridden`` (lightning.pytorch.utilities.model_helpers, not in utilities' ``__all__``): the
    grouped-steps backward shortcut asks it whether a backward hook is overridden."""
    from lightning.pytorch.utilities.model_helpers import is_overridden

    assert parameters(is_overridden)[:3] == ["method_name", "instance", "parent"]

    class Hooked(L.LightningModule):
        def on_after_backward(self):
            pass

    assert is_overridden("on_after_backward", Hooked(), L.LightningModule)
    assert not is_overridden("on_before_backward", Hooked(), L.LightningModule)


class CountingData(L.LightningDataModule):
    """Asks to be loaded again ``every`` epochs after each load, from inside ``train_dataloader``."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every, self.loaded_at = every, []

    def train_dataloader(self):
        self.loaded_at.append(self.trainer.current_epoch)
        compat.set_reload_every_n_epochs(self.trainer, self.every)
        return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=4)


def test_the_fit_loop_reads_a_reload_interval_changed_during_fit(tmp_path: Path):
    """The blending data module sets the interval as it loads a round's data; the loop must honour it."""
    data = CountingData(every=2)
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(Tiny(), datamodule=data)
    assert data.loaded_at == [0, 2, 4]
