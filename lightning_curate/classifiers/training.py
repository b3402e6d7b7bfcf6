"""Training the classifiers with Lightning: the LightningModule, the labelled-data DataModule, augmentation.

- :class:`ClassifierModule`: cross-entropy, AdamW, ``train/acc`` and
  ``val/acc`` logged with torchmetrics; its checkpoints also write the net file
  that :func:`~lightning_curate.classifiers.load_classifier` reads (see
  :mod:`lightning_curate.classifiers.checkpoint`);
- :class:`ClassifierDataModule`: trains on a :class:`~lightning_curate.data.DataSource`'s
  labelled train split, validates on its held-out split;
- :func:`random_shift`: the shift augmentation, in torch on the batch's device.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_curate.classifiers.checkpoint import CHECKPOINT_KEY, NetFileCheckpointIO, describe_net
from lightning_curate.data.source import DataSource
from lightning_curate.utils.compat import attached_trainer
from lightning_curate.utils.validation import check_choice, check_float, check_int, is_int

__all__ = ["ClassifierDataModule", "ClassifierModule", "random_shift"]


class ClassifierModule(L.LightningModule):
    """Trains a classifier ``net`` (images -> logits) with cross-entropy and AdamW.

    Logs ``train/loss``, ``train/acc``, ``val/loss`` and ``val/acc`` (and
    ``test/*``). Every checkpoint it saves gets a net file beside it,
    ``<ckpt>.net.safetensors`` (the net's weights and a JSON description: its
    class path and constructor arguments), from which :func:`load_classifier`
    rebuilds the net without unpickling anything: :meth:`setup` wraps the
    trainer's checkpoint IO in a :class:`NetFileCheckpointIO`. The ``.ckpt``
    also carries the description in ``checkpoint["classifier_net"]``.

    Args:
        net: the network; a :class:`RebuildableNet` (e.g. :class:`SmallCNN`) to be loadable by path alone.
        lr, weight_decay: AdamW settings.
        label_smoothing: cross-entropy label smoothing.
        num_classes: for the accuracy metric; defaults to ``net.num_classes``.
        lr_schedule: ``"cosine"`` (per step from ``lr`` to 0 over the run's
            ``max_epochs``/``max_steps``) or ``"constant"``.
    """

    def __init__(self, net: nn.Module, lr: float = 1e-3, weight_decay: float = 1e-4, label_smoothing: float = 0.0,
                 num_classes: Optional[int] = None, lr_schedule: str = "cosine"):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if num_classes is None:
            num_classes = getattr(net, "num_classes", None)
        if num_classes is None or not is_int(num_classes) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2 (give it, or use a net with a num_classes "
                             f"attribute), got {num_classes!r}")
        check_float("lr", lr, minimum=0.0, strict_minimum=True)
        if check_float("label_smoothing", label_smoothing, minimum=0.0) >= 1.0:
            raise ValueError(f"label_smoothing must be a finite number in [0, 1), got {label_smoothing!r}")
        check_choice("lr_schedule", lr_schedule, ("cosine", "constant"))
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.num_classes = num_classes
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        """The net's logits."""
        return self.net(x)

    def _step(self, batch, stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams["label_smoothing"] if stage == "train" else 0.0)
        acc.update(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train",
                 batch_size=x.shape[0])
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        """Cross-entropy on a batch ``(images, labels)``; logs ``train/loss`` and ``train/acc``."""
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        """Held-out loss and accuracy (``val/*``)."""
        return self._step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> Tensor:
        """Test loss and accuracy (``test/*``)."""
        return self._step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> Tensor:
        """Class probabilities ``[n, num_classes]`` (float32)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self.net(x).float(), dim=1)

    def configure_optimizers(self):
        """AdamW, with a per-step cosine schedule unless ``lr_schedule`` is constant."""
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr,
                                      weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches if attached_trainer(self) is not None else math.inf
        if self.hparams.lr_schedule == "constant" or not math.isfinite(total) or total < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def setup(self, stage: str) -> None:
        """Make the trainer's checkpoints write the net file too (once per trainer)."""
        strategy = self.trainer.strategy
        if not isinstance(strategy.checkpoint_io, NetFileCheckpointIO):
            strategy.checkpoint_io = NetFileCheckpointIO(strategy.checkpoint_io)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the net's JSON description (also written to the net file)."""
        checkpoint[CHECKPOINT_KEY] = describe_net(self.net, self.num_classes)


def random_shift(x: Tensor, max_shift: int, generator: Optional[torch.Generator] = None,
                 fill: float = -1.0) -> Tensor:
    """Shift each image ``[n, C, H, W]`` by its own random offset in ``-max_shift..max_shift`` (both axes).

    Pads by ``max_shift`` with ``fill`` (-1: black in ``[-1, 1]`` images) and
    crops back to ``H x W``. Offsets are drawn on the CPU from ``generator``.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shift expects images [n, C, H, W], got {tuple(x.shape)}")
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill).permute(0, 2, 3, 1)  # [n, H+2p, W+2p, C]
    offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(x.device)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # [n, H]
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [n, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


class ClassifierDataModule(L.LightningDataModule):
    """Labelled real data of a :class:`~lightning_curate.data.DataSource` for classifier training.

    Trains on ``source.load().train`` / ``train_labels`` (shuffled from
    ``seed``), validates and tests on ``heldout`` / ``heldout_labels``.

    Args:
        source: a labelled data source (e.g. ``lightning_curate.data.Digits``).
        batch_size: batch size of every loader.
        augment: random shifts of training images by up to ``max_shift`` pixels
            (pad with -1, crop), done in torch on the batch's device.
        max_shift: largest shift; default ``max(1, H // 8)`` (1 for 8x8, 4 for 32x32).
        hflip: also flip training images left-right at random (CIFAR-10, not digits).
        seed: seeds the shuffling and the augmentation.
    """

    def __init__(self, source: DataSource, batch_size: int = 128, augment: bool = False, seed: int = 0,
                 max_shift: Optional[int] = None, hflip: bool = False):
        super().__init__()
        if not isinstance(source, DataSource):
            raise TypeError(f"source must be a lightning_curate.data.DataSource, got {type(source).__name__}")
        check_int("batch_size", batch_size, minimum=1)
        if max_shift is not None:
            check_int("max_shift", max_shift, minimum=0)
        self.source, self.batch_size, self.augment, self.seed = source, batch_size, bool(augment), int(seed)
        self.max_shift, self.hflip = max_shift, bool(hflip)
        self._train: Optional[TensorDataset] = None
        self._heldout: Optional[TensorDataset] = None
        self._aug_gen = torch.Generator().manual_seed(self.seed + 1)

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the source once and build the train / held-out datasets."""
        if self._train is not None:
            return
        data = self.source.load()
        name = type(self.source).__name__
        if data.train_labels is None or data.heldout_labels is None:
            raise ValueError(f"{name} gives no labels: a classifier needs a labelled source "
                             f"(train_labels and heldout_labels)")
        for what, x, y in (("train", data.train, data.train_labels), ("heldout", data.heldout, data.heldout_labels)):
            if x.shape[0] != y.shape[0] or y.dim() != 1:
                raise ValueError(f"{name}: {what} has {x.shape[0]} samples but labels of shape {tuple(y.shape)}")
            if x.shape[0] == 0:
                raise ValueError(f"{name}: the {what} set is empty")
        if (self.augment or self.hflip) and data.train.dim() != 4:
            raise ValueError(f"augment/hflip need images [n, C, H, W], got train shape {tuple(data.train.shape)}")
        self._train = TensorDataset(data.train.float(), data.train_labels.long())
        self._heldout = TensorDataset(data.heldout.float(), data.heldout_labels.long())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order seeded by ``seed``)."""
        self.setup()
        assert self._train is not None
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=gen)

    def val_dataloader(self) -> DataLoader:
        """Held-out batches, in order."""
        self.setup()
        assert self._heldout is not None
        return DataLoader(self._heldout, batch_size=self.batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The held-out batches."""
        return self.val_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment training batches on their device (shifts, flips); others pass through."""
        trainer = self.trainer
        if trainer is None or not trainer.training or not (self.augment or self.hflip):
            return batch
        x, y = batch
        if self.augment:
            shift = self.max_shift if self.max_shift is not None else max(1, x.shape[-2] // 8)
            x = random_shift(x, shift, self._aug_gen)
        if self.hflip:
            flip = (torch.rand(x.shape[0], generator=self._aug_gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, y


