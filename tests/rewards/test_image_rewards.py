"""Classifier rewards against hand-computed values, lazy checkpoint loading, device following."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_curate.classifiers import ClassifierModule, SmallCNN, load_classifier
from lightning_curate.rewards.base import RewardModel
from lightning_curate.rewards.classifier import ClassProbabilityReward, ConfidenceReward, LogProbabilityReward


def identity_classifier() -> nn.Module:
    """Images [n, 3, 1, 1] -> logits = the three pixel values (a Linear with identity weights)."""
    linear = nn.Linear(3, 3)
    with torch.no_grad():
        linear.weight.copy_(torch.eye(3))
        linear.bias.zero_()
    return nn.Sequential(nn.Flatten(), linear)


# Logits log(1, 2, 3), log(4, 4, 2), (0, 0, 0): softmax (1/6, 1/3, 1/2), (0.4, 0.4, 0.2), (1/3, 1/3, 1/3).
IMAGES = torch.log(torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 2.0], [1.0, 1.0, 1.0]]))[:, :, None, None]
PROBS = torch.tensor([[1 / 6, 1 / 3, 1 / 2], [0.4, 0.4, 0.2], [1 / 3, 1 / 3, 1 / 3]])


def test_class_probability_reward_is_gamma_times_q_c():
    reward = ClassProbabilityReward(classifier=identity_classifier(), target_class=0, gamma=5.0)
    assert isinstance(reward, RewardModel)
    r = reward(IMAGES)
    assert r.shape == (3,) and r.dtype == torch.float32
    torch.testing.assert_close(r, 5.0 * PROBS[:, 0])
    torch.testing.assert_close(ClassProbabilityReward(classifier=identity_classifier(), target_class=2,
                                                      gamma=1.0)(IMAGES), PROBS[:, 2])


def test_confidence_reward_is_gamma_times_max_q():
    reward = ConfidenceReward(classifier=identity_classifier(), gamma=5.0)
    torch.testing.assert_close(reward(IMAGES), 5.0 * torch.tensor([1 / 2, 0.4, 1 / 3]))


def test_log_probability_reward_is_gamma_times_log_q_c():
    reward = LogProbabilityReward(classifier=identity_classifier(), target_class=2)
    assert reward.gamma == 1.0
    torch.testing.assert_close(reward(IMAGES), torch.tensor([math.log(0.5), math.log(0.2), math.log(1 / 3)]))


@pytest.mark.parametrize("cls,kwargs", [(ClassProbabilityReward, {"target_class": 1}), (ConfidenceReward, {}),
                                        (LogProbabilityReward, {"target_class": 1})])
def test_gamma_scales_and_batching_does_not_change_rewards(cls, kwargs):
    torch.manual_seed(0)
    x = torch.randn(11, 3, 1, 1)
    base = cls(classifier=identity_classifier(), gamma=1.0, **kwargs)(x)
    torch.testing.assert_close(cls(classifier=identity_classifier(), gamma=2.5, **kwargs)(x), 2.5 * base)
    torch.testing.assert_close(cls(classifier=identity_classifier(), gamma=1.0, batch_size=4, **kwargs)(x), base,
                               rtol=0, atol=0)
    assert cls(classifier=identity_classifier(), **kwargs)(x[:0]).shape == (0,)


def test_rewards_are_ordinary_tensors_and_need_no_grad():
    reward = ClassProbabilityReward(classifier=identity_classifier())
    x = IMAGES.clone().requires_grad_(True)
    r = reward(x)
    assert not r.requires_grad and not r.is_inference()
    r.add_(1.0)  # callers may edit rewards in place
    with torch.inference_mode():
        assert reward(IMAGES).shape == (3,)


def test_argument_errors():
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        ClassProbabilityReward()
    with pytest.raises(ValueError, match="exactly one of checkpoint"):
        ConfidenceReward(checkpoint="a.ckpt", classifier=identity_classifier())
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError, match="target_class"):
            ClassProbabilityReward(classifier=identity_classifier(), target_class=bad)
    # Out of range for a net that states its classes: at construction.
    with pytest.raises(ValueError, match=r"target_class=10 is out of range.*10 classes"):
        ClassProbabilityReward(classifier=SmallCNN(num_classes=10), target_class=10)
    # For a net that does not, at the first call (from the logits' width).
    reward = LogProbabilityReward(classifier=identity_classifier(), target_class=3)
    with pytest.raises(ValueError, match=r"target_class=3 is out of range.*3 classes"):
        reward(IMAGES)
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        ConfidenceReward(classifier=identity_classifier(), gamma=math.inf)
    with pytest.raises(ValueError, match="logits"):
        ConfidenceReward(classifier=nn.Flatten(0))(IMAGES)


def test_missing_checkpoint_is_reported_lazily_with_the_command(tmp_path):
    missing = tmp_path / "digits_classifier.ckpt"
    reward = ClassProbabilityReward(checkpoint=str(missing), target_class=0)  # configs parse before training
    assert not reward.loaded
    with pytest.raises(FileNotFoundError) as err:
        reward(torch.zeros(2, 1, 8, 8))
    assert str(missing) in str(err.value) and "lightning-curate fit -c configs/digits_classifier.yaml" in str(err.value)
    custom = ConfidenceReward(checkpoint=str(missing),
                              train_hint="lightning-curate fit -c configs/cifar10_classifier.yaml")
    with pytest.raises(FileNotFoundError, match="cifar10_classifier.yaml"):
        custom.check()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real ClassifierModule checkpoint written by a Lightning Trainer (a few steps on random images)."""
    tmp = tmp_path_factory.mktemp("reward_ckpt")
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(SmallCNN(width=4, num_classes=5), lr=1e-2)
    data = TensorDataset(torch.rand(32, 1, 8, 8) * 2 - 1, torch.randint(0, 5, (32,)))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
    trainer.fit(module, DataLoader(data, batch_size=16))
    path = tmp / "clf.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_lazy_load_matches_the_classifier_and_stays_out_of_the_state_dict(checkpoint):
    net = load_classifier(checkpoint)
    x = torch.rand(9, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        q = torch.softmax(net(x), dim=1)
    reward = ClassProbabilityReward(checkpoint=str(checkpoint), target_class=3, gamma=5.0)
    holder = nn.ModuleDict({"reward": reward})  # as a LightningModule holds it
    before = holder.state_dict()
    torch.testing.assert_close(reward(x), 5.0 * q[:, 3])
    assert reward.loaded
    # Loading did not change what a run's checkpoint holds, and adds no trainable parameters.
    assert holder.state_dict().keys() == before.keys()
    assert [n for n, _ in holder.named_parameters()] == []
    torch.testing.assert_close(ConfidenceReward(checkpoint=str(checkpoint), gamma=2.0)(x), 2.0 * q.amax(1))
    torch.testing.assert_close(LogProbabilityReward(checkpoint=str(checkpoint), target_class=4)(x),
                               torch.log(q[:, 4]))


def test_target_class_is_checked_against_the_checkpoint(checkpoint):
    reward = ClassProbabilityReward(checkpoint=str(checkpoint), target_class=5)
    with pytest.raises(ValueError, match=r"target_class=5 is out of range.*5 classes"):
        reward.check()


def test_classifier_stays_in_eval_mode(checkpoint):
    reward = ConfidenceReward(checkpoint=str(checkpoint)).check()
    reward.train()
    assert not reward.classifier.training
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    torch.testing.assert_close(reward(x), reward(x), rtol=0, atol=0)  # no dropout, no batch-norm updates


def test_classifier_follows_the_reward_and_the_input(checkpoint):
    # .to() before the lazy load is applied when the classifier is loaded ...
    reward = ClassProbabilityReward(checkpoint=str(checkpoint), target_class=1).to(torch.float64)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    r = reward(x)
    assert next(reward.classifier.parameters()).dtype == torch.float64 and r.dtype == torch.float32
    # ... and after it, like a submodule.
    reward.to(torch.float32)
    assert next(reward.classifier.parameters()).dtype == torch.float32
    # Each call moves the classifier to the input's device (meta: shapes only, no data).
    out = reward(torch.empty(4, 1, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (4,)
    assert next(reward.classifier.parameters()).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_classifier_follows_to_cuda(checkpoint):  # pragma: no cover - CPU CI
    reward = ClassProbabilityReward(checkpoint=str(checkpoint), target_class=1)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    expected = reward(x)
    reward.cuda()
    assert next(reward.classifier.parameters()).is_cuda
    got = reward(x.cuda())
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-5)
    lazy = ClassProbabilityReward(checkpoint=str(checkpoint), target_class=1).cuda()
    assert next(lazy.check().classifier.parameters()).is_cuda


def test_prepare_loads_an_existing_checkpoint_and_names_the_command_for_a_missing_one(checkpoint, tmp_path):
    reward = ConfidenceReward(checkpoint=str(checkpoint), train_config="configs/never_run.yaml")
    assert reward.prepare() is reward and reward.loaded  # it exists: nothing is trained
    missing = str(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="lightning-curate fit -c configs/digits_classifier.yaml"):
        ClassProbabilityReward(checkpoint=missing).prepare()
    # With a train_config, the error of a lazy load names that config's command.
    named = ClassProbabilityReward(checkpoint=missing, train_config="configs/cifar10_classifier.yaml")
    assert named.train_hint == "lightning-curate fit -c configs/cifar10_classifier.yaml"
    with pytest.raises(FileNotFoundError, match="cifar10_classifier.yaml"):
        named.check()
    with pytest.raises(ValueError, match="train_config needs a checkpoint"):
        ConfidenceReward(classifier=identity_classifier(), train_config="configs/digits_classifier.yaml")
    given = ConfidenceReward(classifier=identity_classifier())
    assert given.prepare() is given  # a module given directly: nothing to prepare
