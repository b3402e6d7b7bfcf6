"""Batched K-choice curation: the ``kchoice`` op, its torch path and its Triton dispatch."""

from lightning_curate.ops.kchoice import (
    BACKENDS,
    MODES,
    KChoice,
    gather_candidates,
    kchoice,
    triton_unavailable_reason,
)

__all__ = ["BACKENDS", "MODES", "KChoice", "gather_candidates", "kchoice", "triton_unavailable_reason"]
