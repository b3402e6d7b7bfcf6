"""Small run configs and readers of a run directory, shared by the end-to-end tests."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_curate.loop.component_check import CHECK_SAMPLES
from lightning_curate.rewards import ClippedDistanceReward


def tiny_config(run_dir: Path, *, rounds: int = 3, real_fraction: float = 0.0, policy: str = "replace",
                reward: dict | None = None, **model_overrides) -> dict:
    """A run small enough for the test suite: 2D mog8, a small MLP, a few batches per epoch."""
    model = {
        "generator": {
            "class_path": "lightning_curate.models.FlowMatching",
            "init_args": {
                "velocity": {"class_path": "lightning_curate.models.MLPVelocity",
                             "init_args": {"dim": 2, "hidden": 64, "depth": 2}},
                "data_shape": [2], "solver": "euler", "steps": 8, "ema_decay": 0.9,
            },
        },
        "reward": reward or {"class_path": "lightning_curate.rewards.ClippedDistanceReward",
                             "init_args": {"dataset": "mog8", "targets": [0, 1], "radius": 0.5}},
        "num_slots": 600, "num_candidates": 4, "beta": 1.0, "num_winners": 1, "mode": "softmax",
        "lr": 0.003, "preview_size": 300,
    }
    model.update(model_overrides)
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "default_root_dir": str(run_dir),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": "${...default_root_dir}", "name": "", "version": ""}},
            "callbacks": [
                {"class_path": "lightning_curate.loop.RetrainingLoop",
                 "init_args": {"rounds": rounds, "epochs_per_round": 2, "initial_epochs": 3, "seed": 0}},
                {"class_path": "lightning_curate.loop.RoundCheckpoint",
                 "init_args": {"dirpath": "${....default_root_dir}/checkpoints", "save_last": True,
                               "save_top_k": 1}},
            ],
            "limit_train_batches": 4, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "log_every_n_steps": 1,
        },
        "model": {"class_path": "lightning_curate.loop.CurationModule", "init_args": model},
        "data": {"class_path": "lightning_curate.data.BlendingDataModule",
                 "init_args": {"source": {"class_path": "lightning_curate.data.Toy2D",
                                          "init_args": {"name": "mog8", "num_train": 2000, "num_heldout": 500}},
                               "real_fraction": real_fraction, "policy": policy, "batch_size": 128}},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def read_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "rounds.csv") as fh:
        return list(csv.DictReader(fh))


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` by relative name: equal digests mean nothing was touched."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def store_digest(run_dir: Path) -> dict[str, str]:
    rounds = sorted((run_dir / "rounds").glob("round_*"))
    return {r.name: json.loads((r / "manifest.json").read_text())["parts"] for r in rounds}


class CrashAtEpoch(Callback):
    """Raises at the start of ``epoch``: a crash in the middle of a run, for resume tests.

    Configs name it as ``run_configs.CrashAtEpoch`` (the tests folder is on the path)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


class GatedReward(ClippedDistanceReward):
    """``ClippedDistanceReward`` that can hold a run still at a chosen point, for fault injection.

    While the file named by ``$LC_TEST_GATE`` exists (and, if set, the file ``$LC_TEST_GATE_AFTER``
    exists too, e.g. a round's first part), a call writes ``<gate>.reached`` and waits until the gate
    file is removed; ``$LC_TEST_INIT_GATE`` does the same in ``__init__`` (before fit). Without the
    variables it is ``ClippedDistanceReward`` exactly, so a gated run and an ungated one store the same
    rounds. Configs name it ``run_configs.GatedReward``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _wait_at_gate(os.environ.get("LC_TEST_INIT_GATE"), None)  # holds a run before fit, lock taken

    def forward(self, x):
        if x.shape[0] > CHECK_SAMPLES:  # the fit-start check's few samples pass: the gate holds a round
            _wait_at_gate(os.environ.get("LC_TEST_GATE"), os.environ.get("LC_TEST_GATE_AFTER"))
        return super().forward(x)


def _wait_at_gate(gate: str | None, after: str | None) -> None:
    if gate and os.path.exists(gate) and (not after or os.path.exists(after)):
        Path(gate + ".reached").touch()
        deadline = time.time() + 300
        while os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)


def load_script(path: Path):
    """Import a file of scripts/ as a module (scripts are not a package), to test its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RecordBatches(Callback):
    """Saves every optimizer step's batch (each batch of a ``BatchGroup``) with its epoch, one file per rank
    (``<default_root_dir>/batches_rank<r>.pt``), to compare what a step trains on across process counts.

    Configs name it ``run_configs.RecordBatches``."""

    def __init__(self) -> None:
        self.batches: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for x in batch if isinstance(batch, list) else [batch]:
            self.batches.append((trainer.current_epoch, x.detach().clone()))

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save(self.batches, Path(trainer.default_root_dir) / f"batches_rank{trainer.global_rank}.pt")
