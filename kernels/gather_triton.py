"""Triton kernel gathering the kept candidates (``chosen``) of ``kchoice``, and its launcher.

A bit copy: candidates of any 1/2/4/8-byte dtype are viewed as integers of the
same width, so bool, fp8 and complex64 need no special case; wider dtypes
(complex128) fall back to torch indexing. One program copies a ``[BLOCK_R, BLOCK_D]``
tile of ``GATHER_GPU_TILE`` elements over 4 warps on CUDA (8 per thread: 80
registers at most for any element size and D; 2048 elements needs 147 at D = 3).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["GATHER_GPU_TILE", "GATHER_NUM_WARPS", "gather_blocks", "gather_triton"]

GATHER_GPU_TILE = 1024
GATHER_NUM_WARPS = 4
_GATHER_INTERP_TILE = 1 << 16  # elements, under the interpreter (few, big NumPy steps)
_MAX_GRID_Y = 65535
_BIT_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


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


def gather_blocks(rows: int, d: int, interpret: bool) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_D)`` for ``rows`` winners of ``d`` elements each."""
    tile = _GATHER_INTERP_TILE if interpret else GATHER_GPU_TILE
    block_d = min(_next_pow2(d), tile)
    return max(1, min(_next_pow2(rows), tile // block_d)), block_d


def gather_triton(candidates: Tensor, index: Tensor, interpret: bool) -> Tensor:
    """``candidates[arange(N), index]`` for ``index`` of shape ``[N]`` or ``[N, m]``."""
    n = candidates.shape[0]
    trailing = tuple(candidates.shape[2:])
    out_shape = tuple(index.shape) + trailing
    bits = _BIT_VIEWS.get(candidates.element_size())
    d = 1
    for size in trailing:
        d *= size
    if bits is None or d == 0:
        # Not a plain 1/2/4/8-byte element (e.g. complex128), or nothing to copy: torch indexing.
        rows = torch.arange(n, device=candidates.device)
        return candidates[rows if index.dim() == 1 else rows[:, None], index]
    # Trailing dims must be one contiguous run of D elements; dims 0/1 may have any stride.
    expected = 1
    for size, stride in zip(reversed(trailing), reversed(candidates.stride()[2:])):
        if size != 1 and stride != expected:
            candidates = candidates.contiguous()
            break
        expected *= size
    src = candidates.view(bits) if candidates.dtype != bits else candidates
    rows = index.numel()
    out = torch.empty((rows, d), dtype=bits, device=candidates.device)
    block_r, block_d = gather_blocks(rows, d, interpret)
    grid = (triton.cdiv(rows, block_r), min(triton.cdiv(d, block_d), _MAX_GRID_Y))
    _gather_kernel[grid](src, index.reshape(-1), out, rows, rows // n, d, src.stride(0), src.stride(1),
                         BLOCK_R=block_r, BLOCK_D=block_d, num_warps=GATHER_NUM_WARPS)
    if out.dtype != candidates.dtype:
        out = out.view(candidates.dtype)
    return out.view(out_shape)
