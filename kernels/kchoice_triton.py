"""Triton kernels for batched K-choice sampling (docs/THEORY.md section 1), and their launcher.

``kchoice_triton`` is called by :func:`lightning_curate.ops.kchoice.kchoice` after it
validated the inputs; it has the same semantics as the torch path
(``lightning_curate.ops.kchoice_torch``) except for the random stream.

Design, and why:

* Two kernels: ``_kchoice_one_kernel`` for one winner per slot (the common
  case: one pass, few live values) and ``_kchoice_topm_kernel`` for ``m > 1``
  (Plackett-Luce: ``m`` passes). Keeping the ``m > 1`` bookkeeping out of the
  fast path keeps it within the register budget (tests/ops/test_kchoice_compile.py
  compiles every variant for sm_80 and sm_90 and fails on spills or on more
  than 128 registers per thread).
* One program handles ``BLOCK_N`` rows at once (2-D tiles ``[BLOCK_N, BLOCK_K]``),
  each row streamed in chunks of ``BLOCK_K`` columns with an online (max,
  argmax) and an online logsumexp, so registers never scale with ``K`` and no
  probability tensor is ever written to memory.
* Launch configuration: on CUDA a small ``triton.autotune`` set keyed by
  ``(K, m, mode)`` and the rewards' dtype; each config is a tile of 256 to 1024
  elements over 2 to 8 warps (4 elements per thread), with ``BLOCK_K =
  min(next_pow2(K), 128)`` and ``BLOCK_N = tile // BLOCK_K``. Under the CPU
  interpreter one big tile (few NumPy steps).
* The draw does not depend on the tile: candidate ``(row, col)`` gets word
  ``col % 4`` of ``Philox(seed; col // 4, row low, row high, 0)``, so one
  Philox call serves four columns (for ``BLOCK_K >= 4``; narrower tiles pick
  the same word with a select). ``m > 1`` passes recompute the noise: Philox is pure.
* ``m > 1`` winners: pass ``j`` finds the best perturbed score strictly after
  winner ``j - 1`` in the order (score desc, index asc) and, in the same pass,
  the logsumexp of exactly those remaining candidates, so ``log P(winner_j |
  remaining)`` needs no scatter and no extra memory.
* The winner's own score is re-read once per row after its pass (one cached
  load) instead of being tracked through the chunk loop.
* All math is fp32: fp16/bf16/fp64 inputs are converted right after loading.
* ``chosen`` is gathered by ``lightning_curate.kernels.gather_triton``.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["GPU_CONFIGS", "kchoice_triton", "gpu_block_k", "interp_blocks"]

_MODE_CODES = {"softmax": 0, "argmax": 1, "uniform": 2}

# Uniforms come from the top 24 bits of a Philox word: u = (k + 0.5) / 2^24,
# then clamped into the open interval (0, 1) so both logs stay finite.
_U_SCALE = tl.constexpr(1.0 / 16777216.0)
_U_MIN = tl.constexpr(2.0**-25)
_U_MAX = tl.constexpr(1.0 - 2.0**-24)
_INT_MAX = tl.constexpr(2147483647)

# CUDA: (tile elements, num_warps), the autotune set: 4 elements per thread (8 per
# thread already costs 122 registers for softmax at K = 2); BLOCK_K is capped at 128.
GPU_CONFIGS = ((256, 2), (512, 4), (1024, 8))
_GPU_BLOCK_K_CAP = 128
# The interpreter runs one NumPy step per program and per op: few, big tiles.
_INTERP_TILE = 1 << 15
_INTERP_BLOCK_K_CAP = 256
_SEED_HALF = 31  # the 62-bit seed travels as two 31-bit halves (always int32 arguments)


@triton.jit
def _philox_bits(seed_lo, seed_hi, rows, k0, BLOCK_K: tl.constexpr):
    """Random 32-bit words for a tile, a pure function of (seed, row, column).

    ``rows``: [BLOCK_N, 1] int64; columns ``k0 .. k0 + BLOCK_K - 1``. Column ``c``
    uses word ``c % 4`` of the Philox call with counter ``c // 4``.
    """
    seed = (seed_hi.to(tl.int64) << 31) | seed_lo.to(tl.int64)
    if BLOCK_K >= 4:
        q = k0 // 4 + tl.arange(0, BLOCK_K // 4)[None, :]  # k0 is a multiple of BLOCK_K
        zero = tl.zeros([rows.shape[0], BLOCK_K // 4], dtype=tl.int64)
        row_full = rows + zero
        c0 = (q + zero).to(tl.uint32)
        c1 = (row_full & 0xFFFFFFFF).to(tl.uint32)
        c2 = (row_full >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c0 * 0)
        # join(join(w0, w2), join(w1, w3))[q, i, j] is word 2i + j of quad q: column 4q + 2i + j.
        bits = tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), [rows.shape[0], BLOCK_K])
    else:
        cols = k0 + tl.arange(0, BLOCK_K)[None, :]
        zero = tl.zeros([rows.shape[0], BLOCK_K], dtype=tl.int64)
        row_full = rows + zero
        c0 = ((cols + zero) // 4).to(tl.uint32)
        c1 = (row_full & 0xFFFFFFFF).to(tl.uint32)
        c2 = (row_full >> 32).to(tl.uint32)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c0 * 0)
        word = (cols + zero) % 4
        bits = tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))
    return bits


@triton.jit
def _keys(r, s, col_ok, seed_lo, seed_hi, rows2, k0, MODE: tl.constexpr, BLOCK_K: tl.constexpr):
    """The score each mode ranks by: beta r + Gumbel, r, or a uniform (padding: -inf)."""
    if MODE == 1:
        key = r
    else:
        bits = _philox_bits(seed_lo, seed_hi, rows2, k0, BLOCK_K)
        v = (bits >> 8).to(tl.float32)  # 24 random bits, exact in float32
        if MODE == 0:
            u = tl.minimum(tl.maximum((v + 0.5) * _U_SCALE, _U_MIN), _U_MAX)
            key = s - tl.log(-tl.log(u))
        else:
            key = tl.where(col_ok, v, float("-inf"))
    return key


@triton.jit
def _scores(r_ptrs, mask, beta):
    """Load a chunk (padding: -inf) and return (r, beta * r) in fp32, -inf kept -inf (also for beta = 0)."""
    r = tl.load(r_ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    is_neg_inf = r == float("-inf")
    s = tl.where(is_neg_inf, float("-inf"), tl.where(is_neg_inf, 0.0, r) * beta)
    return r, s


@triton.jit
def _lse_update(run_max, run_sum, se):
    """Online logsumexp: fold the chunk's scores ``se`` into (run_max, run_sum)."""
    new_max = tl.maximum(run_max, tl.max(se, axis=1))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # no (-inf) - (-inf)
    run_sum = run_sum * tl.exp(run_max - shift) + tl.sum(tl.exp(se - shift[:, None]), axis=1)
    return new_max, run_sum


@triton.jit
def _lse_final(run_max, run_sum):
    safe_max = tl.where(run_max == float("-inf"), 0.0, run_max)
    return tl.where(run_sum > 0, safe_max + tl.log(tl.where(run_sum > 0, run_sum, 1.0)), float("-inf"))


@triton.jit
def _winner_score(r_base, best_idx, stride_rk, row_ok, beta):
    """The score ``beta * r`` of each row's winner (re-read: one cached load per row)."""
    r = tl.load(r_base + best_idx.to(tl.int64) * stride_rk, mask=row_ok, other=0.0).to(tl.float32)
    return r * beta


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _kchoice_one_kernel(
    R, IDX, LP, LSE,
    N, K, stride_rn, stride_rk,
    beta, seed_lo, seed_hi,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One winner per row: a single pass with an online (max, argmax) and logsumexp."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    rows2 = rows[:, None]
    r_base = R + rows * stride_rn
    best_key = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    best_idx = tl.full([BLOCK_N], _INT_MAX, dtype=tl.int32)
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols2 = (k0 + tl.arange(0, BLOCK_K))[None, :]
        col_ok = cols2 < K
        r, s = _scores(r_base[:, None] + cols2.to(tl.int64) * stride_rk, row_ok[:, None] & col_ok, beta)
        key = _keys(r, s, col_ok, seed_lo, seed_hi, rows2, k0, MODE, BLOCK_K)
        # Chunk's best (highest key, lowest index); a later chunk only wins when strictly better.
        c_key = tl.max(key, axis=1)
        c_idx = tl.min(tl.where(key == c_key[:, None], cols2, _INT_MAX), axis=1)
        take = c_key > best_key
        best_key = tl.where(take, c_key, best_key)
        best_idx = tl.where(take | (best_idx == _INT_MAX), c_idx, best_idx)
        run_max, run_sum = _lse_update(run_max, run_sum, s)
    lse = _lse_final(run_max, run_sum)
    # A row of NaN keys elects no winner: stay inside the row (the op refuses it from lse).
    best_idx = tl.minimum(best_idx, K - 1)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(IDX + rows, best_idx.to(tl.int64), mask=row_ok)
    if MODE == 0:
        lp = _winner_score(r_base, best_idx, stride_rk, row_ok, beta) - lse
    elif MODE == 1:
        lp = tl.zeros([BLOCK_N], dtype=tl.float32)
    else:
        lp = -tl.log(tl.zeros([BLOCK_N], dtype=tl.float32) + K)  # K may be a constexpr 1
    tl.store(LP + rows, lp, mask=row_ok)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def _kchoice_topm_kernel(
    R, IDX, LP, LSE,
    N, K, stride_rn, stride_rk,
    beta, seed_lo, seed_hi, M,
    MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``M > 1`` winners per row in order: ``M`` passes, each after the previous winner."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    rows2 = rows[:, None]
    r_base = R + rows * stride_rn
    # Winner of the previous pass; (+inf, -1) puts every candidate "after" it.
    prev_key = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    prev_idx = tl.full([BLOCK_N], -1, dtype=tl.int32)
    cum_lp = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in range(0, M):
        best_key = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        best_idx = tl.full([BLOCK_N], _INT_MAX, dtype=tl.int32)
        run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols2 = (k0 + tl.arange(0, BLOCK_K))[None, :]
            col_ok = cols2 < K
            r, s = _scores(r_base[:, None] + cols2.to(tl.int64) * stride_rk, row_ok[:, None] & col_ok, beta)
            key = _keys(r, s, col_ok, seed_lo, seed_hi, rows2, k0, MODE, BLOCK_K)
            # Still in the race: strictly after the previous winner in the order
            # (key desc, index asc). Padding columns never are.
            elig = col_ok & ((key < prev_key[:, None]) | ((key == prev_key[:, None]) & (cols2 > prev_idx[:, None])))
            kk = tl.where(elig, key, float("-inf"))
            c_key = tl.max(kk, axis=1)
            c_idx = tl.min(tl.where(elig & (kk == c_key[:, None]), cols2, _INT_MAX), axis=1)
            take = (c_key > best_key) | ((c_key == best_key) & (c_idx < best_idx))
            best_key = tl.where(take, c_key, best_key)
            best_idx = tl.where(take, c_idx, best_idx)
            # The first pass's logsumexp takes every column, so a NaN score (never in the race,
            # its comparisons are false) shows in it and the op refuses the row.
            in_lse = elig | (col_ok & (j == 0))
            run_max, run_sum = _lse_update(run_max, run_sum, tl.where(in_lse, s, float("-inf")))
        lse_left = _lse_final(run_max, run_sum)
        best_idx = tl.minimum(best_idx, K - 1)  # no candidate left (NaN keys): stay inside the row
        if j == 0:
            tl.store(LSE + rows, lse_left, mask=row_ok)
        if MODE == 0:
            cum_lp += _winner_score(r_base, best_idx, stride_rk, row_ok, beta) - lse_left
        elif MODE == 2:
            cum_lp -= tl.log((K - j).to(tl.float32))
        out = rows * M + j
        tl.store(IDX + out, best_idx.to(tl.int64), mask=row_ok)
        tl.store(LP + out, cum_lp, mask=row_ok)
        prev_key = best_key
        prev_idx = best_idx


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def gpu_block_k(k: int) -> int:
    """``BLOCK_K`` on CUDA for ``K`` candidates per row."""
    return min(_next_pow2(k), _GPU_BLOCK_K_CAP)


def interp_blocks(n: int, k: int) -> tuple[int, int]:
    """``(BLOCK_N, BLOCK_K)`` under the interpreter: one big tile."""
    block_k = min(_next_pow2(k), _INTERP_BLOCK_K_CAP)
    return max(1, min(_next_pow2(n), _INTERP_TILE // block_k)), block_k


def _configs_for_k(configs, named_args, **kwargs):
    """Autotune pruning: keep the configs whose BLOCK_K suits this K."""
    block_k = gpu_block_k(named_args["K"])
    return [c for c in configs if c.kwargs["BLOCK_K"] == block_k]


def _autotuned(kernel, key):
    configs = [triton.Config({"BLOCK_N": max(1, tile // bk), "BLOCK_K": bk}, num_warps=warps)
               for bk in (1 << i for i in range(_GPU_BLOCK_K_CAP.bit_length())) for tile, warps in GPU_CONFIGS]
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _configs_for_k})(kernel)


_one_tuned = _autotuned(_kchoice_one_kernel, ["K", "MODE"])
_topm_tuned = _autotuned(_kchoice_topm_kernel, ["K", "M", "MODE"])


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_block(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value!r}")
    return value


def _launch(rewards: Tensor, beta: float, m: int, mode: str, seed: int,
            blocks: Optional[tuple[int, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Run the kernel for ``m`` winners: ``(index [N, m], log_prob [N, m], logsumexp [N])``.

    ``blocks = (BLOCK_N, BLOCK_K)`` fixes the tile (4 warps on CUDA); ``None`` lets the
    autotuner pick among ``GPU_CONFIGS`` (CUDA).
    """
    n, k = rewards.shape
    dev = rewards.device
    index = torch.empty((n, m), dtype=torch.int64, device=dev)
    log_prob = torch.empty((n, m), dtype=torch.float32, device=dev)
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    if n == 0:
        return index, log_prob, lse
    seed = int(seed) % (1 << (2 * _SEED_HALF))
    args = [rewards, index, log_prob, lse, n, k, rewards.stride(0), rewards.stride(1), float(beta),
            seed & ((1 << _SEED_HALF) - 1), seed >> _SEED_HALF]
    if m > 1:
        args.append(m)
    if blocks is not None:
        kernel = _kchoice_topm_kernel if m > 1 else _kchoice_one_kernel
        kernel[(triton.cdiv(n, blocks[0]),)](*args, MODE=_MODE_CODES[mode], BLOCK_N=blocks[0], BLOCK_K=blocks[1])
    else:
        kernel = _topm_tuned if m > 1 else _one_tuned
        kernel[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args, MODE=_MODE_CODES[mode])
    return index, log_prob, lse


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
    (powers of two) fix the tile shape (4 warps on CUDA) instead of the
    autotuned choice; the draw does not depend on them.
    """
    n, k = rewards.shape
    m = int(num_winners)
    rewards = rewards.detach()  # the kernel reads raw memory; no autograd through it
    if candidates is not None:
        candidates = candidates.detach()
    dev = rewards.device
    interpret = dev.type != "cuda"
    fixed = block_n is not None or block_k is not None or interpret
    if fixed:
        if block_k is None:
            block_k = interp_blocks(n, k)[1] if interpret else gpu_block_k(k)
        if block_n is None:
            block_n = interp_blocks(n, k)[0] if interpret else max(1, GPU_CONFIGS[0][0] // block_k)
        block_n = _check_block("block_n", block_n)
        block_k = _check_block("block_k", block_k)

    with _on_device(dev):
        index, log_prob, lse = _launch(rewards, beta, m, mode, seed, (block_n, block_k) if fixed else None)
    if m == 1:
        index, log_prob = index.view(n), log_prob.view(n)
    chosen = None
    if candidates is not None:
        from lightning_curate.kernels.gather_triton import gather_triton

        with _on_device(dev):
            chosen = gather_triton(candidates, index, interpret)
    return index, log_prob, lse, chosen
