"""Seeds derived from the run seed, so every round is reproducible on its own.

A resumed run, a run split over ranks and an uninterrupted run draw the same
numbers because each draw is keyed on what it is for (the round, the block of
slots, the epoch, the rank), never on how much randomness was consumed before.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch

__all__ = ["derive_seed", "generator", "seed_all"]

_MASK = (1 << 63) - 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (ints and strings)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def seed_all(seed: int) -> None:
    """Seed torch (CPU and CUDA), NumPy and ``random`` (quietly, unlike Lightning's seed_everything).

    Without an accelerator only the CPU generator is seeded: ``torch.manual_seed`` would also queue a
    lazy CUDA seeding with its call stack, about a millisecond a call.
    """
    if _accelerator_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def _accelerator_available() -> bool:
    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or torch.backends.mps.is_available()
            or bool(xpu is not None and xpu.is_available()))
