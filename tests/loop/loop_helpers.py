"""Shared builders and assertions of the loop tests."""


import torch

from lightning_curate.loop.curation_module import CurationModule
from lightning_curate.models.flow_matching import FlowMatching
from lightning_curate.models.mlp import MLPVelocity


def build_module(reward, **kwargs):
    """A small 2-D CurationModule whose velocity weights are the same every time (seeded here)."""
    torch.manual_seed(0)
    generator = FlowMatching(MLPVelocity(2, 32, 2), [2], steps=4, ema_decay=0.0)
    kwargs.setdefault("preview_size", 100)
    return CurationModule(generator=generator, reward=reward, **kwargs)


def assert_same_outcome(a, b):
    """Two curation outcomes hold the same tensors, bit for bit, and the same row."""
    assert set(a.tensors) == set(b.tensors)
    for key in a.tensors:
        assert torch.equal(a.tensors[key], b.tensors[key]), key
    assert a.row == b.row
