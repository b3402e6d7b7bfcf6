"""Triton kernels of lightning_curate.

This folder lives at the repository's top level (``kernels/``) and ships inside
the wheel as ``lightning_curate.kernels``; it is never a top-level ``kernels``
module (that name belongs to another PyPI package). Triton is imported only by
the kernel modules themselves, so importing this package needs no Triton.
"""

__all__: list[str] = []  # the kernel modules are imported by name (lightning_curate.kernels.kchoice_triton)
