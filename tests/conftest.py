"""Test setup: Triton kernels run on the CPU under the interpreter.

TRITON_INTERPRET must be set before Triton JIT-decorates the kernels, so it is
set here, before any test module imports them.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
