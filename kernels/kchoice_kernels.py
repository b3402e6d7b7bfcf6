"""The Triton kernels of K-choice sampling (docs/THEORY.md section 1); launched by ``kchoice_triton``.

Design, and why (issue 26: a kernel limited by memory, not by instructions):

* ``K`` is a compile-time constant. Each ``K`` gets its own code: whole-chunk
  rows need no column mask, and with contiguous rows (``CONTIG``: row stride
  ``K``, unit column stride) the compiler proves 16-byte alignment when
  ``K % 4 == 0`` and reads the rewards with 128-bit loads.
* One program handles ``BLOCK_N`` rows (2-D tiles ``[BLOCK_N, BLOCK_K]``), each
  row read once, in chunks of ``BLOCK_K`` columns with an online (max, argmax)
  and an online logsumexp for large ``K``: registers never scale with ``K``.
* The rewards load is issued first in each chunk; the Philox noise, which
  needs no memory, hides its latency.
* Keys and logsumexp are base 2 (``kchoice_keys``): ``exp2`` and a fast
  ``log2`` on the special-function unit on GPUs, ``tl.log2`` under the interpreter.
* Validation in the same pass: a row whose logsumexp is not finite (NaN or
  +inf reward, all -inf row, ``beta * r`` overflow), or, for ``m > 1`` softmax,
  whose last log-probability is not finite (fewer than ``m`` finite scores),
  adds 1 to one int32 flag by a predicated atomic: no atomics, no extra
  kernel and no host sync when the rewards are valid. With one winner the flag
  counts the invalid rows; with ``m > 1`` a row failing both tests counts twice
  (one atomic site per test keeps the flag out of the registers across the passes).
* ``m > 1`` (Plackett-Luce): pass ``j`` finds the best key strictly after
  winner ``j - 1`` in the order (key desc, index asc) and, in the same pass,
  the logsumexp of exactly those remaining candidates. Rows of at most
  ``BLOCK_K`` (64) candidates keep their keys in registers across the passes;
  longer rows are re-read from L1/L2 and re-keyed (Philox is pure).
* The winner's own score is re-read once per row (one cached load) instead of
  being carried through the reductions.
* All math is fp32: fp16/bf16/fp64 inputs are converted right after loading.
"""

from __future__ import annotations

import triton
import triton.language as tl

from lightning_curate.kernels.kchoice_keys import LN2, LOG2E, fast_exp2, fast_log2, tile_keys

__all__ = ["MODE_CODES", "kchoice_one_kernel", "kchoice_topm_kernel"]

MODE_CODES = {"softmax": 0, "argmax": 1, "uniform": 2}
_INT_MAX = tl.constexpr(2147483647)


@triton.jit
def _load_scores(r_rows, rows_ok, k0, stride_rk, beta2,
                 K: tl.constexpr, BLOCK_K: tl.constexpr, CONTIG: tl.constexpr, BETA_ZERO: tl.constexpr):
    """Load a chunk of columns (padding: -inf); return (r, beta * log2(e) * r) in fp32, -inf kept (also at beta = 0).

    ``r_rows``: ``[BLOCK_N, 1]`` row starts. ``CONTIG`` (unit column stride, row stride ``K``) lets
    the compiler prove 16-byte alignment for ``K % 4 == 0`` and issue 128-bit loads.
    """
    cols = k0 + tl.arange(0, BLOCK_K)[None, :]
    if CONTIG:
        ptrs = r_rows + cols
    else:
        ptrs = r_rows + cols.to(tl.int64) * stride_rk
    if K % BLOCK_K == 0:
        mask = rows_ok  # whole chunks: the mask is constant along a row, loads stay vectorised
    else:
        mask = rows_ok & (cols < K)
    r = tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32)
    if BETA_ZERO:
        s2 = tl.where(r == float("-inf"), float("-inf"), r * 0.0)  # NaN and +inf stay NaN: flagged
    else:
        s2 = r * beta2
    return r, s2


@triton.jit
def _lse_update(run_max, run_sum, r, s2, beta2, FAST: tl.constexpr):
    """Online logsumexp in base 2: fold a chunk into (max of r, sum of 2^(s2 - beta2 * max)).

    The shift ``beta2 * max(r)`` is the maximum's own ``s2`` (same rounding), so its term is exactly 1.
    """
    new_max = tl.maximum(run_max, tl.max(r, axis=1))
    shift = tl.where(new_max == float("-inf"), 0.0, new_max * beta2)  # no (-inf) - (-inf)
    old_shift = tl.where(run_max == float("-inf"), 0.0, run_max * beta2)
    run_sum = run_sum * fast_exp2(old_shift - shift, FAST) + tl.sum(fast_exp2(s2 - shift[:, None], FAST), axis=1)
    return new_max, run_sum


@triton.jit
def _lse_final(run_max, run_sum, beta, BETA_ZERO: tl.constexpr, FAST: tl.constexpr):
    """``logsumexp(beta * r)`` from the running (max of r, base-2 sum); -inf for an empty row.

    ``log(sum) = ln2 * log2(sum)`` with ``sum`` in [1, K]: ``lg2.approx`` is within ~1e-7 of it.
    """
    if BETA_ZERO:
        safe_max = tl.zeros_like(run_max)
    else:
        safe_max = tl.where(run_max == float("-inf"), 0.0, run_max * beta)
    log_sum = fast_log2(tl.where(run_sum > 0, run_sum, 1.0), FAST) * LN2
    return tl.where(run_sum > 0, safe_max + log_sum, float("-inf"))


@triton.jit
def _flag_bad_rows(FLAG, bad, rows_ok):
    """Count the invalid rows into the int32 ``FLAG``: predicated atomics, none issued when all rows are valid."""
    tl.atomic_add(FLAG + tl.zeros_like(bad.to(tl.int32)), 1, mask=bad & rows_ok, sem="relaxed")


@triton.jit
def _winner_score(r_rows, best_idx, stride_rk, row_ok, beta, CONTIG: tl.constexpr):
    """The score ``beta * r`` of each row's winner (re-read: one cached load per row)."""
    off = best_idx.to(tl.int64) if CONTIG else best_idx.to(tl.int64) * stride_rk
    r = tl.load(r_rows + off, mask=row_ok, other=0.0).to(tl.float32)
    return r * beta


@triton.jit
def _row_ids(IDS, rows, row_ok, ROW_IDS: tl.constexpr):
    """Each row's Philox stream id: its batch position, or the caller's id (per-row seeds)."""
    if ROW_IDS:
        return tl.load(IDS + rows, mask=row_ok, other=0)
    else:
        return rows


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def kchoice_one_kernel(
    R, IDS, IDX, LP, LSE, FLAG,
    N, stride_rn, stride_rk,
    beta, seed_lo, seed_hi,
    K: tl.constexpr, MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CONTIG: tl.constexpr, BETA_ZERO: tl.constexpr, ROW_IDS: tl.constexpr, WRITE_LP: tl.constexpr,
    FAST: tl.constexpr,
):
    """One winner per row: one read of the rewards with a running (max, argmax), logsumexp and validity."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    r_base = R + rows * (K if CONTIG else stride_rn)
    r_rows = r_base[:, None]
    rows_ok2 = row_ok[:, None]
    ids = _row_ids(IDS, rows, row_ok, ROW_IDS)[:, None]
    beta2 = beta * LOG2E
    best_key = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
    run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # The load is issued first; the noise below hides its latency.
        r, s2 = _load_scores(r_rows, rows_ok2, k0, stride_rk, beta2, K, BLOCK_K, CONTIG, BETA_ZERO)
        cols = k0 + tl.arange(0, BLOCK_K)[None, :]
        key = tile_keys(r, s2, cols < K, seed_lo, seed_hi, ids, k0, MODE, FAST, BLOCK_N, BLOCK_K)
        # The chunk's best (highest key, lowest index); a later chunk wins only when strictly better.
        c_key, c_arg = tl.max(key, axis=1, return_indices=True, return_indices_tie_break_left=True)
        take = (c_key > best_key) | (k0 == 0)
        best_key = tl.where(take, c_key, best_key)
        best_idx = tl.where(take, c_arg + k0, best_idx)
        run_max, run_sum = _lse_update(run_max, run_sum, r, s2, beta2, FAST)
    lse = _lse_final(run_max, run_sum, beta, BETA_ZERO, FAST)
    # A row of NaN keys elects no valid winner: stay inside the row (the flag refuses it).
    best_idx = tl.minimum(tl.maximum(best_idx, 0), K - 1)
    _flag_bad_rows(FLAG, (lse != lse) | (tl.abs(lse) == float("inf")), row_ok)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(IDX + rows, best_idx, mask=row_ok)
    if WRITE_LP:
        if MODE == 0:
            if BETA_ZERO:
                lp = -lse
            else:
                lp = _winner_score(r_base, best_idx, stride_rk, row_ok, beta, CONTIG) - lse
        elif MODE == 1:
            lp = tl.zeros([BLOCK_N], dtype=tl.float32)
        else:
            lp = -tl.log(tl.zeros([BLOCK_N], dtype=tl.float32) + K)
        tl.store(LP + rows, lp, mask=row_ok)


@triton.jit
def _race_chunk(key, r, s2, cols, col_ok, first, prev_key, prev_idx, best_key, best_idx, run_max, run_sum,
                beta2, FAST: tl.constexpr):
    """Fold one chunk into a Plackett-Luce pass: the best key strictly after the previous winner in the
    order (key desc, index asc), and the logsumexp of exactly the candidates still in the race."""
    elig = col_ok & ((key < prev_key[:, None]) | ((key == prev_key[:, None]) & (cols > prev_idx[:, None])))
    kk = tl.where(elig, key, float("-inf"))
    c_key = tl.max(kk, axis=1)
    c_idx = tl.min(tl.where(elig & (kk == c_key[:, None]), cols, _INT_MAX), axis=1)
    take = (c_key > best_key) | ((c_key == best_key) & (c_idx < best_idx))
    best_key = tl.where(take, c_key, best_key)
    best_idx = tl.where(take, c_idx, best_idx)
    # The first pass's logsumexp takes every column, so a NaN score (never in the race,
    # its comparisons are false) shows in it and the row is flagged.
    in_lse = elig | (col_ok & first)
    run_max, run_sum = _lse_update(run_max, run_sum, tl.where(in_lse, r, float("-inf")),
                                   tl.where(in_lse, s2, float("-inf")), beta2, FAST)
    return best_key, best_idx, run_max, run_sum


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])
def kchoice_topm_kernel(
    R, IDS, IDX, LP, LSE, FLAG,
    N, stride_rn, stride_rk,
    beta, seed_lo, seed_hi, M,
    K: tl.constexpr, MODE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    CONTIG: tl.constexpr, BETA_ZERO: tl.constexpr, ROW_IDS: tl.constexpr, WRITE_LP: tl.constexpr,
    FAST: tl.constexpr,
):
    """``M > 1`` winners per row in order: ``M`` passes, each after the previous winner.

    A row of at most ``BLOCK_K`` candidates is read and keyed once and raced ``M`` times in
    registers; longer rows are re-read (from L1/L2) and re-keyed in each pass (Philox is pure).
    """
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_ok = rows < N
    r_base = R + rows * (K if CONTIG else stride_rn)
    r_rows = r_base[:, None]
    rows_ok2 = row_ok[:, None]
    ids = _row_ids(IDS, rows, row_ok, ROW_IDS)[:, None]
    beta2 = beta * LOG2E
    # Winner of the previous pass; (+inf, -1) puts every candidate "after" it.
    prev_key = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
    prev_idx = tl.full([BLOCK_N], -1, dtype=tl.int32)
    cum_lp = tl.zeros([BLOCK_N], dtype=tl.float32)
    if K <= BLOCK_K:
        r1, s21 = _load_scores(r_rows, rows_ok2, 0, stride_rk, beta2, K, BLOCK_K, CONTIG, BETA_ZERO)
        cols1 = tl.arange(0, BLOCK_K)[None, :]
        key1 = tile_keys(r1, s21, cols1 < K, seed_lo, seed_hi, ids, 0, MODE, FAST, BLOCK_N, BLOCK_K)
    for j in range(0, M):
        best_key = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        best_idx = tl.full([BLOCK_N], _INT_MAX, dtype=tl.int32)
        run_max = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
        run_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
        if K <= BLOCK_K:  # the row's keys are in registers: no reload, no Philox again
            best_key, best_idx, run_max, run_sum = _race_chunk(
                key1, r1, s21, cols1, cols1 < K, j == 0, prev_key, prev_idx, best_key, best_idx,
                run_max, run_sum, beta2, FAST)
        else:
            for k0 in range(0, K, BLOCK_K):
                r, s2 = _load_scores(r_rows, rows_ok2, k0, stride_rk, beta2, K, BLOCK_K, CONTIG, BETA_ZERO)
                cols2 = k0 + tl.arange(0, BLOCK_K)[None, :]
                col_ok = cols2 < K
                key = tile_keys(r, s2, col_ok, seed_lo, seed_hi, ids, k0, MODE, FAST, BLOCK_N, BLOCK_K)
                best_key, best_idx, run_max, run_sum = _race_chunk(
                    key, r, s2, cols2, col_ok, j == 0, prev_key, prev_idx, best_key, best_idx,
                    run_max, run_sum, beta2, FAST)
        lse_left = _lse_final(run_max, run_sum, beta, BETA_ZERO, FAST)
        best_idx = tl.minimum(best_idx, K - 1)  # no candidate left (NaN keys): stay inside the row
        if j == 0:
            tl.store(LSE + rows, lse_left, mask=row_ok)
            # Not finite for NaN, +inf, all -inf or overflow (every column is in the first pass).
            _flag_bad_rows(FLAG, (lse_left != lse_left) | (tl.abs(lse_left) == float("inf")), row_ok)
        if MODE == 0:
            if BETA_ZERO:
                cum_lp -= lse_left
            else:
                cum_lp += _winner_score(r_base, best_idx, stride_rk, row_ok, beta, CONTIG) - lse_left
        elif MODE == 2:
            cum_lp -= tl.log(tl.zeros([BLOCK_N], dtype=tl.float32) + (K - j))
        out = rows * M + j
        tl.store(IDX + out, best_idx, mask=row_ok)
        if WRITE_LP:
            tl.store(LP + out, cum_lp, mask=row_ok)
        prev_key = best_key
        prev_idx = best_idx
    # Softmax: fewer than M finite scores leave a -inf log-probability (a row may count twice).
    if MODE == 0:
        _flag_bad_rows(FLAG, (cum_lp != cum_lp) | (tl.abs(cum_lp) == float("inf")), row_ok)
