"""load_run: a finished run opened again from its own config and checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from run_configs import tiny_config, tree_digest, write_config

from lightning_curate.cli import main as curate
from lightning_curate.experiments import SavedRun, load_run
from lightning_curate.loop import CurationModule


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("saved_run")
    cfg = tiny_config(root / "run", rounds=1)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    curate(["fit", "-c", str(write_config(root / "tiny.yaml", cfg))])
    return root / "run"


def test_the_run_is_rebuilt_with_the_checkpoints_weights(finished_run):
    before = tree_digest(finished_run)
    run = load_run(finished_run)
    assert isinstance(run, SavedRun) and isinstance(run.module, CurationModule)
    assert run.checkpoint == finished_run / "checkpoints" / "last.ckpt"
    saved = run.state["state_dict"]
    weights = run.module.state_dict()
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], weights[k]) for k in saved)
    assert run.config["model"]["init_args"]["num_slots"] == 600 and run.datamodule.batch_size == 128
    assert tree_digest(finished_run) == before  # only read


def test_bad_run_directories_are_named(finished_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {}}))
    with pytest.raises(ValueError, match="expected the model and data sections"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*last.ckpt does not exist"):
        load_run(tmp_path)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((finished_run / "checkpoints" / "last.ckpt").read_bytes()[:4000])
    with pytest.raises(ValueError, match="truncated or damaged"):
        load_run(tmp_path, truncated)
