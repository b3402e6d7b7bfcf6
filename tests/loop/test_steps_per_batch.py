"""Several optimizer steps per Lightning batch: the same training, bit for bit, with less per-batch work."""

import copy
import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from loop_helpers import build_module
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.data.blending import BatchGroup
from lightning_curate.loop.training import TrainingSetupError
from lightning_curate.rewards import ClippedDistanceReward

TIMING_COLUMNS = ("time_", "seconds")


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _run(tmp_path, name, steps_per_batch):
    cfg = tiny_config(tmp_path / name, rounds=2, steps_per_batch=steps_per_batch)
    del cfg["trainer"]["limit_train_batches"]  # it would count groups: compare whole epochs
    main(["fit", "-c", str(write_config(tmp_path / f"{name}.yaml", cfg))])
    last = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    rows = [{k: v for k, v in row.items() if not any(t in k for t in TIMING_COLUMNS)}
            for row in read_rows(tmp_path / name)]
    losses = [(key, r["epoch"], r["step"], r[key]) for r in read_csv(tmp_path / name / "metrics.csv")
              for key in ("train/loss_step", "train/loss_epoch") if r.get(key)]
    return last, rows, losses


def test_grouped_steps_train_the_same_weights_as_one_step_per_batch(tmp_path):
    # 2,000 real rows at batch 128 are 16 batches an epoch: groups of 3 end with a short one.
    one, one_rows, one_losses = _run(tmp_path, "one", 1)
    grouped, grouped_rows, grouped_losses = _run(tmp_path, "grouped", 3)
    assert one["global_step"] == grouped["global_step"] == 3 * 16 + 2 * 2 * 5  # optimizer steps
    state_one, state_grouped = one["state_dict"], grouped["state_dict"]
    assert state_one.keys() == state_grouped.keys()
    for key in state_one:  # live and EMA weights
        assert torch.equal(state_one[key], state_grouped[key]), key
    adam_one = one["optimizer_states"][0]["state"]
    adam_grouped = grouped["optimizer_states"][0]["state"]
    assert all(torch.equal(adam_one[i][k], adam_grouped[i][k]) for i in adam_one for k in adam_one[i])
    assert one_rows == grouped_rows and len(one_rows) == 3
    # Every step's loss and every epoch's mean are logged at the same step, whatever the grouping.
    assert one_losses == grouped_losses
    assert len(one_losses) == one["global_step"] + 3 + 2 * 2  # log_every_n_steps: 1, and 7 epochs


def _module(steps_per_batch):
    return build_module(ClippedDistanceReward(dataset="mog8", targets=[0, 1]), steps_per_batch=steps_per_batch)


@pytest.mark.parametrize("saved, now, refused", [(1, 4, True), (4, 1, True), (4, 8, False), (1, 1, False)])
def test_a_resume_may_not_switch_between_one_and_several_steps(saved, now, refused):
    checkpoint = {"hyper_parameters": {"steps_per_batch": saved}}
    module = _module(now)
    if refused:
        with pytest.raises(ValueError, match=f"trained with steps_per_batch={saved}, the config says {now}"):
            module.on_load_checkpoint(copy.deepcopy(checkpoint))
    else:
        module.on_load_checkpoint(checkpoint)


def test_bad_steps_per_batch_is_named():
    with pytest.raises(ValueError, match="steps_per_batch"):
        _module(0)


class _Batches:
    """Fixed batches as one loader (a plain list would be taken for several loaders)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def _fit(module, tmp_path, max_steps=-1, callbacks=(), batches=None):
    """Fit ``module`` on 40 fixed grouped batches of 2-D points (no data module)."""
    gen = torch.Generator().manual_seed(1)
    data = [torch.randn(16, 2, generator=gen) for _ in range(40)]
    G = module.steps_per_batch
    items = batches if batches is not None else ([BatchGroup(data[i:i + G]) for i in range(0, 40, G)]
                                                 if G > 1 else data)
    loader = _Batches(items)
    trainer = L.Trainer(max_epochs=1, max_steps=max_steps, logger=False, enable_checkpointing=bool(callbacks),
                        callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    torch.manual_seed(5)  # the losses' draws: the same stream for every module fitted here
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_grouped_steps_stop_at_max_steps_exactly(tmp_path):
    one, grouped = _module(1), _module(3)
    assert _fit(one, tmp_path / "a", max_steps=10).global_step == 10
    assert _fit(grouped, tmp_path / "b", max_steps=10).global_step == 10  # not 12: the group is cut
    for a, b in zip(one.generator.state_dict().values(), grouped.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_grouped_steps_refuse_a_learning_rate_scheduler(tmp_path):
    module = _module(4)
    optimizer = module.configure_optimizers()
    module.configure_optimizers = lambda: {"optimizer": optimizer,
                                           "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 2)}
    with pytest.raises(TrainingSetupError, match="does not step learning-rate schedulers"):
        _fit(module, tmp_path)


def test_grouped_steps_refuse_checkpoints_every_n_train_steps(tmp_path):
    with pytest.raises(TrainingSetupError, match="every_n_train_steps"):
        _fit(_module(4), tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)])


def test_grouped_steps_refuse_a_plain_list_batch(tmp_path):
    """An (x, y) list from another loader is not a group of batches: refused, never stepped on."""
    gen = torch.Generator().manual_seed(1)
    pairs = [[torch.randn(16, 2, generator=gen), torch.randn(16, 2, generator=gen)] for _ in range(4)]
    with pytest.raises(TypeError, match="trains on BatchGroup batches .* got a list"):
        _fit(_module(2), tmp_path, batches=pairs)


class _GradientNorms(L.Callback):
    """A callback that reads every step's gradients, as a gradient-norm logger would."""

    def __init__(self):
        self.norms = []

    def on_after_backward(self, trainer, pl_module):
        self.norms.append(float(torch.cat([p.grad.flatten() for p in pl_module.generator.velocity.parameters()])
                                .norm()))


def test_backward_hooks_still_run_every_step_under_grouped_steps(tmp_path):
    plain = _module(4)
    _fit(plain, tmp_path / "plain")
    assert plain._backward is torch.Tensor.backward  # nothing to call around it: the plain backward
    hooked, norms = _module(4), _GradientNorms()
    trainer = _fit(hooked, tmp_path / "hooked", callbacks=[norms])
    assert hooked._backward is None  # manual_backward, with the hooks
    assert len(norms.norms) == trainer.global_step == 40 and all(n > 0 for n in norms.norms)
    for a, b in zip(plain.generator.state_dict().values(), hooked.generator.state_dict().values()):
        assert torch.equal(a, b)  # the same training either way


def test_grouped_steps_give_monitors_and_the_bar_the_epoch_loss(tmp_path):
    """train/loss_epoch reaches callback_metrics (what ModelCheckpoint and EarlyStopping read) and the
    progress bar, with the value of one step a batch, and a monitored checkpoint picks the best epoch."""
    results = {}
    for G in (1, 4):
        best = ModelCheckpoint(dirpath=tmp_path / f"ckpt{G}", monitor="train/loss_epoch", mode="min")
        trainer = _fit(_module(G), tmp_path / f"run{G}", callbacks=[best])
        results[G] = (trainer.callback_metrics["train/loss_epoch"], trainer.progress_bar_metrics["train/loss_epoch"],
                      best.best_model_score)
    assert torch.equal(results[1][0], results[4][0]) and results[1][1] == results[4][1]
    assert torch.equal(results[4][2], results[4][0])  # the one epoch's loss is the best score
