"""ClassifierModule and ClassifierDataModule: Lightning training on the real 8x8 digits, and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from classifier_data import SklearnDigits, Unlabelled
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_curate.classifiers import (
    ClassifierDataModule,
    ClassifierModule,
    MLPClassifier,
    SmallCNN,
    load_classifier,
    net_file_path,
    random_shift,
)


def _trainer(tmp_path: Path, max_epochs: int, callbacks=(), **kwargs) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=bool(callbacks), callbacks=list(callbacks), enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                     deterministic=True, **kwargs)


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


def test_trained_checkpoint_loads_as_the_trained_net(trained_digits):
    """The ModelCheckpoint of a fit also wrote the net file; the loaded net is the module's net, bit for bit."""
    module, _, path, _ = trained_digits
    assert net_file_path(path) == path.with_name("digits.ckpt.net.safetensors") and net_file_path(path).is_file()
    net = load_classifier(str(path))
    assert isinstance(net, SmallCNN) and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = SklearnDigits().load().heldout[:50]
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)
        torch.testing.assert_close(net.features(x), module.net.features(x), rtol=0, atol=0)
    record = torch.load(path, weights_only=True)["classifier_net"]  # the description, also in the .ckpt
    assert record == {"format": 2, "class_path": "lightning_curate.classifiers.nets.SmallCNN",
                      "init_args": SmallCNN(width=16, dropout=0.1).init_args, "num_classes": 10}


def test_mlp_judge_trains_and_loads(tmp_path):
    L.seed_everything(1, verbose=False)
    module = ClassifierModule(MLPClassifier(64, 10, hidden=128, depth=2), lr=3e-3)
    trainer = _trainer(tmp_path, max_epochs=8)
    trainer.fit(module, ClassifierDataModule(SklearnDigits(), batch_size=64, seed=1))
    assert float(trainer.callback_metrics["val/acc"]) > 0.9
    trainer.save_checkpoint(tmp_path / "judge.ckpt")  # a manual save writes the net file too
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
    assert net_file_path(path).is_file()
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, saved[f"net.{name}"], rtol=0, atol=0)
    # The Lightning way gives the same network.
    module = ClassifierModule.load_from_checkpoint(path, net=SmallCNN(width=8, image_size=8))
    module.eval()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)
