"""A run's rounds measured against its disk and memory, before anything is built or written.

The sizes come from the curation module's settings and the generator's ``data_shape`` alone (nothing
is sampled or allocated); :mod:`lightning_curate.store.capacity` estimates and compares them.
``lightning-curate`` checks right after building the classes, and :class:`~lightning_curate.loop.RetrainingLoop`
again in ``setup`` (for a run without the CLI), before the run's first allocation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch

from lightning_curate.loop.curation_module import SLOT_BLOCK
from lightning_curate.store.capacity import available_memory, check_capacity, free_disk, round_sizes

__all__ = ["check_run_capacity"]


def _device_memory(device: Any) -> Optional[int]:
    """Free bytes of a CUDA device (``None`` for the host, or when unknown)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError):
        return None


def check_run_capacity(pl_module: Any, datamodule: Any, run_dir: Path, *, rounds_left: int, rounds: int = 1,
                       world_size: int = 1, device: Any = "cpu") -> None:
    """Refuse a run whose remaining rounds cannot fit on the disk of ``run_dir`` or in memory.

    ``rounds``: the run's curated rounds, which an ``accumulate`` policy's training set gathers.

    A module without the curation settings (``num_slots``...) is not checked.

    Raises:
        lightning_curate.store.capacity.CapacityError: naming ``num_slots``, ``num_candidates`` or
            ``chunk_size`` with the bytes needed and the bytes available.
    """
    needed = ("num_slots", "num_candidates", "num_winners", "chunk_size")
    generator = getattr(pl_module, "generator", None)
    if rounds_left <= 0 or generator is None or not all(isinstance(getattr(pl_module, k, None), int) for k in needed):
        return
    try:
        numel = math.prod(int(d) for d in generator.data_shape)
    except (AttributeError, TypeError, ValueError):
        return  # the component check names a bad data_shape
    curators = getattr(pl_module, "curators", None)
    source = getattr(datamodule, "source", None)
    sizes = round_sizes(num_slots=pl_module.num_slots, num_candidates=pl_module.num_candidates,
                        num_winners=pl_module.num_winners, chunk_size=pl_module.chunk_size, sample_numel=numel,
                        block=SLOT_BLOCK, itemsize=torch.get_default_dtype().itemsize,
                        preview_size=int(getattr(pl_module, "preview_size", 0) or 0),
                        log_choices=int(getattr(pl_module, "log_choices", 0) or 0),
                        num_rewards=1 + (len(curators) if curators is not None else 0),
                        labels=bool(getattr(source, "class_names", None)), world_size=max(1, world_size),
                        pool_rounds=max(1, rounds) if str(getattr(datamodule, "policy", "")).startswith("accumulate")
                        else 1)
    check_capacity(sizes, rounds_left=rounds_left, run_dir=run_dir, chunk_size=pl_module.chunk_size,
                   block=SLOT_BLOCK, disk_free=free_disk(run_dir), host_memory=available_memory(),
                   device_memory=_device_memory(device), device=str(device))
