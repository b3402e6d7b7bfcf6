"""Seeds keyed on what they are for, and seed_all's effect on every generator it owns."""

import random

import numpy as np
import torch

from lightning_curate.utils import seeding
from lightning_curate.utils.seeding import derive_seed, seed_all


def test_derive_seed_depends_on_its_parts_only():
    assert derive_seed(0, "epoch", 3, 0) == derive_seed(0, "epoch", 3, 0)
    assert len({derive_seed(0, "epoch", e, 0) for e in range(100)}) == 100
    assert 0 <= derive_seed("x") < 2**63


def _draws():
    return torch.rand(4).tolist(), np.random.rand(2).tolist(), random.random()


def test_seed_all_matches_the_libraries_own_seeding():
    seed = derive_seed(7, "epoch", 2, 0)
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)
    expected = _draws()
    seed_all(seed)
    assert _draws() == expected


def test_seed_all_without_an_accelerator_skips_the_lazy_cuda_seeding(monkeypatch):
    """On a CPU-only machine torch.manual_seed would queue a CUDA seeding; the fast path draws the same."""
    monkeypatch.setattr(seeding, "_accelerator_available", lambda: False)
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(s))
    seed_all(123)
    fast = _draws()
    monkeypatch.setattr(seeding, "_accelerator_available", lambda: True)
    seed_all(123)
    assert calls == [123]  # the general path seeds CUDA too
    assert _draws() == fast
