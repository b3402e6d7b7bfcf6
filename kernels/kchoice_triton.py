"""The launcher of the K-choice kernels (``kchoice_kernels``), called by :func:`lightning_curate.kchoice`.

``kchoice_triton`` runs on validated arguments; it has the semantics of the
torch path (``lightning_curate.ops.kchoice_torch``) except for the random
stream, and checks the reward values inside the kernel's read of them: it
returns the kernel's int32 count of invalid rows, unread (no host sync).

Launch configuration: on CUDA a small ``triton.autotune`` set keyed by
``(K, m, mode)``; each config is a tile of ``gpu_configs(m)`` elements over 2 to
8 warps, with ``BLOCK_K = min(next_pow2(K), 64)`` and ``BLOCK_N = tile //
BLOCK_K``. Under the CPU interpreter one big tile (few NumPy steps). The draw
does not depend on the tile.
"""

from __future__ import annotations

import contextlib
import os
from typing import NamedTuple, Optional

import torch
import triton
from torch import Tensor

from lightning_curate.kernels.kchoice_kernels import MODE_CODES, kchoice_one_kernel, kchoice_topm_kernel

__all__ = ["GPU_CONFIGS", "GPU_CONFIGS_TOPM", "KernelOut", "gpu_block_k", "gpu_configs", "interp_blocks",
           "kchoice_triton", "launch_constexprs", "new_flag"]

# Kept under their historical names for the AOT compiler and the tests.
_kchoice_one_kernel = kchoice_one_kernel
_kchoice_topm_kernel = kchoice_topm_kernel
_MODE_CODES = MODE_CODES

# CUDA: (tile elements, num_warps), the autotune sets. One winner: 16 elements per thread,
# so per-thread and per-row work is spread over many elements; m > 1 keeps
# the whole Plackett-Luce state per row and stays at 4 per thread (within 128 registers).
GPU_CONFIGS = ((1024, 2), (2048, 4), (4096, 8))
GPU_CONFIGS_TOPM = ((256, 2), (512, 4), (1024, 8))
_GPU_BLOCK_K_CAP = 64
# The interpreter runs one NumPy step per program and per op: few, big tiles.
_INTERP_TILE = 1 << 15
_INTERP_BLOCK_K_CAP = 256
_SEED_HALF = 31  # the 62-bit seed travels as two 31-bit halves (always int32 arguments)
_FLAG_SLOTS = 4096  # flags zeroed together: one fill kernel per this many calls


class KernelOut(NamedTuple):
    """What the launcher returns: the op's outputs and the kernel's count of invalid rows (int32 ``[1]``)."""

    index: Tensor  # type: ignore[assignment]
    log_prob: Optional[Tensor]
    logsumexp: Tensor
    chosen: Optional[Tensor]
    flag: Tensor


_flag_pool: dict[torch.device, tuple[Tensor, int]] = {}


def new_flag(device: torch.device) -> Tensor:
    """A zeroed int32 ``[1]`` flag for one launch, with no kernel launch of its own on most calls.

    Flags are slices of a zeroed block of ``_FLAG_SLOTS``; a used-up block is
    replaced by a new one (never re-zeroed), so a flag a caller still holds is never reused.
    """
    block, used = _flag_pool.get(device, (None, _FLAG_SLOTS))
    if block is None or used >= _FLAG_SLOTS:
        block, used = torch.zeros(_FLAG_SLOTS, dtype=torch.int32, device=device), 0
    _flag_pool[device] = (block, used + 1)
    return block[used : used + 1]


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
    block_k = gpu_block_k(named_args["K"] if "K" in named_args else kwargs["K"])
    return [c for c in configs if c.kwargs["BLOCK_K"] == block_k]


def gpu_configs(m: int) -> tuple[tuple[int, int], ...]:
    """The autotune set ``(tile elements, num_warps)`` for ``m`` winners."""
    return GPU_CONFIGS if m == 1 else GPU_CONFIGS_TOPM


def _autotuned(kernel, key, tiles):
    configs = [triton.Config({"BLOCK_N": max(1, tile // bk), "BLOCK_K": bk}, num_warps=warps)
               for bk in (1 << i for i in range(_GPU_BLOCK_K_CAP.bit_length())) for tile, warps in tiles]
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _configs_for_k})(kernel)


_one_tuned = _autotuned(kchoice_one_kernel, ["K", "MODE", "CONTIG"], GPU_CONFIGS)
_topm_tuned = _autotuned(kchoice_topm_kernel, ["K", "M", "MODE", "CONTIG"], GPU_CONFIGS_TOPM)


def _on_device(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check_block(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {value!r}")
    return value


def launch_constexprs(rewards: Tensor, beta: float, mode: str, ids: Optional[Tensor], write_lp: bool) -> dict:
    """The compile-time arguments of a launch (also used by the AOT compiler)."""
    n, k = rewards.shape
    return {"K": k, "MODE": MODE_CODES[mode], "CONTIG": rewards.stride(1) == 1 and (rewards.stride(0) == k or n == 1),
            "BETA_ZERO": beta == 0.0, "ROW_IDS": ids is not None, "WRITE_LP": write_lp,
            "FAST": rewards.device.type == "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1"}


def _launch(rewards: Tensor, beta: float, m: int, mode: str, seed: int, blocks: Optional[tuple[int, int]],
            ids: Optional[Tensor] = None, index_dtype: torch.dtype = torch.int64,
            write_lp: bool = True) -> tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    """Run the kernel for ``m`` winners: ``(index [N, m], log_prob [N, m] or None, logsumexp [N], flag [1])``.

    ``blocks = (BLOCK_N, BLOCK_K)`` fixes the tile (4 warps on CUDA); ``None`` lets the
    autotuner pick among ``GPU_CONFIGS`` (CUDA). ``ids``: int64 ``[N]`` Philox stream ids
    (per-row seeds); ``None``: each row's position in the batch.
    """
    n, k = rewards.shape
    dev = rewards.device
    index = torch.empty((n, m), dtype=index_dtype, device=dev)
    log_prob = torch.empty((n, m), dtype=torch.float32, device=dev) if write_lp else None
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    flag = new_flag(dev)
    if n == 0:
        return index, log_prob, lse, flag
    seed = int(seed) % (1 << (2 * _SEED_HALF))
    args = [rewards, lse if ids is None else ids, index, lse if log_prob is None else log_prob, lse, flag,
            n, rewards.stride(0), rewards.stride(1), float(beta),
            seed & ((1 << _SEED_HALF) - 1), seed >> _SEED_HALF]
    if m > 1:
        args.append(m)
    consts = launch_constexprs(rewards, beta, mode, ids, write_lp)
    if blocks is not None:
        kernel = kchoice_topm_kernel if m > 1 else kchoice_one_kernel
        kernel[(triton.cdiv(n, blocks[0]),)](*args, **consts, BLOCK_N=blocks[0], BLOCK_K=blocks[1])
    else:
        tuned = _topm_tuned if m > 1 else _one_tuned
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](*args, **consts)
    return index, log_prob, lse, flag


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
    ids: Optional[Tensor] = None,
    index_dtype: torch.dtype = torch.int64,
    write_lp: bool = True,
) -> KernelOut:
    """Launch the K-choice kernel on validated inputs (see ``lightning_curate.kchoice``).

    ``block_n`` / ``block_k`` (powers of two) fix the tile shape (4 warps on
    CUDA) instead of the autotuned choice; the draw does not depend on them.
    ``ids`` (int64 ``[N]``) draws row ``i`` from Philox stream ``ids[i]``
    instead of ``i``. ``index_dtype`` (int64 or int32) and ``write_lp``
    (``False``: no log-probabilities) shrink the outputs.
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
            block_n = interp_blocks(n, k)[0] if interpret else max(1, gpu_configs(m)[0][0] // block_k)
        block_n = _check_block("block_n", block_n)
        block_k = _check_block("block_k", block_k)

    with _on_device(dev):
        index, log_prob, lse, flag = _launch(rewards, beta, m, mode, seed, (block_n, block_k) if fixed else None,
                                             ids, index_dtype, write_lp)
    if m == 1:
        index = index.view(n)
        log_prob = None if log_prob is None else log_prob.view(n)
    chosen = None
    if candidates is not None:
        from lightning_curate.kernels.gather_triton import gather_triton

        with _on_device(dev):
            chosen = gather_triton(candidates, index, interpret)
    return KernelOut(index, log_prob, lse, chosen, flag)
