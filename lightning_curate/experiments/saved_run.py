"""A finished (or stopped) run opened again in Python: its own config, modules and checkpoint.

Diagnostics that look back at a run (``lightning-curate diagnose solver``,
``lightning-curate diagnose budget``, a notebook) need the run's model and data exactly
as the run built them. A run saves the full config it was started with
(``config.yaml``); :func:`load_run` builds the module and data module from it and
loads a checkpoint's weights. The config is a file, so it is not trusted: it may
build only lightning_curate's classes and those the caller names in
``trusted_classes`` (checked before anything is imported); the checkpoint is read
with ``weights_only=True``, so it cannot choose what is built either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from lightning_curate.store.preflight import check_checkpoint_file, find_last_checkpoint
from lightning_curate.store.rounds import StoreError
from lightning_curate.utils.trust import TrustedClasses, check_config_classes

__all__ = ["SavedRun", "load_run"]


@dataclass
class SavedRun:
    """What :func:`load_run` opens: the run's config, its rebuilt modules, and the checkpoint read."""

    config: dict[str, Any]
    module: Any
    datamodule: Any
    state: dict[str, Any]
    checkpoint: Path


def load_run(run_dir: Path | str, checkpoint: Optional[Path | str] = None,
             trusted_classes: TrustedClasses = None) -> SavedRun:
    """The run in ``run_dir``, rebuilt from its ``config.yaml``, with ``checkpoint``'s weights.

    Args:
        run_dir: a run directory (``config.yaml``, ``checkpoints/``).
        checkpoint: a checkpoint of that run (default ``checkpoints/last.ckpt``).
        trusted_classes: class paths outside lightning_curate that the config may build (a run
            of your own generator: ``["mygen.MyGenerator"]``); any other class it names is refused.

    Raises:
        FileNotFoundError: no ``config.yaml``, or no such checkpoint.
        ValueError: a config without model and data sections, or a truncated or damaged checkpoint.
        UntrustedClassError: the config names a class outside the package and ``trusted_classes``.

    Example:
        >>> run = load_run("runs/mog8")  # doctest: +SKIP
        >>> run.module.generator.sample(4).shape  # doctest: +SKIP
        torch.Size([4, 2])
    """
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule, LightningModule

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise FileNotFoundError(f"run directory {run_dir}: no config.yaml (is it a lightning-curate run?)")
    config = yaml.safe_load(config_path.read_text())
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ValueError(f"{config_path}: expected the model and data sections a run saves")
    check_config_classes({"model": config["model"], "data": config["data"]}, str(config_path), trusted_classes)
    newest = find_last_checkpoint([run_dir / "checkpoints"])  # by round: never a stale last.ckpt beside last-v1
    path = Path(checkpoint) if checkpoint is not None else newest or run_dir / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        check_checkpoint_file(path)
    except StoreError as err:
        raise ValueError(f"checkpoint {path} is truncated or damaged") from err
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    parser.add_subclass_arguments(LightningDataModule, "data", required=True)
    built = parser.instantiate(parser.parse_object({"model": config["model"], "data": config["data"]}))
    state = torch.load(path, map_location="cpu", weights_only=True)
    built.model.load_state_dict(state["state_dict"])
    return SavedRun(config=config, module=built.model, datamodule=built.data, state=state, checkpoint=path)
