"""The image experiments end to end through the CLI, on reduced versions of the shipped configs.

Each test loads a shipped config (``configs/digits*.yaml``, ``configs/cifar10*.yaml``),
shrinks it (tiny UNet, few slots and batches, tiny classifiers written into
``tmp_path``) and runs it with :func:`lightning_curate.cli.main`, so a renamed
class or argument in a config fails here. The first digits run trains its
reward classifier itself (``train_config``: the console script in a
subprocess), as a new user's first run does.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from fakes import make_fake_cifar
from run_configs import read_rows
from torch.utils.data import DataLoader, TensorDataset

from lightning_curate.classifiers import ClassifierModule, SmallCNN, TrainedClassifier, ensure_checkpoint
from lightning_curate.classifiers import trained as classifier_module
from lightning_curate.cli import main
from lightning_curate.data import CIFAR10, Digits
from lightning_curate.rewards.classifier import ClassProbabilityReward
from lightning_curate.store.rounds import RoundStore

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DIGIT_CLASSES = [str(i) for i in range(10)]


def load_config(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def merge_overlay(config: dict, overlay: dict) -> None:
    """Merge a config overlay into ``config`` as a later ``-c`` does (a new class_path drops old init_args)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            if "class_path" in value and value["class_path"] != config[key].get("class_path"):
                config[key] = copy.deepcopy(value)
            else:
                merge_overlay(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def callback(config: dict, suffix: str) -> dict:
    return next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(suffix))


def tiny_classifier_config(name: str, ckpt_dir: Path, run_dir: Path, **net_args) -> dict:
    """A shipped classifier config cut to a few steps, writing ``ckpt_dir/<filename>.ckpt``."""
    cfg = load_config(name)
    trainer = cfg["trainer"]
    trainer.update({"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "default_root_dir": str(run_dir),
                    "enable_progress_bar": False, "check_val_every_n_epoch": 1})
    callback(cfg, "ModelCheckpoint")["init_args"]["dirpath"] = str(ckpt_dir)
    cfg["model"]["init_args"]["net"]["init_args"].update(net_args)
    return cfg


def shrink_run(cfg: dict, run_dir: Path, *, rounds: int, base_channels: int = 8) -> dict:
    """A curated-retraining config cut to seconds: tiny UNet, few slots, few batches."""
    cfg = copy.deepcopy(cfg)
    trainer = cfg["trainer"]
    trainer.update({"default_root_dir": str(run_dir), "accelerator": "cpu", "precision": "32-true",
                    "limit_train_batches": 2, "enable_progress_bar": False, "enable_model_summary": False,
                    "log_every_n_steps": 1})
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RoundProgressBar")]
    callback(cfg, "RetrainingLoop")["init_args"].update({"rounds": rounds, "epochs_per_round": 1,
                                                          "initial_epochs": 1})
    model = cfg["model"]["init_args"]
    gen = model["generator"]["init_args"]
    gen["velocity"]["init_args"].update({"base_channels": base_channels, "channel_mults": [1, 2],
                                         "num_res_blocks": 1, "time_dim": 16, "groups": 4, "dropout": 0.0,
                                         "attention": False})
    gen.update({"steps": 2, "sample_batch_size": 4096})
    model.update({"num_slots": 48, "preview_size": 48, "chunk_size": 8192})
    return cfg


def fit(config_path: Path) -> None:
    main(["fit", "-c", str(config_path)])


# -- digits ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_judge(tmp_path_factory) -> Path:
    """A tiny judge trained through the CLI from configs/digits_judge.yaml (a few steps)."""
    tmp = tmp_path_factory.mktemp("digits_judge")
    cfg = tiny_classifier_config("digits_judge.yaml", tmp / "ckpt", tmp / "run", hidden=32)
    fit(write(tmp / "judge.yaml", cfg))
    path = tmp / "ckpt" / "digits_judge.ckpt"
    assert path.is_file()
    return path


def digits_run_config(run_dir: Path, reward_ckpt: Path, judge_ckpt: Path, reward_config: Path | None,
                      name: str = "digits.yaml", rounds: int = 2) -> dict:
    cfg = shrink_run(load_config(name), run_dir, rounds=rounds)
    reward = cfg["model"]["init_args"]["reward"]["init_args"]
    reward.update({"checkpoint": str(reward_ckpt),
                   "train_config": None if reward_config is None else str(reward_config)})
    judge = cfg["data"]["init_args"]["source"]["init_args"]["judge"]["init_args"]
    judge.update({"checkpoint": str(judge_ckpt), "train_config": None})
    cfg["data"]["init_args"]["batch_size"] = 32
    return cfg


def test_digits_two_rounds_train_the_reward_classifier_first(tmp_path, digits_judge, caplog):
    """The whole digits run from one command: the missing reward checkpoint is trained, then 2 rounds run."""
    reward_ckpt = tmp_path / "ckpt" / "digits_classifier.ckpt"
    reward_cfg = write(tmp_path / "classifier.yaml",
                       tiny_classifier_config("digits_classifier.yaml", tmp_path / "ckpt", tmp_path / "clf_run",
                                              width=4))
    run_dir = tmp_path / "run"
    fit(write(tmp_path / "digits.yaml", digits_run_config(run_dir, reward_ckpt, digits_judge, reward_cfg)))

    said = caplog.text  # the log line that says what is trained and where its checkpoint goes
    assert "training the reward classifier first" in said and f"checkpoint goes to {reward_ckpt}" in said
    assert reward_ckpt.is_file()
    rows = read_rows(run_dir)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    columns = set(rows[0])
    for col in ["reward_mean", "reward_std", "curated_reward_mean", "fid", "precision", "recall",
                *[f"share_{c}" for c in DIGIT_CLASSES]]:
        assert col in columns, col
    for r in rows:
        shares = [float(r[f"share_{c}"]) for c in DIGIT_CLASSES]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
        assert float(r["fid"]) >= 0 and 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
        assert 0 <= float(r["reward_mean"]) <= 5.0
    assert [float(r["real_fraction"]) for r in rows] == [1.0, 0.0, 0.0]
    stored = sorted(p.name for p in (run_dir / "rounds").glob("round_*"))
    assert stored == ["round_000", "round_001", "round_002"]
    manifest = json.loads((run_dir / "rounds" / "round_002" / "manifest.json").read_text())
    assert manifest["row"]["round"] == 2 and "fid" in manifest["row"]
    assert (run_dir / "samples.png").is_file() and (run_dir / "round_metrics.png").is_file()


def test_digits_configs_differ_only_where_they_should():
    base = load_config("digits.yaml")
    assert base["model"]["init_args"]["num_candidates"] == 4
    reward = base["model"]["init_args"]["reward"]
    assert reward["class_path"].endswith("ClassProbabilityReward")
    assert reward["init_args"]["gamma"] == 5.0 and reward["init_args"]["target_class"] == 0
    assert callback(base, "RetrainingLoop")["init_args"]["rounds"] >= 5
    assert base["model"]["init_args"]["generator"]["init_args"]["velocity"]["class_path"].endswith("UNetVelocity")
    # The variants are overlays on digits.yaml; tests/e2e/test_configs.py checks the composed configs in full.
    expected = {"digits": ([], "ClassProbabilityReward", 0.0),
                "digits_real": (["digits_real"], "ClassProbabilityReward", 0.5),
                "digits_confidence": (["digits_confidence"], "ConfidenceReward", 0.0),
                "digits_confidence_real": (["digits_confidence", "digits_confidence_real"], "ConfidenceReward", 0.5)}
    for name, (overlays, reward_cls, rho) in expected.items():
        cfg = copy.deepcopy(base)
        for overlay in overlays:
            merge_overlay(cfg, load_config(f"overlays/{overlay}.yaml"))
        assert cfg["model"]["init_args"]["reward"]["class_path"].endswith(reward_cls), name
        assert cfg["model"]["init_args"]["reward"]["init_args"]["gamma"] == 5.0, name
        assert cfg["data"]["init_args"]["real_fraction"] == rho, name
        assert cfg["model"]["init_args"]["generator"] == base["model"]["init_args"]["generator"], name
        assert cfg["data"]["init_args"]["source"] == base["data"]["init_args"]["source"], name
        assert cfg["trainer"]["default_root_dir"] == f"runs/{name}", name


def test_missing_checkpoint_without_train_config_names_the_command(tmp_path, digits_judge, capsys):
    missing = tmp_path / "nowhere" / "digits_classifier.ckpt"
    cfg = digits_run_config(tmp_path / "run", missing, digits_judge, reward_config=None)
    with pytest.raises(SystemExit) as err:
        fit(write(tmp_path / "digits.yaml", cfg))
    # The CLI refuses before anything is written (status 2), with one line that names the file and the
    # command to make it.
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert message.startswith("error: ") and str(missing) in message
    assert "lightning-curate fit -c configs/digits_classifier.yaml" in message
    assert not (tmp_path / "run" / "rounds").exists() or not any((tmp_path / "run" / "rounds").iterdir())

    judge = TrainedClassifier(str(missing))
    with pytest.raises(FileNotFoundError, match="lightning-curate fit -c"):
        Digits(judge=judge).prepare()
    with pytest.raises(FileNotFoundError, match=r"lightning-curate fit -c my/judge\.yaml"):
        TrainedClassifier(str(missing), train_hint="lightning-curate fit -c my/judge.yaml")(torch.zeros(1, 1, 8, 8))


def test_failed_or_misdirected_training_is_a_clear_error(tmp_path, monkeypatch):
    config = write(tmp_path / "clf.yaml", {"trainer": {}})
    missing = tmp_path / "clf.ckpt"
    # The training command exits with an error...
    monkeypatch.setattr(classifier_module.sys, "executable", "/bin/false")
    with pytest.raises(RuntimeError, match=r"training the judge failed: `lightning-curate fit -c .*clf\.yaml` "
                                           r"exited with status 1"):
        ensure_checkpoint(missing, config, what="judge")
    # ... or succeeds without writing the checkpoint the run expects.
    monkeypatch.setattr(classifier_module.sys, "executable", "/bin/true")
    with pytest.raises(RuntimeError, match=r"wrote no checkpoint at .*clf\.ckpt"):
        ClassProbabilityReward(checkpoint=str(missing), train_config=str(config)).prepare()
    with pytest.raises(FileNotFoundError, match="training config .*not_there.yaml"):
        ensure_checkpoint(missing, tmp_path / "not_there.yaml")


def test_trained_classifier_is_a_lazy_frozen_judge(digits_judge):
    judge = TrainedClassifier(str(digits_judge))
    assert not judge.loaded and list(judge.parameters()) == [] and judge.state_dict() == {}
    src = Digits(judge=judge)
    src.prepare()  # the checkpoint exists: nothing is trained, the net is loaded
    assert judge.loaded and judge.num_classes == 10 and judge.num_features == 32
    data = src.load()
    labels = src.label(data.heldout)
    assert labels.shape == (data.heldout.shape[0],) and labels.dtype == torch.int64
    judge.train()
    assert not judge.net.training
    metrics = src.sample_metrics(data.heldout, data.heldout)
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0
    noise = src.sample_metrics(torch.rand(200, 1, 8, 8) * 2 - 1, data.heldout)
    assert noise["fid"] > 1.0 and noise["precision"] < 0.5
    assert Digits().sample_metrics(data.heldout, data.heldout) == {}


# -- CIFAR-10 --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar10.yaml", "cifar10_classifier.yaml", "cifar10_judge.yaml"])
def test_cifar10_configs_parse(name, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "-c", str(CONFIGS / name), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    if name == "cifar10.yaml":
        model = printed["model"]["init_args"]
        assert model["num_candidates"] == 4 and model["reward"]["init_args"]["gamma"] == 5.0
        assert model["generator"]["init_args"]["velocity"]["init_args"]["base_channels"] == 128
        loop = next(c for c in printed["trainer"]["callbacks"] if c["class_path"].endswith("RetrainingLoop"))
        assert loop["init_args"]["rounds"] == 10
        assert printed["data"]["init_args"]["source"]["init_args"]["root"] == "data/cifar-10-batches-py"


def tiny_cifar_classifier(path: Path, width: int, seed: int) -> Path:
    """A ClassifierModule checkpoint of a tiny 3-channel SmallCNN (2 steps on random images)."""
    L.seed_everything(seed, verbose=False)
    module = ClassifierModule(SmallCNN(in_channels=3, num_classes=10, width=width, image_size=32), lr=1e-2)
    data = TensorDataset(torch.rand(16, 3, 32, 32) * 2 - 1, torch.arange(16) % 10)
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=path.parent)
    trainer.fit(module, DataLoader(data, batch_size=8))
    trainer.save_checkpoint(path)
    return path


def test_cifar10_reduced_run_on_a_fake_folder(tmp_path):
    """configs/cifar10.yaml, shrunk, runs one round on a fake cifar-10-batches-py folder (pickle format)."""
    folder, _ = make_fake_cifar(tmp_path / "data", n=6)
    reward_ckpt = tiny_cifar_classifier(tmp_path / "reward.ckpt", width=4, seed=0)
    judge_ckpt = tiny_cifar_classifier(tmp_path / "judge.ckpt", width=8, seed=1)
    run_dir = tmp_path / "run"
    cfg = shrink_run(load_config("cifar10.yaml"), run_dir, rounds=1)
    cfg["model"]["init_args"]["reward"]["init_args"].update({"checkpoint": str(reward_ckpt), "train_config": None})
    source = cfg["data"]["init_args"]["source"]["init_args"]
    source["root"] = str(folder)
    source["judge"]["init_args"].update({"checkpoint": str(judge_ckpt), "train_config": None})
    cfg["data"]["init_args"]["batch_size"] = 8
    cfg["model"]["init_args"].update({"num_slots": 8, "preview_size": 8})
    fit(write(tmp_path / "cifar10.yaml", cfg))

    rows = read_rows(run_dir)
    assert [int(r["round"]) for r in rows] == [0, 1]
    source = CIFAR10(str(folder))
    source.load()
    for col in ["fid", "precision", "recall", "reward_mean", *[f"share_{c}" for c in source.class_names]]:
        assert col in rows[0], col
    assert int(rows[0]["n_real"]) == 5 * 6  # five training batches of 6 images, the test batch held out
    record = RoundStore(run_dir / "rounds").read(1)
    assert tuple(record.tensors["x"].shape) == (8, 3, 32, 32)
