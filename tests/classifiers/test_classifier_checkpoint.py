"""Classifier checkpoints: the safetensors net file, what it may name, and hostile files that must run nothing."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from lightning_curate.classifiers import (
    DEFAULT_TRAIN_HINT,
    ClassifierModule,
    MLPClassifier,
    RebuildableNet,
    SmallCNN,
    TrainedClassifier,
    ensure_checkpoint,
    load_classifier,
    net_file_path,
    save_classifier,
)
from lightning_curate.rewards import ClassProbabilityReward

META = "lightning_curate.classifier"


class TinyNet(RebuildableNet):
    """A user's own net class: outside lightning_curate, so a checkpoint may name it only when trusted."""

    def __init__(self, in_features: int = 4, num_classes: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.linear = torch.nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.linear(x.flatten(1))


class Payload:
    """A classic malicious pickle: unpickling it runs ``touch <target>``."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return subprocess.call, (["touch", str(self.target)],)


def write_net_file(path: Path, class_path: str, init_args: dict, tensors=None) -> Path:
    """A net file written by hand with safetensors (independently of the code under test)."""
    description = {"format": 2, "class_path": class_path, "init_args": init_args, "num_classes": 2}
    save_file(tensors or {"weight": torch.zeros(2)}, str(path), metadata={META: json.dumps(description)})
    return path


def assert_never_created(target: Path) -> None:
    time.sleep(0.3)  # a process started by mistake would have touched it by now
    assert not target.exists()


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A ClassifierModule fitted for 2 steps on random images, saved by a ModelCheckpoint: (module, ckpt path)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(SmallCNN(width=4, num_classes=5), lr=1e-2)
    data = TensorDataset(torch.rand(32, 1, 8, 8) * 2 - 1, torch.randint(0, 5, (32,)))
    ckpt = ModelCheckpoint(dirpath=tmp, filename="clf", enable_version_counter=False)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp)
    trainer.fit(module, DataLoader(data, batch_size=16))
    return module.eval(), Path(ckpt.best_model_path)


# -- the format ----------------------------------------------------------------------------
def test_net_file_holds_the_checkpoint_weights_and_a_json_description(fitted):
    module, path = fitted
    from safetensors import safe_open

    with safe_open(str(net_file_path(path)), framework="pt") as fh:
        description = json.loads(fh.metadata()[META])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    assert description == {"format": 2, "class_path": "lightning_curate.classifiers.nets.SmallCNN",
                           "init_args": {"in_channels": 1, "num_classes": 5, "width": 4, "image_size": 8,
                                         "dropout": 0.1}, "num_classes": 5}
    saved = torch.load(path, weights_only=True)["state_dict"]  # the .ckpt Lightning wrote, for comparison
    assert set(tensors) == {k[4:] for k in saved if k.startswith("net.")}
    for name, tensor in tensors.items():
        assert torch.equal(tensor, saved[f"net.{name}"]), name


def test_load_rebuilds_the_net_and_accepts_the_net_file_itself(fitted):
    module, path = fitted
    x = torch.rand(6, 1, 8, 8) * 2 - 1
    for source in (path, net_file_path(path)):
        net = load_classifier(source)
        assert isinstance(net, SmallCNN) and not net.training and not any(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            torch.testing.assert_close(net(x), module.net(x), rtol=0, atol=0)


def test_save_classifier_round_trips_a_net_trained_elsewhere(tmp_path):
    torch.manual_seed(0)
    net = MLPClassifier(in_features=16, num_classes=3, hidden=8).eval()
    written = save_classifier(net, tmp_path / "mlp.ckpt")
    assert written == tmp_path / "mlp.ckpt.net.safetensors" and not (tmp_path / "mlp.ckpt").exists()
    loaded = load_classifier(tmp_path / "mlp.ckpt")
    x = torch.randn(5, 16)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)


def test_model_checkpoint_top_k_removes_the_net_file_with_its_ckpt(tmp_path):
    L.seed_everything(0, verbose=False)
    module = ClassifierModule(SmallCNN(width=4, num_classes=2), lr=1e-2)
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.arange(8) % 2)
    ckpt = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=1)
    L.Trainer(max_epochs=3, accelerator="cpu", logger=False, callbacks=[ckpt], enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path).fit(module, DataLoader(data, batch_size=8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=2.ckpt", "epoch=2.ckpt.net.safetensors"]


# -- errors --------------------------------------------------------------------------------
def test_missing_checkpoint_names_the_path_and_the_command(tmp_path):
    missing = tmp_path / "nope" / "classifier.ckpt"
    with pytest.raises(FileNotFoundError) as err:
        load_classifier(missing)
    assert str(missing) in str(err.value) and DEFAULT_TRAIN_HINT in str(err.value)
    with pytest.raises(FileNotFoundError, match="train the judge: make judge"):
        load_classifier(missing, train_hint="train the judge: make judge")
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_classifier(tmp_path)


def test_a_ckpt_without_its_net_file_is_refused_and_not_trained_over(tmp_path, monkeypatch, fitted):
    _, path = fitted
    old = tmp_path / "old.ckpt"
    old.write_bytes(path.read_bytes())  # a real Lightning checkpoint, but no net file beside it
    with pytest.raises(FileNotFoundError, match=r"old\.ckpt.*no net file .*old\.ckpt\.net\.safetensors.*"
                                                r"never unpickled.*Delete it and train again"):
        load_classifier(old)
    from lightning_curate.classifiers import trained

    monkeypatch.setattr(trained.sys, "executable", "/bin/false")  # training would fail loudly, not like this
    config = tmp_path / "clf.yaml"
    config.write_text("trainer: {}\n")
    with pytest.raises(FileNotFoundError, match=rf"no net file.*lightning-curate fit -c {config}"):
        ensure_checkpoint(old, config)
    assert old.read_bytes() == path.read_bytes()


def test_bad_net_files_are_clear_value_errors(tmp_path, fitted):
    _, path = fitted
    garbage = tmp_path / "garbage.ckpt.net.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match=rf"{garbage.name}.*not a readable safetensors file"):
        load_classifier(tmp_path / "garbage.ckpt")
    bare = tmp_path / "bare.safetensors"
    save_file({"weight": torch.zeros(2)}, str(bare))
    with pytest.raises(ValueError, match=rf"{bare.name}.*no 'lightning_curate.classifier' description"):
        load_classifier(bare)
    with pytest.raises(ValueError, match=rf"{path.name}.*do not fit.*SmallCNN"):
        load_classifier(path, net=SmallCNN(width=8, num_classes=5))  # wrong shapes
    from safetensors import safe_open

    with safe_open(str(net_file_path(path)), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    wrong = write_net_file(tmp_path / "wrong.safetensors", "lightning_curate.classifiers.SmallCNN",
                           {"width": 4, "num_classes": 7}, tensors)
    with pytest.raises(ValueError, match=rf"{wrong.name}.*do not fit"):
        load_classifier(wrong)
    bad_args = write_net_file(tmp_path / "bad_args.safetensors", "lightning_curate.classifiers.SmallCNN",
                              {"width": 0}, tensors)
    with pytest.raises(ValueError, match=rf"{bad_args.name}.*cannot build .*width must be an int >= 1"):
        load_classifier(bad_args)


# -- hostile files -------------------------------------------------------------------------
def test_a_checkpoint_naming_popen_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "X"
    evil = tmp_path / "evil.ckpt"
    write_net_file(net_file_path(evil), "subprocess.Popen", {"args": ["touch", str(target)]})
    before = set(sys.modules)
    with pytest.raises(ValueError) as err:
        load_classifier(evil)
    message = str(err.value)
    assert str(net_file_path(evil)) in message and "'subprocess.Popen'" in message and "refusing" in message
    assert "trusted_classes=['subprocess.Popen']" in message  # how to allow one's own class
    with pytest.raises(ValueError, match="refusing"):
        TrainedClassifier(str(evil)).prepare()
    with pytest.raises(ValueError, match="refusing"):
        ClassProbabilityReward(checkpoint=str(evil)).check()
    assert_never_created(target)
    assert set(sys.modules) == before  # not even a module was imported


@pytest.mark.parametrize("class_path", [
    "os.system",
    "lightning_curate.__main__.main",  # importing it would run the CLI
    "lightning_curate.classifiers.trained.subprocess.Popen",  # a package module's import of Popen
    "lightning_curate.classifiers.load_classifier",  # in the package, but not a net class
    "lightning_curate.classifiers.nets.RebuildableNet.__subclasses__",
])
def test_other_class_paths_outside_the_package_nets_are_refused(tmp_path, class_path):
    target = tmp_path / "X"
    evil = write_net_file(tmp_path / "evil.safetensors", class_path, {"args": ["touch", str(target)],
                                                                      "command": f"touch {target}"})
    before = set(sys.modules)
    with pytest.raises(ValueError, match=rf"evil\.safetensors.*refusing to build the net class '{class_path}'"):
        load_classifier(evil, trusted_classes=[f"{TinyNet.__module__}.TinyNet"])
    assert_never_created(target)
    assert set(sys.modules) == before


def test_a_malicious_pickle_where_a_checkpoint_is_expected_runs_nothing(tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))  # the payload is live: plain unpickling runs it
    assert proof.exists()
    target = tmp_path / "X"
    payload = pickle.dumps(Payload(target))
    as_ckpt = tmp_path / "a.ckpt"
    as_ckpt.write_bytes(payload)
    torch.save({"state_dict": {}, "evil": Payload(target)}, tmp_path / "b.ckpt")  # a torch zip with the payload
    net_file_path(tmp_path / "c.ckpt").write_bytes(payload)  # the payload as the net file itself
    for name in ("a.ckpt", "b.ckpt"):
        with pytest.raises(FileNotFoundError, match=rf"{name}.*never unpickled"):
            load_classifier(tmp_path / name)
        with pytest.raises(FileNotFoundError, match=rf"{name}.*never unpickled"):
            ClassProbabilityReward(checkpoint=str(tmp_path / name)).check()
    with pytest.raises(ValueError, match=r"c\.ckpt\.net\.safetensors.*not a readable safetensors file"):
        load_classifier(tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        TrainedClassifier(str(tmp_path / "c.ckpt")).prepare()
    assert not target.exists()


# -- trusting one's own classes ------------------------------------------------------------
def test_own_net_classes_load_only_when_trusted(tmp_path):
    torch.manual_seed(0)
    net = TinyNet(in_features=4, num_classes=3).eval()
    path = tmp_path / "tiny.ckpt"
    save_classifier(net, path)
    class_path = f"{TinyNet.__module__}.TinyNet"
    with pytest.raises(ValueError, match=rf"refusing to build the net class '{class_path}'"):
        load_classifier(path)
    x = torch.randn(2, 4)
    for trusted in ([class_path], [TinyNet]):
        loaded = load_classifier(path, trusted_classes=trusted)
        assert type(loaded) is TinyNet
        torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    judge = TrainedClassifier(str(path), trusted_classes=[class_path])  # as YAML gives it: a list of strings
    torch.testing.assert_close(judge(x), net(x), rtol=0, atol=0)
    reward = ClassProbabilityReward(checkpoint=str(path), target_class=1, gamma=1.0, trusted_classes=[class_path])
    torch.testing.assert_close(reward(x), torch.softmax(net(x), 1)[:, 1])
    with pytest.raises(ValueError, match="trusted_classes entries must be class paths"):
        load_classifier(path, trusted_classes=["TinyNet"])
    with pytest.raises(TypeError, match="trusted_classes must be a list"):
        load_classifier(path, trusted_classes=class_path)


def test_a_trusted_path_must_be_a_module_class(tmp_path):
    target = tmp_path / "X"
    evil = write_net_file(tmp_path / "evil.safetensors", "os.system", {"command": f"touch {target}"})
    with pytest.raises(ValueError, match=r"evil\.safetensors.*'os\.system' is not a torch\.nn\.Module class"):
        load_classifier(evil, trusted_classes=["os.system"])
    assert_never_created(target)


def test_trusted_classes_come_from_yaml(tmp_path):
    """A config gives the allow-list as a list of strings; jsonargparse builds the reward and the judge with it."""
    from jsonargparse import ArgumentParser
    from torch import nn

    from lightning_curate.rewards import RewardModel

    torch.manual_seed(0)
    net = TinyNet(in_features=4, num_classes=3).eval()
    save_classifier(net, tmp_path / "tiny.ckpt")
    class_path = f"{TinyNet.__module__}.TinyNet"
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward", type=RewardModel)
    parser.add_argument("--judge", type=nn.Module)
    config = {"reward": {"class_path": "lightning_curate.rewards.ConfidenceReward",
                         "init_args": {"checkpoint": str(tmp_path / "tiny.ckpt"), "gamma": 1.0,
                                       "trusted_classes": [class_path]}},
              "judge": {"class_path": "lightning_curate.classifiers.TrainedClassifier",
                        "init_args": {"checkpoint": str(tmp_path / "tiny.ckpt"), "trusted_classes": [class_path]}}}
    built = parser.instantiate_classes(parser.parse_object(config))
    x = torch.randn(3, 4)
    torch.testing.assert_close(built.reward(x), torch.softmax(net(x), 1).amax(1))
    torch.testing.assert_close(built.judge(x), net(x), rtol=0, atol=0)
