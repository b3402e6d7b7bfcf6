"""Test setup: Triton kernels run on the CPU under the interpreter.

TRITON_INTERPRET must be set before Triton JIT-decorates the kernels, so it is
set here, before any test module imports them.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models on 2 shared cores run fastest, and identically, on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
