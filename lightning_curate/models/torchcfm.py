"""torchcfm's image UNet, loaded from its own training checkpoint, as the velocity of :class:`FlowMatching`.

The OT-CFM CIFAR-10 model of Tong et al. (2023), trained by torchcfm's
``examples/images/cifar10/train_cifar10.py``, is where the public
reproduction of curated retraining starts. :class:`TorchCFMUNet` builds
torchcfm's ``UNetModelWrapper`` with that script's configuration (the
defaults here), loads its weights, and swaps the argument order
(torchcfm calls ``net(t, x)``; :class:`~lightning_curate.models.FlowMatching`
calls ``velocity(x, t)``). Wrapped in ``FlowMatching``, it trains with the
package's loss (the same linear interpolant and target ``x1 - x0`` as
torchcfm's flow matchers with ``sigma = 0``; minibatch-OT pairing with
``ot_pairing: true``) and samples with the package's solvers: for the same
noise and the same Euler grid, the samples are torchcfm's own.

torchcfm is an optional extra (``pip install 'lightning-curate[torchcfm]'``);
its UNet needs only torch and numpy, so ``pip install --no-deps torchcfm``
is enough when its other dependencies (torchdyn, pandas, ...) are unwanted.
The checkpoint is read with ``torch.load(weights_only=True)``: tensors and
plain containers only, never code from the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = ["CHECKPOINT_KEYS", "TorchCFMUNet", "load_torchcfm_weights"]

# The weights in a torchcfm training checkpoint: the live network's and its exponential moving average's.
CHECKPOINT_KEYS = {False: "net_model", True: "ema_model"}
DATA_PARALLEL_PREFIX = "module."  # keys of a checkpoint saved from torch.nn.DataParallel / DDP


def load_torchcfm_weights(path: str | Path, ema: bool = True) -> dict[str, Tensor]:
    """The UNet state dict in a torchcfm checkpoint, read without running code from the file.

    Args:
        path: a file saved by torchcfm's CIFAR-10 training script (a dict with ``net_model``,
            ``ema_model``, ``sched``, ``optim`` and ``step``), or a bare state dict.
        ema: take ``ema_model`` (the averaged weights torchcfm samples and reports FID from)
            rather than ``net_model``; ignored for a bare state dict.

    Returns:
        The state dict, with DataParallel's ``module.`` prefix removed when every key has it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds objects other than tensors and plain containers, or no weights.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"net_model": {"w": torch.ones(1)}, "ema_model": {"w": torch.zeros(1)}, "step": 3}, path)
        >>> load_torchcfm_weights(path, ema=True)
        {'w': tensor([0.])}
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path: no file {path} (expected a torchcfm checkpoint, e.g. "
                                f"otcfm_cifar10_weights_step_400000.pt)")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"checkpoint_path {path}: refused: it holds objects other than tensors and plain "
                         f"containers, and loading it would run code from the file ({exc})") from exc
    key = CHECKPOINT_KEYS[bool(ema)]
    if isinstance(obj, dict) and key in obj:
        weights = obj[key]
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        weights = obj  # a bare state dict
    else:
        found = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"checkpoint_path {path}: expected torchcfm's checkpoint (a dict with {key!r}) or a "
                         f"state dict of tensors, found {found}")
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"checkpoint_path {path}: {key!r} is not a state dict of tensors")
    if weights and all(k.startswith(DATA_PARALLEL_PREFIX) for k in weights):
        weights = {k[len(DATA_PARALLEL_PREFIX):]: v for k, v in weights.items()}
    return dict(weights)


class TorchCFMUNet(nn.Module):
    """torchcfm's ``UNetModelWrapper``, optionally loaded from a torchcfm checkpoint, called as ``velocity(x, t)``.

    The defaults are the OT-CFM CIFAR-10 configuration of torchcfm's
    ``examples/images/cifar10/train_cifar10.py`` (about 36 M parameters); a
    checkpoint loads only into the configuration it was trained with, and a
    mismatch is an error that says so. The arguments after ``dim`` (``num_channels``,
    ``num_res_blocks``, ``channel_mult``, ``num_heads``, ``num_head_channels``,
    ``attention_resolutions``, ``dropout``) are ``UNetModelWrapper``'s.

    Args:
        checkpoint_path: torchcfm checkpoint to start from (see :func:`load_torchcfm_weights`);
            ``None``: torchcfm's random initialisation (training from scratch).
        ema: load the checkpoint's ``ema_model`` weights (else ``net_model``).
        dim: ``(C, H, W)`` of one image.

    Example:
        As the velocity of the package's flow matching, from YAML::

            generator:
              class_path: lightning_curate.models.FlowMatching
              init_args:
                velocity:
                  class_path: lightning_curate.models.TorchCFMUNet
                  init_args: {checkpoint_path: checkpoints/otcfm_cifar10_weights_step_400000.pt}
                data_shape: [3, 32, 32]
    """

    def __init__(self, checkpoint_path: Optional[str] = None, ema: bool = True,
                 dim: Sequence[int] = (3, 32, 32), num_channels: int = 128, num_res_blocks: int = 2,
                 channel_mult: Sequence[int] = (1, 2, 2, 2), num_heads: int = 4, num_head_channels: int = 64,
                 attention_resolutions: str = "16", dropout: float = 0.1) -> None:
        super().__init__()
        try:
            from torchcfm.models.unet.unet import UNetModelWrapper
        except ImportError as exc:
            raise ImportError("TorchCFMUNet needs the torchcfm package: pip install 'lightning-curate[torchcfm]' "
                              "(or pip install --no-deps torchcfm: its UNet needs only torch and numpy)") from exc
        if len(dim) != 3 or not all(isinstance(d, int) and d > 0 for d in dim):
            raise ValueError(f"dim must be (C, H, W) of positive ints, got {list(dim)}")
        self.checkpoint_path = checkpoint_path
        self.unet = UNetModelWrapper(dim=tuple(dim), num_channels=num_channels, num_res_blocks=num_res_blocks,
                                     channel_mult=list(channel_mult), num_heads=num_heads,
                                     num_head_channels=num_head_channels, attention_resolutions=attention_resolutions,
                                     dropout=dropout)
        if checkpoint_path is not None:
            weights = load_torchcfm_weights(checkpoint_path, ema=ema)
            try:
                self.unet.load_state_dict(weights)
            except RuntimeError as exc:
                raise ValueError(f"checkpoint_path {checkpoint_path} does not fit a UNet with dim={list(dim)}, "
                                 f"num_channels={num_channels}, num_res_blocks={num_res_blocks}, channel_mult="
                                 f"{list(channel_mult)}, num_heads={num_heads}, num_head_channels="
                                 f"{num_head_channels}, attention_resolutions={attention_resolutions!r}: give "
                                 f"the configuration it was trained with ({exc})") from exc

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """The velocity at images ``x`` ``[B, C, H, W]`` and times ``t`` (``[B]`` or a scalar)."""
        return self.unet(t, x)
