"""Fitting the generator under Lightning: one optimizer step a batch, or a group of steps a batch.

Lightning's automatic optimization runs its whole per-batch machinery (hooks of
every callback, the optimizer closure, progress, logging) around each optimizer
step: about 0.7 ms a step on a CPU, as much as a small MLP's step itself. With
``steps_per_batch = G > 1`` the data module hands over G batches at a time and
:class:`GeneratorTraining` steps through them with manual optimization, so that
machinery runs once per G steps. The steps are the same, in the same order, with
the same random draws: the trained weights are those of ``G = 1``, bit for bit.
Under DDP each step goes through ``manual_backward``, which all-reduces that step's
gradients (one all-reduce per optimizer step, as with ``G = 1``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, cast

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils.data import TensorDataset

from lightning_curate.data.blending import BatchGroup
from lightning_curate.models.generator import Generator, is_closed_form
from lightning_curate.utils.compat import FastHookName, saves_every_n_train_steps, set_epoch_metric
from lightning_curate.utils.validation import check_int

__all__ = ["GeneratorTraining", "TrainingSetupError"]


class TrainingSetupError(ValueError):
    """A trainer setting that grouped steps cannot honour, or a resume across the optimization modes."""


class GeneratorTraining(FastHookName, L.LightningModule):
    """The training half of :class:`~lightning_curate.loop.CurationModule`: ``self.generator``'s own loss.

    Subclasses set ``generator``, ``lr`` and ``weight_decay``.

    Args:
        steps_per_batch: optimizer steps per Lightning batch (see the module). Above 1 it uses
            manual optimization, so it refuses what that cannot do (learning-rate schedulers,
            checkpoints every n steps), and Lightning refuses ``gradient_clip_val`` and
            ``accumulate_grad_batches``. Under DDP every step's ``manual_backward``
            all-reduces its gradients. Lightning's batch counts (``limit_train_batches``,
            the progress bar) then count groups; ``trainer.global_step``, the step axis of
            the logged losses and the round rows still count optimizer steps.
    """

    generator: Any
    lr: float
    weight_decay: float

    def __init__(self, steps_per_batch: int = 1) -> None:
        super().__init__()
        self.steps_per_batch = check_int("steps_per_batch", steps_per_batch, minimum=1)
        self.automatic_optimization = steps_per_batch == 1
        self._epoch_loss: list = [None, 0]  # the epoch's sample-weighted loss sum and sample count
        self._backward: Optional[Callable[[Tensor], None]] = None  # set in on_fit_start, see _plain_backward
        self._closed_form = False  # set in configure_optimizers: the generator is fitted by fit(x), no optimizer
        self.log_interval = 1  # optimizer steps between train/loss_step logs: the trainer's, from on_fit_start

    def training_step(self, batch, batch_idx: int) -> Optional[Tensor]:
        """The generator's loss on a batch (a tensor, or a one-tensor list or tuple); with
        ``steps_per_batch > 1``, one optimizer step on each batch of a group (a list of them).

        ``train/loss_step`` is logged only on the steps the logger writes
        (every ``log_every_n_steps`` optimizer steps, whatever ``steps_per_batch``), and
        ``train/loss_epoch`` (the sample-weighted mean) once per epoch from a running sum:
        no per-step logging machinery and no per-step device sync. With grouped steps
        ``train/loss_step`` goes to the loggers only (``self.log`` costs about a step of a small
        model), and the progress bar and ``callback_metrics`` get ``train/loss_epoch``
        (written there directly, see ``on_train_epoch_end``).
        """
        # Trainer sets log_every_n_steps at runtime; its type stub does not declare it.
        every = self.log_interval
        if self._closed_form:  # nothing for Lightning to step on
            self._closed_form_step(batch, batch_idx)
            return None
        if self.automatic_optimization:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            loss = self._loss(x)
            if every and (self.global_step + 1) % every == 0:
                self._log_to_loggers("train/loss_step", loss, step=self.global_step)
            return loss
        if isinstance(batch, Tensor):
            batch = BatchGroup([batch])
        elif not isinstance(batch, BatchGroup):  # a list from another loader may be (x, y), not a group
            raise TypeError(f"steps_per_batch={self.steps_per_batch} trains on BatchGroup batches (what "
                            f"BlendingDataModule hands over) or tensors, got a {type(batch).__name__}")
        optimizer = cast(LightningOptimizer, self.optimizers())  # one optimizer
        backward = self._backward or self.manual_backward
        max_steps = self.trainer.max_steps
        for x in batch:
            if 0 <= max_steps <= self.global_step:  # Lightning checks max_steps between batches only
                break
            loss = self._loss(x)
            optimizer.zero_grad()
            backward(loss)
            optimizer.step()
            self.generator.update_ema()
            if every and self.global_step % every == 0:
                self._log_to_loggers("train/loss_step", loss)
        return loss.detach()

    def _closed_form_step(self, batch, batch_idx: int) -> None:
        """A closed-form generator: ``fit`` on the round's whole set at the round's first batch; the
        batch's ``loss`` (if any) is only logged. Lightning still counts a step a batch (no optimizer)."""
        if batch_idx == 0 and self._starts_round():
            self.generator.fit(self._round_data())
        if type(self.generator).loss is not Generator.loss:
            with torch.no_grad():
                self._loss(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def _starts_round(self) -> bool:
        """Whether this epoch is a round's first (every epoch is, without a round schedule)."""
        round_of = getattr(cast(Any, self.trainer).datamodule, "round_of_epoch", None)
        epoch = self.current_epoch
        return round_of is None or epoch == 0 or round_of(epoch) != round_of(epoch - 1)

    def _round_data(self) -> Tensor:
        """Every row of the current training loader (``IndexBatches.data``, or a ``TensorDataset``'s first tensor)."""
        loader = self.trainer.train_dataloader
        data = getattr(loader, "data", None)
        dataset = getattr(loader, "dataset", None)
        if not isinstance(data, Tensor) and isinstance(dataset, TensorDataset):
            data = dataset.tensors[0]
        if not isinstance(data, Tensor):
            raise TrainingSetupError(f"generator {type(self.generator).__name__} is fitted in closed form on a "
                                     f"round's whole training set, which a {type(loader).__name__} does not expose; "
                                     "use BlendingDataModule or a DataLoader over a TensorDataset")
        return data.to(self.device)

    def _log_to_loggers(self, name: str, value: Tensor, step: Optional[int] = None) -> None:
        """``value`` straight to the loggers at ``step`` (default: the last optimizer step taken), as
        Lightning writes it for one step a batch, at the module's own interval (``self.log`` would
        repeat the value at Lightning's, and once per group would cost more than a step)."""
        metrics = {name: float(value.detach()), "epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step - 1 if step is None else step)

    def _loss(self, x: Tensor) -> Tensor:
        loss = self.generator.loss(x)
        n, detached = x.shape[0], loss.detach()
        running = self._epoch_loss  # a plain list: no nn.Module.__setattr__ per step
        running[0] = detached * n if running[0] is None else running[0] + detached * n
        running[1] += n
        return loss

    def on_train_epoch_end(self) -> None:
        total, count = self._epoch_loss
        self._epoch_loss[:] = [None, 0]
        if total is None:
            return
        mean = total / count
        if self.automatic_optimization:
            self.log("train/loss_epoch", mean, prog_bar=True, on_step=False, on_epoch=True)
            return
        # Grouped steps: the loggers get the value at the optimizer step (Lightning's step axis
        # would count groups), and the progress bar and the monitoring callbacks (which run after
        # this hook) what self.log would give them, without its 1 ms of result bookkeeping.
        trainer = self.trainer
        self._log_to_loggers("train/loss_epoch", mean)
        set_epoch_metric(trainer, "train/loss_epoch", mean)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.automatic_optimization:  # grouped steps update the average after each of theirs
            self.generator.update_ema()

    def setup(self, stage: str) -> None:
        """Take over the logging interval before the first epoch's data are loaded.

        ``log_every_n_steps`` counts optimizer steps here, whatever ``steps_per_batch``; Lightning
        counts batches, and a round of a few (grouped) batches is shorter than its interval. So the
        module logs ``train/loss_step`` at the configured interval itself, and Lightning, which then
        only writes what the module logged, checks at every batch: the interval fits any round.
        """
        super().setup(stage)
        trainer = cast(Any, self.trainer)
        if stage == "fit" and trainer.log_every_n_steps != 1:
            self.log_interval = trainer.log_every_n_steps
            trainer.log_every_n_steps = 1

    def on_fit_start(self) -> None:
        """Refuse what grouped steps would silently change (Lightning itself refuses clipping and
        gradient accumulation under manual optimization)."""
        if self.steps_per_batch == 1:
            return
        trainer, fix = self.trainer, "or use steps_per_batch: 1"
        if trainer.lr_scheduler_configs:
            raise TrainingSetupError(f"steps_per_batch={self.steps_per_batch}: Lightning does not step learning-"
                                     f"rate schedulers under manual optimization; remove the scheduler {fix}")
        if any(saves_every_n_train_steps(cb) for cb in trainer.checkpoint_callbacks):
            raise TrainingSetupError(f"steps_per_batch={self.steps_per_batch}: a checkpoint every_n_train_steps "
                                     f"would be checked once per group of steps; save per epoch or round {fix}")
        self._backward = self._plain_backward(trainer)

    def _plain_backward(self, trainer: Any) -> Optional[Callable[[Tensor], None]]:
        """``Tensor.backward`` where ``manual_backward`` would do nothing more, else ``None``.

        ``manual_backward`` goes through the strategy and precision plugin and calls
        ``on_before_backward`` and ``on_after_backward`` on the module and every callback:
        about 0.1 ms a step. On one device in full precision, with none of those hooks (nor
        ``backward``) overridden, all it does is ``loss.backward()``.
        """
        if type(trainer.strategy) is not SingleDeviceStrategy or type(trainer.precision_plugin) is not Precision:
            return None
        hooks = ("on_before_backward", "on_after_backward")
        if is_overridden("backward", self, L.LightningModule) or any(is_overridden(h, self, L.LightningModule)
                                                                      for h in hooks):
            return None
        if any(is_overridden(h, cb, Callback) for cb in trainer.callbacks for h in hooks):
            return None
        return Tensor.backward

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("steps_per_batch", 1)
        if (saved == 1) != (self.steps_per_batch == 1):
            raise TrainingSetupError(
                f"cannot resume: the checkpoint was trained with steps_per_batch={saved}, the config says "
                f"{self.steps_per_batch}; Lightning counts automatic (1) and manual (> 1) optimization steps "
                "apart, so keep one side of 1")

    def configure_optimizers(self):
        """AdamW on the generator's trainable weights, multi-tensor (``foreach``) on every device; none
        for a closed-form generator (:func:`~lightning_curate.models.generator.is_closed_form`).

        torch picks the one-tensor-at-a-time loop on CPUs by default; the multi-tensor
        update is about twice as fast for a UNet's hundred-odd weight tensors.
        """
        self._closed_form = is_closed_form(self.generator)
        if self._closed_form:  # fit(x) on each round's data: no optimizer, nothing to step
            if self.steps_per_batch != 1:
                raise TrainingSetupError(f"generator {type(self.generator).__name__} is fitted in closed form (no "
                                         "optimizer steps to group): use steps_per_batch: 1")
            for hook in ("LightningModule.configure_optimizers", "training_step"):
                warnings.filterwarnings("ignore", message=f"`{hook}` returned `None`")
            return None
        params = [p for p in self.generator.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, foreach=True)
