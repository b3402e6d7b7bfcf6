"""Several optimizer steps per Lightning batch: the same training, bit for bit, with less per-batch work."""

import copy
import csv
import types

import pytest
import torch
from loop_helpers import build_module
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.cli import main
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
    assert all(torch.equal(adam_one[i]["exp_avg_sq"], adam_grouped[i]["exp_avg_sq"]) for i in adam_one)
    assert one_rows == grouped_rows and len(one_rows) == 3
    # Every step's loss and every epoch's mean are logged at the same step, whatever the grouping.
    assert one_losses == grouped_losses
    assert len(one_losses) == one["global_step"] + 3 + 2 * 2  # log_every_n_steps: 1, and 7 epochs


def _module(steps_per_batch):
    return build_module(ClippedDistanceReward(dataset="mog8", targets=[0, 1]), steps_per_batch=steps_per_batch)


def test_grouped_steps_refuse_several_processes():
    module = _module(4)
    assert not module.automatic_optimization and _module(1).automatic_optimization
    module._trainer = types.SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"steps_per_batch=4 runs on one process .* got 2: use steps_per_batch: 1"):
        module.on_fit_start()


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
