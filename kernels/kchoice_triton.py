"""Triton kernels for batched K-choice sampling (docs/THEORY.md section 1).

``kchoice_triton`` is called by :func:`lightning_curate.ops.kchoice.kchoice` after it
validated the inputs; it has the same semantics as the torch path
(``lightning_curate.ops.kchoice_torch``) except for the random stream.

Design, and why:

* One program handles ``BLOCK_N`` rows at once (2-D tiles ``[BLOCK_N, BLOCK_K]``):
  rows are short (``K`` is small in practice), so one row per program would
  leave the GPU idle and make the CPU interpreter crawl.
* Any ``K``: each row is streamed in chunks of ``BLOCK_K`` columns with an
  online (max, argmax) and an online logsumexp, so registers never scale with
  ``K`` and no probability tensor is ever written to memory.
* The Gumbel noise is counter-based (Philox keyed on ``seed``, counters =
  column, row low/high words): the draw of candidate ``(row, col)`` is the
  same whatever the tile sizes, and ``row * K + col`` never overflows.
* ``m > 1`` winners (Plackett-Luce) take ``m`` passes. Pass ``j`` finds the best
  perturbed score strictly after winner ``j - 1`` in the order (score desc,
  index asc) and, in the same pass, the logsumexp of exactly those remaining
  candidates, so ``log P(winner_j | remaining)`` needs no scatter and no
  extra memory. The noise is recomputed, not stored: Philox is pure.
* All math is fp32: fp16/bf16/fp64 inputs are upcast (or downcast) right
  after loading (bf16 arithmetic is unreliable in the interpreter).
* ``chosen`` is gathered by a second, bit-copying kernel: candidates of any
  1/2/4/8-byte dtype are viewed as integers of the same width, so bool, fp8
  and complex64 need no special case; wider dtypes fall back to torch.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["kchoice_triton"]

_MODE_CODES = {"softmax": 0, "argmax": 1, "uniform": 2}

# Uniforms come from the top 24 bits of a Philox word: u = (k + 0.5) / 2^24,
# then clamped into the open interval (0, 1) so both logs stay finite.
_U_SCALE = tl.constexpr(1.0 / 16777216.0)
_U_MIN = tl.constexpr(2.0**-25)
_U_MAX = tl.constexpr(1.0 - 2.0**-24)

# Tile sizes, in elements. The interpreter runs one NumPy step per program and
# per op, so it wants few, big tiles; a GPU wants tiles that fit in registers.
_GPU_TILE = 2048
_GPU_BLOCK_K_CAP = 128
_INTERP_TILE = 1 << 15
_INTERP_BLOCK_K_CAP = 256
_GATHER_GPU_TILE = 4096
_GATHER_INTERP_TILE = 1 << 16
_MAX_GRID_Y = 65535


@triton.jit
def _gumbel(seed, rows, cols):
    """Standard Gumbel noise for the [rows, cols] tile, a pure function of (seed, row, col)."""
    zero = tl.zeros([rows.shape[0], cols.shape[1]], dtype=tl.int64)
    row_full = rows + zero
    c0 = (cols + zero).to(tl.uint32)
    c1 = (row_full & 0xFFFFFFFF).to(tl.uint32)
    c2 = (row_full >> 32).to(tl.uint32)
    c3 = c0 * 0
    bits, _, _, _ = tl.philox(seed, c0, c1, c2, c3)
    u = ((bits >> 8).to(tl.float32) + 0.5) * _U_SCALE
    u = tl.minimum(tl.maximum(u, _U_MIN), _U_MAX)
    return -tl.log(-tl.log(u))


@triton.jit(do_not_specialize=["seed"])
def _kchoice_kernel(
    R, IDX, LP, LSE,
    N, K, stride_rn, stride_rk,
    beta, seed, M,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    rows2 = rows[:, None]
    r_base = R + rows2 * stride_rn

    neg_inf = float("-inf")
    # Winner of the previous pass; (+inf, -1) puts every candidate "after" it.
    prev_val = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    prev_idx = tl.full([BLOCK_N], -1, dtype=tl.int32)
    cum_lp = tl.zeros([BLOCK_N], dtype=tl.float32)

    for j in range(0, M):
        best_val = tl.full([BLOCK_N], neg_inf, dtype=tl.float32)
        best_idx = tl.full([BLOCK_N], 2147483647, dtype=tl.int32)
        best_s = tl.zeros([BLOCK_N], dtype=tl.float32)
        run_max = tl.full([BLOCK_N], neg_inf, dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            cols2 = cols[None, :]
            mask = row_ok[:, None] & col_ok[None, :]
            r = tl.load(r_base + cols2.to(tl.int64) * stride_rk, mask=mask, other=0.0).to(tl.float32)
            # beta * r, with -inf kept -inf even for beta = 0 (0 * -inf is NaN).
            is_neg_inf = r == neg_inf
            s = tl.where(is_neg_inf, neg_inf, tl.where(is_neg_inf, 0.0, r) * beta)
            if MODE == 1:
                key = r
            elif MODE == 0:
                key = s + _gumbel(seed, rows2, cols2)
            else:
                key = _gumbel(seed, rows2, cols2)
            # Candidates still in the race: strictly after the previous winner in
            # the order (key desc, index asc). Padding columns never are.
            after = (key < prev_val[:, None]) | ((key == prev_val[:, None]) & (cols2 > prev_idx[:, None]))
            elig = col_ok[None, :] & after

            # Chunk's best (highest key, lowest index), merged into the running best.
            kk = tl.where(elig, key, neg_inf)
            c_val = tl.max(kk, axis=1)
            c_idx = tl.min(tl.where(elig & (kk == c_val[:, None]), cols2, 2147483647), axis=1)
            c_s = tl.sum(tl.where(cols2 == c_idx[:, None], s, 0.0), axis=1)
            take = (c_val > best_val) | ((c_val == best_val) & (c_idx < best_idx))
            best_val = tl.where(take, c_val, best_val)
            best_idx = tl.where(take, c_idx, best_idx)
            best_s = tl.where(take, c_s, best_s)

            # Online logsumexp of beta * r over the remaining candidates.
            se = tl.where(elig, s, neg_inf)
            new_max = tl.maximum(run_max, tl.max(se, axis=1))
            shift = tl.where(new_max == neg_inf, 0.0, new_max)  # no (-inf) - (-inf)
            run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(se - shift[:, None]), axis=1)
            run_max = new_max

        safe_max = tl.where(run_max == neg_inf, 0.0, run_max)
        lse_left = tl.where(run_sum > 0, safe_max + tl.log(tl.where(run_sum > 0, run_sum, 1.0)), neg_inf)
        if j == 0:
            tl.store(LSE + rows, lse_left, mask=row_ok)
        if MODE == 0:
            cum_lp += best_s - lse_left
        elif MODE == 2:
            cum_lp -= tl.log((K - j).to(tl.float32))
        out = rows * M + j
        tl.store(IDX + out, best_idx.to(tl.int64), mask=row_ok)
        tl.store(LP + out, cum_lp, mask=row_ok)
        prev_val = best_val
        prev_idx = best_idx


@triton.jit
def _gather_kernel(
    C, IDX, OUT,
    ROWS, M, D, stride_cn, stride_ck,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """OUT[i, :] = C[i // M, IDX[i], :] for the flattened [N * M] winners; a bit copy."""
    pid_r = tl.program_id(0)
    pid_d = tl.program_id(1)
    n_prog_d = tl.num_programs(1)
    r = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    r_ok = r < ROWS
    idx = tl.load(IDX + r, mask=r_ok, other=0)
    src = C + (r // M)[:, None] * stride_cn + idx[:, None] * stride_ck
    dst = OUT + r[:, None] * D
    for d0 in range(pid_d * BLOCK_D, D, n_prog_d * BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = r_ok[:, None] & (d < D)[None, :]
        v = tl.load(src + d[None, :], mask=mask)
        tl.store(dst + d[None, :], v, mask=mask)


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_block(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value!r}")
    return value


_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _gather(candidates: Tensor, index: Tensor, interpret: bool) -> Tensor:
    """``candidates[arange(N), index]`` gathered by ``_gather_kernel``."""
    n, k = candidates.shape[:2]
    trailing = tuple(candidates.shape[2:])
    out_shape = tuple(index.shape) + trailing
    bits = _BIT_VIEWS.get(candidates.element_size())
    d = 1
    for size in trailing:
        d *= size
    if bits is None or d == 0:
        # Not a plain 1/2/4/8-byte element (e.g. complex128), or nothing to copy.
        from lightning_curate.ops.kchoice_torch import gather_candidates

        return gather_candidates(candidates, index)
    # Trailing dims must be one contiguous run of D elements; dims 0/1 may have any stride.
    expected = 1
    for size, stride in zip(reversed(trailing), reversed(candidates.stride()[2:])):
        if size != 1 and stride != expected:
            candidates = candidates.contiguous()
            break
        expected *= size
    src = candidates.view(bits) if candidates.dtype != bits else candidates
    rows = index.numel()
    m = rows // n
    out = torch.empty((rows, d), dtype=bits, device=candidates.device)
    tile = _GATHER_INTERP_TILE if interpret else _GATHER_GPU_TILE
    block_d = min(_next_pow2(d), tile)
    block_r = max(1, min(_next_pow2(rows), tile // block_d))
    grid = (triton.cdiv(rows, block_r), min(triton.cdiv(d, block_d), _MAX_GRID_Y))
    _gather_kernel[grid](src, index.reshape(-1), out, rows, m, d,
                         src.stride(0), src.stride(1), BLOCK_R=block_r, BLOCK_D=block_d)
    if out.dtype != candidates.dtype:
        out = out.view(candidates.dtype)
    return out.view(out_shape)


def kchoice_triton(
    rewards: Tensor,
    beta: float,
    *,
    num_winners: int,
    mode: str,
    seed: int,
    candidates: Optional[Tensor] = None,
    block_n: Optional[int] = None,
    block_k: Optional[int] = None,
) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Launch the K-choice kernel on validated inputs (see ``lightning_curate.kchoice``).

    Returns ``(index, log_prob, logsumexp, chosen)``. ``block_n`` / ``block_k``
    (powers of two) override the tile shape; the draw does not depend on them.
    """
    n, k = rewards.shape
    m = int(num_winners)
    rewards = rewards.detach()  # the kernel reads raw memory; no autograd through it
    if candidates is not None:
        candidates = candidates.detach()
    dev = rewards.device
    interpret = dev.type != "cuda"
    if block_k is None:
        block_k = min(_next_pow2(k), _INTERP_BLOCK_K_CAP if interpret else _GPU_BLOCK_K_CAP)
    if block_n is None:
        tile = _INTERP_TILE if interpret else _GPU_TILE
        block_n = max(1, min(_next_pow2(n), tile // block_k))
    block_n = _check_block("block_n", block_n)
    block_k = _check_block("block_k", block_k)

    index = torch.empty((n, m), dtype=torch.int64, device=dev)
    log_prob = torch.empty((n, m), dtype=torch.float32, device=dev)
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    if n > 0:
        grid = (triton.cdiv(n, block_n),)
        with _on_device(dev):
            _kchoice_kernel[grid](
                rewards, index, log_prob, lse,
                n, k, rewards.stride(0), rewards.stride(1),
                float(beta), int(seed), m,
                MODE=_MODE_CODES[mode], BLOCK_N=block_n, BLOCK_K=block_k,
            )
    if m == 1:
        index, log_prob = index.view(n), log_prob.view(n)
    chosen = None
    if candidates is not None:
        with _on_device(dev):
            chosen = _gather(candidates, index, interpret)
    return index, log_prob, lse, chosen
