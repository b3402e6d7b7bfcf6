"""The random keys of the K-choice kernels: Philox words, base-2 Gumbel keys, fast logs.

Shared by both kernels of ``lightning_curate.kernels.kchoice_triton`` and
mirrored exactly, in torch, by ``lightning_curate.ops.kchoice_philox`` (the
torch path of per-row seeds).

* Candidate ``(row, col)`` gets word ``col % 4`` of ``Philox4x32-10(key; col // 4,
  id low, id high, 0)``, where ``key`` is the 62-bit seed and ``id`` the row's
  64-bit stream id: its position in the batch for a scalar seed, the caller's
  value for per-row ids. One Philox call serves four columns.
* Softmax keys are base 2: ``beta r log2(e) - log2(-log2 u)`` is the Gumbel key
  ``beta r - log(-log u)`` times ``log2(e)`` plus a constant, so both rank the
  candidates alike; on a GPU the two ``log2`` run on the special-function unit
  (``lg2.approx``: one ``MUFU.LG2`` instead of libdevice's ~25-instruction ``log``).
  Under ``TRITON_INTERPRET=1`` (no inline PTX) ``tl.log2`` stands in.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["LN2", "LOG2E", "U_MAX", "U_MIN", "U_SCALE", "fast_exp2", "fast_log2", "neg_log2_neg_log2",
           "philox_bits", "tile_keys"]

# Uniforms come from the top 24 bits of a Philox word: u = (v + 0.5) / 2^24,
# clamped into the open interval (0, 1) so both logs stay finite.
U_SCALE = tl.constexpr(1.0 / 16777216.0)
U_MIN = tl.constexpr(2.0**-25)
U_MAX = tl.constexpr(1.0 - 2.0**-24)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def fast_log2(x, FAST: tl.constexpr):
    """``log2(x)`` for positive normal float32: ``lg2.approx.ftz`` (one ``MUFU.LG2``) on the GPU, else ``tl.log2``.

    The keys' arguments are never subnormal (``u >= 2^-25``, ``-log2 u >= 8.5e-8``), so flushing changes nothing.
    """
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.log2(x)


@triton.jit
def neg_log2_neg_log2(u, FAST: tl.constexpr):
    """``log2(-log2(u))`` for ``u`` in (0, 1): on the GPU two ``MUFU.LG2``, the negation folded into the second.

    ``lg2.approx`` is within 2^-22.6 absolutely on [0.5, 2] (CUDA's ``__log2f``), so for the
    largest ``u`` (``1 - 2^-24``: ``-log2 u = 8.6e-8``) the inner log may come out 0 or positive;
    it is kept >= 2^-24 (below every exact value, so it only guards the key against NaN).
    """
    if FAST:
        return tl.inline_asm_elementwise(
            "{ .reg .f32 t; lg2.approx.ftz.f32 t, $1; neg.f32 t, t; max.ftz.f32 t, t, 0f33800000; "
            "lg2.approx.ftz.f32 $0, t; }",
            "=r,r", [u], dtype=tl.float32, is_pure=True, pack=1)
    else:
        return tl.log2(-tl.log2(u))


@triton.jit
def fast_exp2(x, FAST: tl.constexpr):
    """``2^x``: ``ex2.approx.ftz`` (one ``MUFU.EX2``) on the GPU, else ``tl.exp2``.

    Used for logsumexp terms ``2^(s - max) <= 1``: a flushed subnormal term is below
    2^-126 of the sum (which is >= 1), so flushing does not change the float32 sum.
    """
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32,
                                         is_pure=True, pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def philox_bits(seed_lo, seed_hi, ids, k0, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Random 32-bit words ``[BLOCK_N, BLOCK_K]`` for columns ``k0 ..``, a pure function of (seed, id, column).

    ``ids``: ``[BLOCK_N, 1]`` int64 stream ids; ``k0`` a multiple of ``BLOCK_K``.
    """
    seed = (seed_hi.to(tl.int64) << 31) | seed_lo.to(tl.int64)
    if BLOCK_K >= 4:
        zero = tl.zeros([BLOCK_N, BLOCK_K // 4], dtype=tl.int64)
        q = k0 // 4 + tl.arange(0, BLOCK_K // 4)[None, :]
        id_full = ids + zero
        c0 = (q + zero).to(tl.uint32)
        c1 = (id_full & 0xFFFFFFFF).to(tl.uint32)
        c2 = (id_full >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c0 * 0)
        # join(join(w0, w2), join(w1, w3))[q, i, j] is word 2i + j of quad q: column 4q + 2i + j.
        bits = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [BLOCK_N, BLOCK_K])
    else:
        cols = k0 + tl.arange(0, BLOCK_K)[None, :]
        zero = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.int64)
        id_full = ids + zero
        c0 = ((cols + zero) // 4).to(tl.uint32)
        c1 = (id_full & 0xFFFFFFFF).to(tl.uint32)
        c2 = (id_full >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c0 * 0)
        word = (cols + zero) % 4
        bits = tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))
    return bits


@triton.jit
def tile_keys(r, s, col_ok, seed_lo, seed_hi, ids, k0, MODE: tl.constexpr, FAST: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """What each mode ranks by: base-2 Gumbel keys, the rewards, or uniform bits (padding: -inf).

    ``s`` is ``beta * log2(e) * r``: the softmax key is ``s - log2(-log2 u)``.
    """
    if MODE == 1:
        key = r
    else:
        bits = philox_bits(seed_lo, seed_hi, ids, k0, BLOCK_N, BLOCK_K)
        v = (bits >> 8).to(tl.float32)  # 24 random bits, exact in float32
        if MODE == 0:
            # v * 2^-24 + 2^-25 rounds exactly as (v + 0.5) * 2^-24 (a power-of-two scale): one FFMA.
            # It is >= 2^-25 = U_MIN already; only v = 2^24 - 1 rounds up to 1 and is clamped.
            u = tl.minimum(v * U_SCALE + U_MIN, U_MAX)
            key = s - neg_log2_neg_log2(u, FAST)
        else:
            key = tl.where(col_ok, v, float("-inf"))
    return key
