"""Every use of a private Lightning or torch internal, in one place, each behind a small function.

The loop takes a few shortcuts through attributes that Lightning and torch do not
promise to keep (a checkpoint callback's bookkeeping, the fit loop's batch
counter, ``torch._foreach_*``). Kept here, an upgrade that renames one breaks one
function, and ``tests/utils/test_compat.py`` checks on the installed versions that
every attribute and signature used here still exists, so it fails loudly at test
time instead of quietly at run time. pyproject.toml states the versions tested.

Nothing here imports Lightning: the functions take the trainer, module or callback.

Example:
    >>> import torch
    >>> a, b = [torch.zeros(2)], [torch.ones(2)]
    >>> foreach_lerp_(a, b, 0.25)
    >>> a[0].tolist()
    [0.25, 0.25]
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["HOOK_NAME_ATTRIBUTE", "FastHookName", "attached_trainer", "epoch_batches_ready", "foreach_copy_",
           "foreach_lerp_", "progress_bar_leaves", "save_last_if_unsaved", "saves_every_n_train_steps",
           "set_epoch_metric", "set_max_epochs", "set_reload_every_n_epochs", "set_unregistered", "train_progress_bar"]

# The attribute Lightning sets on a LightningModule around every hook it calls.
HOOK_NAME_ATTRIBUTE = "_current_fx_name"


class FastHookName:
    """A mixin for a ``LightningModule``: Lightning's per-hook name bypasses ``nn.Module.__setattr__``.

    Lightning sets ``_current_fx_name`` around every hook it calls (dozens per step); it is never
    a parameter, buffer or submodule, so ``nn.Module``'s checks (about a microsecond each) are
    skipped for it alone. Put it before ``LightningModule`` in the bases.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name == HOOK_NAME_ATTRIBUTE:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def set_unregistered(module: torch.nn.Module, name: str, value: Any) -> None:
    """Set ``module.name`` outside ``nn.Module``'s registry: not a submodule, not in its ``state_dict``.

    For a net that is loaded from its own file and must not be saved in the owner's checkpoint.
    """
    object.__setattr__(module, name, value)


def attached_trainer(module: Any) -> Optional[Any]:
    """The trainer a ``LightningModule`` is attached to, or ``None`` (its ``trainer`` property raises)."""
    return module._trainer


def epoch_batches_ready(trainer: Any) -> int:
    """Batches of the current training epoch the fit loop has started (resumed ones included)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


def set_max_epochs(trainer: Any, max_epochs: int) -> None:
    """Change the trainer's ``max_epochs`` after it was built (Trainer has no public setter)."""
    trainer.fit_loop.max_epochs = max_epochs


def set_reload_every_n_epochs(trainer: Any, epochs: int) -> None:
    """Have the fit loop load the train dataloader again ``epochs`` epochs after this load (the
    trainer's ``reload_dataloaders_every_n_epochs``, changed during fit: the loop reads it each epoch)."""
    trainer.reload_dataloaders_every_n_epochs = epochs


def saves_every_n_train_steps(callback: Any) -> int:
    """A ``ModelCheckpoint``'s ``every_n_train_steps`` (0 where it saves on another schedule)."""
    return int(getattr(callback, "_every_n_train_steps", 0) or 0)


def save_last_if_unsaved(callback: Any, trainer: Any) -> None:
    """Have a ``ModelCheckpoint`` write ``last.ckpt`` now, unless it saved at this step or must not save."""
    if callback.save_last and callback._last_global_step_saved != trainer.global_step \
            and not callback._should_skip_saving_checkpoint(trainer):
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def set_epoch_metric(trainer: Any, name: str, value: Tensor) -> None:
    """What ``LightningModule.log(name, value, on_epoch=True, prog_bar=True)`` leaves for the progress bar
    and the monitoring callbacks, written directly (without its result bookkeeping)."""
    trainer.callback_metrics[name] = value
    trainer.progress_bar_metrics[name] = float(value)


def progress_bar_leaves(bar: Any) -> bool:
    """A ``TQDMProgressBar``'s ``leave`` argument."""
    return bool(bar._leave)


def train_progress_bar(bar: Any) -> Optional[Any]:
    """A ``TQDMProgressBar``'s training tqdm bar, or ``None`` before it is made (the property raises)."""
    return bar._train_progress_bar


def foreach_copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """``dst[i].copy_(src[i])`` for every ``i``, in one multi-tensor kernel (torch's private ``_foreach_copy_``)."""
    torch._foreach_copy_(dst, src)


def foreach_lerp_(dst: list[Tensor], src: list[Tensor], weight: float) -> None:
    """``dst[i].lerp_(src[i], weight)`` for every ``i``, in one multi-tensor kernel (torch's ``_foreach_lerp_``,
    what ``torch.optim.swa_utils.AveragedModel`` uses)."""
    torch._foreach_lerp_(dst, src, weight)
