"""Classifier nets, their Lightning training on the real 8x8 digits, and checkpoint loading by path."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_curate.classifiers.classifier import CHECKPOINT_KEY, DEFAULT_TRAIN_HINT, ClassifierDataModule, ClassifierModule, MLPClassifier, RebuildableNet, SmallCNN, load_classifier, random_shift
from lightning_curate.data.source import DataSource, RealData


class SklearnDigits(DataSource):
    """The 1,797 real 8x8 digits from scikit-learn, in [-1, 1], shape [n, 1, 8, 8]; a fixed 80/20 split."""

    class_names = [str(i) for i in range(10)]

    def load(self) -> RealData:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x = torch.from_numpy(bunch.images.astype(np.float32))[:, None] / 8.0 - 1.0
        y = torch.from_numpy(bunch.target).long()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        train, held = perm[:1437], perm[1437:]
        return RealData(train=x[train], heldout=x[held], train_labels=y[train], heldout_labels=y[held])


class Unlabelled(DataSource):
    def load(self) -> RealData:
        return RealData(train=torch.zeros(8, 1, 8, 8), heldout=torch.zeros(4, 1, 8, 8))


def _trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=bool(callbacks), callbacks=list(callbacks), enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                     deterministic=True, **kwargs)


# -- nets -----------------------------------------------------------------------
@pytest.mark.parametrize("channels,size,width,expected_features", [(1, 8, 32, 64), (3, 32, 16, 128), (3, 32, 8, 64)])
def test_small_cnn_shapes_and_features(channels, size, width, expected_features):
    torch.manual_seed(0)
    net = SmallCNN(in_channels=channels, num_classes=10, width=width, image_size=size).eval()
    x = torch.rand(5, channels, size, size) * 2 - 1
    logits, feats = net(x), net.features(x)
    assert logits.shape == (5, 10) and feats.shape == (5, expected_features) == (5, net.num_features)
    # The head is one linear map of the features (dropout is off in eval mode).
    torch.testing.assert_close(logits, net.head[1](feats))
    with pytest.raises(ValueError, match=rf"\[n, {channels}, H, W\]"):
        net(torch.zeros(2, channels + 1, size, size))


def test_small_cnn_stage_count_follows_image_size():
    pools = lambda net: sum(isinstance(m, nn.MaxPool2d) for m in net.modules())  # noqa: E731
    assert pools(SmallCNN(image_size=8)) == 2  # 8 -> 4 -> 2
    assert pools(SmallCNN(image_size=32, in_channels=3)) == 4  # 32 -> 16 -> 8 -> 4 -> 2
    assert pools(SmallCNN(image_size=28)) == 2  # 28 -> 14 -> 7
    with pytest.raises(ValueError, match="num_classes"):
        SmallCNN(num_classes=1)


def test_mlp_classifier_shapes_and_input_check():
    net = MLPClassifier(in_features=64, num_classes=10, hidden=32, depth=3).eval()
    x = torch.randn(4, 1, 8, 8)
    assert net(x).shape == (4, 10) and net.features(x).shape == (4, 32) and net.num_features == 32
    with pytest.raises(ValueError, match="64 values per sample"):
        net(torch.randn(4, 3, 8, 8))


def test_nets_record_their_constructor_arguments():
    assert SmallCNN(width=8).init_args == {"in_channels": 1, "num_classes": 10, "width": 8, "image_size": 8,
                                           "dropout": 0.1}
    assert MLPClassifier(10, 3, hidden=16).init_args == {"in_features": 10, "num_classes": 3, "hidden": 16,
                                                         "depth": 2, "dropout": 0.0}

    class Wider(SmallCNN):  # a subclass with its own signature records its own arguments
        def __init__(self, factor: int = 2, **kwargs):
            super().__init__(width=8 * factor, **kwargs)

    assert Wider(factor=3, num_classes=4).init_args == {"factor": 3, "num_classes": 4}

    class Holder(RebuildableNet):  # a non-plain argument: not rebuildable from the file alone
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

    assert Holder(nn.Linear(2, 2)).init_args is None


# -- data -----------------------------------------------------------------------
def test_random_shift_is_a_shift_with_black_fill():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    out = random_shift(x, 1, gen)
    padded = nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)
    for i in range(2):
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if torch.equal(out[i], padded[i, :, dy:dy + 5, dx:dx + 5])]
        assert len(matches) == 1
    assert random_shift(x, 0, gen) is x


def test_datamodule_needs_labels_and_serves_the_split():
    with pytest.raises(ValueError, match="labelled"):
        ClassifierDataModule(Unlabelled()).setup("fit")
    dm = ClassifierDataModule(SklearnDigits(), batch_size=100)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 8, 8) and y.dtype == torch.int64
    assert sum(b[0].shape[0] for b in dm.val_dataloader()) == 1797 - 1437
    # The same seed gives the same shuffled order.
    again = next(iter(ClassifierDataModule(SklearnDigits(), batch_size=100).train_dataloader()))
    assert torch.equal(again[0], x)


# -- training and loading -------------------------------------------------------
@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory):
    """SmallCNN trained briefly on the real digits through a Lightning Trainer; its checkpoint path."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("clf")
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(SmallCNN(width=16, dropout=0.1), lr=3e-3)
    ckpt = ModelCheckpoint(dirpath=tmp, filename="digits", save_top_k=1, enable_version_counter=False)
    start = time.perf_counter()
    trainer = _trainer(tmp, max_epochs=6, callbacks=[ckpt])
    trainer.fit(module, ClassifierDataModule(SklearnDigits(), batch_size=64, augment=True))
    elapsed = time.perf_counter() - start
    return module, trainer, Path(ckpt.best_model_path), elapsed


def test_small_cnn_learns_the_real_digits(trained_digits):
    module, trainer, path, elapsed = trained_digits
    assert float(trainer.callback_metrics["val/acc"]) > 0.9
    assert elapsed < 20, f"training took {elapsed:.1f} s"
    # The logged accuracy is the held-out accuracy of the net.
    data = SklearnDigits().load()
    module.eval()
    with torch.no_grad():
        acc = (module(data.heldout).argmax(1) == data.heldout_labels).float().mean()
    assert abs(float(acc) - float(trainer.callback_metrics["val/acc"])) < 1e-6
    assert path.name == "digits.ckpt" and path.is_file()


def test_load_classifier_round_trips_the_checkpoint(trained_digits):
    module, _, path, _ = trained_digits
    net = load_classifier(str(path))
    assert isinstance(net, SmallCNN) and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = SklearnDigits().load().heldout[:50]
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)
        torch.testing.assert_close(net.features(x), module.net.features(x), rtol=0, atol=0)
    record = torch.load(path, weights_only=True)[CHECKPOINT_KEY]
    assert record["class_path"] == "lightning_curate.classifiers.classifier.SmallCNN" and record["num_classes"] == 10


def test_missing_checkpoint_names_the_path_and_the_command(tmp_path):
    missing = tmp_path / "nope" / "classifier.ckpt"
    with pytest.raises(FileNotFoundError) as err:
        load_classifier(missing)
    assert str(missing) in str(err.value) and DEFAULT_TRAIN_HINT in str(err.value)
    assert "lightning-curate fit -c configs/digits_classifier.yaml" in str(err.value)
    with pytest.raises(FileNotFoundError, match="train the judge: make judge"):
        load_classifier(missing, train_hint="train the judge: make judge")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_classifier(tmp_path)


def test_bad_checkpoints_are_clear_value_errors(tmp_path, trained_digits):
    _, _, path, _ = trained_digits
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, plain)
    with pytest.raises(ValueError, match=rf"{plain.name}.*not a checkpoint of .*ClassifierModule"):
        load_classifier(plain)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=rf"{garbage.name}.*not a readable"):
        load_classifier(garbage)
    with pytest.raises(ValueError, match=rf"{path.name}.*do not fit.*SmallCNN"):
        load_classifier(path, net=SmallCNN(width=8))  # wrong shapes
    entry = torch.load(path, weights_only=True)
    entry[CHECKPOINT_KEY]["init_args"]["num_classes"] = 7
    wrong = tmp_path / "wrong.ckpt"
    torch.save(entry, wrong)
    with pytest.raises(ValueError, match=rf"{wrong.name}.*do not fit"):
        load_classifier(wrong)


def test_mlp_judge_trains_and_loads(tmp_path):
    L.seed_everything(1, verbose=False)
    module = ClassifierModule(MLPClassifier(64, 10, hidden=128, depth=2), lr=3e-3)
    trainer = _trainer(tmp_path, max_epochs=8)
    trainer.fit(module, ClassifierDataModule(SklearnDigits(), batch_size=64, seed=1))
    assert float(trainer.callback_metrics["val/acc"]) > 0.9
    trainer.save_checkpoint(tmp_path / "judge.ckpt")
    net = load_classifier(tmp_path / "judge.ckpt")
    assert isinstance(net, MLPClassifier) and net.init_args["hidden"] == 128
    x = torch.rand(7, 1, 8, 8) * 2 - 1
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)


def test_cli_builds_the_net_from_yaml_and_the_checkpoint_rebuilds_it(tmp_path):
    """LightningCLI instantiates the net from YAML; load_classifier rebuilds it from the file alone."""
    from lightning_curate.cli import main

    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1,
            "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"dirpath": str(tmp_path / "ckpt"), "filename": "cli_classifier",
                                         "enable_version_counter": False}}],
        },
        "model": {"class_path": "lightning_curate.classifiers.ClassifierModule",
                  "init_args": {"net": {"class_path": "lightning_curate.classifiers.SmallCNN",
                                        "init_args": {"width": 8, "image_size": 8}}, "lr": 0.003}},
        "data": {"class_path": "lightning_curate.classifiers.ClassifierDataModule",
                 "init_args": {"source": {"class_path": f"{SklearnDigits.__module__}.SklearnDigits"},
                               "batch_size": 32, "augment": True}},
    }
    cfg = tmp_path / "clf.yaml"
    cfg.write_text(yaml.safe_dump(config))
    main(["fit", "-c", str(cfg)])  # returns nothing (the console script exits 0)
    path = tmp_path / "ckpt" / "cli_classifier.ckpt"
    net = load_classifier(path)
    assert isinstance(net, SmallCNN) and net.init_args["width"] == 8
    saved = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"net.{name}"], rtol=0, atol=0)
    # The Lightning way gives the same network.
    module = ClassifierModule.load_from_checkpoint(path, net=SmallCNN(width=8, image_size=8))
    module.eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)
