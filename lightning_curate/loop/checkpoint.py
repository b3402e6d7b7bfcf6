"""Checkpoints at the rounds' ends, where a resume repeats the uninterrupted run exactly."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_curate.loop.schedule import at_round_end, epoch_finished
from lightning_curate.utils.compat import epoch_batches_ready, save_last_if_unsaved

__all__ = ["AtomicCheckpointIO", "RoundCheckpoint", "epoch_finished", "unresumable_reason"]

_SCHEDULES = ("every_n_epochs", "every_n_train_steps", "train_time_interval")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes a local checkpoint atomically beside its final name.

    Why: Lightning's own save goes through an fsspec transaction whose temp file is in the
    system temp folder, then copied; a full disk mid-copy left a truncated ``last.ckpt`` that
    ``load_run`` and the next resume failed on. Here the file is written to a hidden temp file in
    the same folder (same filesystem), flushed and fsynced, then renamed over the old one: a
    failure at any point leaves the previous checkpoint whole, removes the temp file and raises
    an ``OSError`` naming the checkpoint. Remote paths (``s3://``...) keep Lightning's save.

    Example::

        trainer = Trainer(plugins=[AtomicCheckpointIO()])  # RoundCheckpoint installs it by itself
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as err:
            raise OSError(err.errno, f"cannot write the checkpoint: {err.strerror}", str(path)) from err
        try:
            buffer = io.BytesIO()  # serialised first (like Lightning): a short write is then an OSError
            torch.save(checkpoint, buffer)
            with os.fdopen(fd, "wb") as handle:
                handle.write(buffer.getbuffer())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise OSError(err.errno, f"cannot write the checkpoint: {err.strerror or err}", str(path)) from err
            raise
        try:  # the rename itself survives a crash once the folder is synced
            dir_fd = os.open(path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass
        finally:
            os.close(dir_fd)


class RoundCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that saves once a round, after the round's curated data is committed.

    Why: every draw of a run is keyed on its round or epoch, so a checkpoint at any
    whole epoch's end, a round's included, resumes to exactly what the uninterrupted
    run does, and the rounds are what a user resumes between. Saving after every epoch
    cost the main job two files an epoch, 7% of its time. Where a round is long (GPU
    runs of many long epochs, ``configs/cifar10.yaml``) a ``ModelCheckpoint`` every
    epoch loses less to a crash. A run stopped between two round
    ends (a crash, SIGTERM, ``max_time``) resumes from the last round's end and trains
    the epochs since again, exactly as they first ran; nothing is saved between round
    ends, and ``last.ckpt`` follows the newest round even when no top-k file is written.

    It takes ``ModelCheckpoint``'s arguments except the ones that schedule saves
    (``every_n_epochs``, ``every_n_train_steps``, ``train_time_interval``: the rounds
    do), and ``save_last`` defaults to ``True`` so ``--ckpt_path last`` finds the newest
    round. One file name per run: ``enable_version_counter`` defaults to ``False``, so a run directory
    that was moved and resumed overwrites its ``last.ckpt`` instead of writing ``last-v1.ckpt`` beside
    a stale one (which ``load_run`` or a later resume could pick). Without a
    :class:`~lightning_curate.loop.RetrainingLoop` in the trainer's
    callbacks it saves after every epoch, like ``ModelCheckpoint``.

    Example::

        trainer = Trainer(callbacks=[RetrainingLoop(rounds=3), RoundCheckpoint(dirpath="run/checkpoints")])
    """

    def __init__(self, dirpath: Optional[str] = None, save_last: Optional[bool] = True, save_top_k: int = 1,
                 enable_version_counter: bool = False, **kwargs: Any) -> None:
        for name in _SCHEDULES:
            if kwargs.get(name) is not None:
                raise ValueError(f"RoundCheckpoint saves at each round's end: {name}={kwargs[name]!r} is not "
                                 "used; use lightning.pytorch.callbacks.ModelCheckpoint for another schedule")
        if kwargs.get("save_on_exception"):
            raise ValueError("RoundCheckpoint saves at each round's end: save_on_exception=True would save a "
                             "state between two round ends, from which a resume is not exact")
        super().__init__(dirpath=dirpath, save_last=save_last, save_top_k=save_top_k,
                         enable_version_counter=enable_version_counter, **kwargs)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Write checkpoints atomically (:class:`AtomicCheckpointIO`) unless the user chose another CheckpointIO."""
        super().setup(trainer, pl_module, stage)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    @property
    def state_key(self) -> str:
        """``ModelCheckpoint.state_key``, built once: its arguments do not change during a fit, and
        Lightning reads the key around every hook of every callback (a ``repr`` of a dict each time)."""
        key = self.__dict__.get("_state_key_cached")
        if key is None:
            key = self._state_key_cached = super().state_key
        return key

    @staticmethod
    def at_round_end(trainer: Any) -> bool:
        """Whether the epoch now ending is the whole last epoch of a round (any whole epoch, without a
        RetrainingLoop): :func:`~lightning_curate.loop.schedule.at_round_end`."""
        return at_round_end(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.at_round_end(trainer):
            return
        super().on_train_epoch_end(trainer, pl_module)
        # No top-k file this round (save_top_k: 0, or a monitored value that did not improve):
        # last.ckpt still follows the newest round, which is what --ckpt_path last resumes.
        save_last_if_unsaved(self, trainer)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.at_round_end(trainer):
            super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Nothing: ``ModelCheckpoint`` would save ``last.ckpt`` here, between two round ends."""



def unresumable_reason(trainer: Any, schedule: Any, finished_rounds: set[int]) -> Optional[str]:
    """Why a checkpoint saved now could not resume exactly, or ``None`` (a whole epoch's end, its round
    curated if it ends one). The batch order within an epoch and a round's curation are in no checkpoint,
    so a mid-epoch save (``every_n_train_steps``) would resume to other rounds.

    ``schedule`` is the run's :class:`~lightning_curate.loop.schedule.RoundSchedule`; ``finished_rounds``
    the rounds curated so far.
    """
    if trainer is None or trainer.num_training_batches == float("inf"):
        return None
    epoch = trainer.current_epoch
    if not epoch_finished(trainer):
        ready, total = epoch_batches_ready(trainer), trainer.num_training_batches
        return f"mid-epoch (epoch {epoch}, after {ready} of {total} batches)"
    round_idx = schedule.round_of_epoch(epoch)
    if schedule.ends_round(epoch) and round_idx not in finished_rounds:
        return f"after round {round_idx}'s training but before its curation"
    return None
