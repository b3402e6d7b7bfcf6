"""Per-row seeds (``seed=ids`` or ``seed=(key, ids)``) and the compact outputs.

A row drawn from its own Philox stream draws the same whatever batch, order or
split it comes in; the torch path computes the kernel's stream and keys itself,
so both backends draw alike. The Philox implementation is checked against the
Random123 known-answer vectors and against ``tl.philox`` itself.
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import BACKENDS, needs_triton

from lightning_curate import kchoice
from lightning_curate.ops.kchoice_philox import philox4x32

MODES = ["softmax", "uniform"]


def _rewards(n=60, k=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n, k, generator=gen) * 2
    r[::4, 3] = -math.inf
    return r


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("m", [1, 3])
def test_per_row_seeds_do_not_depend_on_the_batch(backend, mode, m):
    rewards = _rewards()
    ids = torch.arange(60) * 1_000_003 + (1 << 40)  # 64-bit stream ids
    full = kchoice(rewards, 1.2, num_winners=m, mode=mode, seed=(9, ids), backend=backend)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(1))
    for part in (perm[:17], perm[17:], perm):
        sub = kchoice(rewards[part], 1.2, num_winners=m, mode=mode, seed=(9, ids[part]), backend=backend)
        assert torch.equal(sub.index, full.index[part])
    # Other ids (or another key) draw otherwise: the ids are what the draw depends on.
    other = kchoice(rewards, 1.2, num_winners=m, mode=mode, seed=(9, ids + 1), backend=backend)
    assert not torch.equal(other.index, full.index)
    other_key = kchoice(rewards, 1.2, num_winners=m, mode=mode, seed=(10, ids), backend=backend)
    assert not torch.equal(other_key.index, full.index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_tensor_seed_is_ids_under_key_zero(backend):
    rewards = _rewards()
    ids = torch.arange(60) + 5
    a = kchoice(rewards, seed=ids, backend=backend)
    b = kchoice(rewards, seed=(0, ids), backend=backend)
    assert torch.equal(a.index, b.index)


@needs_triton
@pytest.mark.parametrize("mode", ["softmax", "uniform", "argmax"])
@pytest.mark.parametrize("m", [1, 3])
def test_scalar_seed_is_the_stream_of_each_rows_position(mode, m):
    """The counter layout is kept: ``seed=s`` draws row i from stream i, so ``(s, arange(N))`` draws the same."""
    rewards = _rewards()
    a = kchoice(rewards, 0.8, num_winners=m, mode=mode, seed=1234, backend="triton")
    b = kchoice(rewards, 0.8, num_winners=m, mode=mode, seed=(1234, torch.arange(60)), backend="triton")
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.log_prob, b.log_prob) and torch.equal(a.logsumexp, b.logsumexp)


@needs_triton
@pytest.mark.parametrize("mode", ["softmax", "uniform", "argmax"])
@pytest.mark.parametrize("m", [1, 3])
def test_torch_and_triton_draw_alike_with_per_row_seeds(mode, m):
    rewards = _rewards(200, 13, seed=5)
    ids = torch.arange(200) * 7
    t = kchoice(rewards, 1.1, num_winners=m, mode=mode, seed=(77, ids), backend="torch")
    k = kchoice(rewards, 1.1, num_winners=m, mode=mode, seed=(77, ids), backend="triton")
    assert torch.equal(t.index, k.index)
    torch.testing.assert_close(t.log_prob, k.log_prob, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(t.logsumexp, k.logsumexp, atol=2e-5, rtol=1e-6)


# Random123's known-answer vectors for Philox4x32-10: (counter, key) -> output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_torch_philox_matches_the_known_answers(counter, key, expected):
    words = philox4x32(key[0] | (key[1] << 32), *(torch.tensor([c]) for c in counter))
    assert tuple(int(w) for w in words) == expected


@needs_triton
def test_torch_philox_matches_tl_philox():
    import triton
    import triton.language as tl

    @triton.jit
    def _words(C, OUT, seed_lo, seed_hi, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        c = [tl.load(C + i * 4 + j).to(tl.uint32) for j in tl.static_range(4)]
        seed = (seed_hi.to(tl.int64) << 31) | seed_lo.to(tl.int64)
        w0, w1, w2, w3 = tl.philox(seed, c[0], c[1], c[2], c[3])
        tl.store(OUT + i * 4 + 0, w0.to(tl.int64) & 0xFFFFFFFF)
        tl.store(OUT + i * 4 + 1, w1.to(tl.int64) & 0xFFFFFFFF)
        tl.store(OUT + i * 4 + 2, w2.to(tl.int64) & 0xFFFFFFFF)
        tl.store(OUT + i * 4 + 3, w3.to(tl.int64) & 0xFFFFFFFF)

    gen = torch.Generator().manual_seed(6)
    counters = torch.randint(0, 1 << 32, (64, 4), generator=gen, dtype=torch.int64)
    seed = (1 << 61) + 987654321
    out = torch.empty(64, 4, dtype=torch.int64)
    _words[(1,)](counters.to(torch.int32), out, seed & ((1 << 31) - 1), seed >> 31, BLOCK=64)
    ref = torch.stack(philox4x32(seed, *counters.unbind(1)), dim=1)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 2])
def test_compact_outputs_hold_the_same_choice(backend, m):
    rewards = _rewards()
    full = kchoice(rewards, num_winners=m, seed=3, backend=backend)
    small = kchoice(rewards, num_winners=m, seed=3, backend=backend, index_dtype=torch.int32, log_probs=False)
    assert small.index.dtype == torch.int32 and small.log_prob is None
    assert torch.equal(small.index.long(), full.index)
    assert torch.equal(small.logsumexp, full.logsumexp)
    empty = kchoice(rewards[:0], seed=3, backend=backend, index_dtype=torch.int32, log_probs=False)
    assert empty.index.dtype == torch.int32 and empty.log_prob is None


@pytest.mark.parametrize("seed, error, match", [
    (torch.arange(5), ValueError, r"per-row seed ids must be an int64 tensor of shape \[N\] = \[4\]"),
    (torch.zeros(4), ValueError, r"per-row seed ids must be an int64 tensor"),
    (("a", torch.arange(4)), TypeError, r"seed must be an int"),
    (1.5, TypeError, r"seed must be an int"),
])
def test_bad_seeds_are_refused(seed, error, match):
    with pytest.raises(error, match=match):
        kchoice(torch.zeros(4, 3), seed=seed)


def test_bad_index_dtype_is_refused():
    with pytest.raises(ValueError, match="index_dtype must be torch.int64 or torch.int32"):
        kchoice(torch.zeros(4, 3), seed=0, index_dtype=torch.float32)
