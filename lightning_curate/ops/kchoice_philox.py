"""The torch path of per-row seeds: the Triton kernel's Philox stream and keys, in torch.

With per-row seeds (``kchoice(..., seed=ids)`` or ``seed=(key, ids)``) row ``i``
is drawn from Philox stream ``ids[i]``, so its draw depends on nothing else in
the batch. This module computes the kernel's keys exactly as
``lightning_curate.kernels.kchoice_keys`` defines them (word ``c % 4`` of
``Philox4x32-10(key; c // 4, id low, id high, 0)``, uniform ``v 2^-24 + 2^-25``,
softmax key ``beta log2(e) r - log2(-log2 u)``), so the torch and Triton paths
draw alike (up to the last bit of ``log2``) and it runs wherever torch does.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from lightning_curate.ops.kchoice_torch import (
    _count_short_rows,
    _plackett_luce_log_probs,
    _rows_per_chunk,
    _short_rows_error,
    _work_dtype,
    gather_candidates,
)

__all__ = ["kchoice_torch_ids", "philox4x32"]

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85
_LOG2E = 1.4426950408889634


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """High and low 32-bit words of ``a * b`` for a 32-bit constant ``a`` and int64 ``b`` in [0, 2^32)."""
    lo_part = a * (b & 0xFFFF)  # < 2^48
    hi_part = a * (b >> 16)  # < 2^48
    hi = (hi_part + (lo_part >> 16)) >> 16
    lo = ((hi_part << 16) + lo_part) & _M32  # wraps in int64; the low 32 bits are exact
    return hi, lo


def philox4x32(key: int, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor) -> tuple[Tensor, ...]:
    """Philox4x32-10 as ``tl.philox(key, c0, c1, c2, c3)`` computes it (int64 tensors holding uint32 words)."""
    k0, k1 = key & _M32, (key >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_ROUND_B, c2)
        hi_a, lo_a = _mulhilo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def _bits(key: int, ids: Tensor, k: int) -> Tensor:
    """The kernel's 32-bit words ``[rows, K]`` (int64) for stream ids ``ids`` (``[rows]``)."""
    cols = torch.arange(k, device=ids.device)
    c0 = (cols // 4)[None, :].expand(ids.shape[0], k)
    c1 = (ids & _M32)[:, None].expand_as(c0)
    c2 = ((ids >> 32) & _M32)[:, None].expand_as(c0)
    words = philox4x32(key, c0, c1, c2, torch.zeros_like(c0))
    return torch.stack(words, dim=2).gather(2, (cols % 4)[None, :, None].expand(ids.shape[0], k, 1))[..., 0]


def _keys(r: Tensor, beta: float, mode: str, key: int, ids: Tensor) -> Tensor:
    """float32 keys ``[rows, K]`` ranked by the kernel (higher wins, lowest index on ties)."""
    v = (_bits(key, ids, r.shape[1]) >> 8).to(torch.float32)
    if mode == "uniform":
        return v
    u = torch.clamp_max(v * 2.0**-24 + 2.0**-25, 1.0 - 2.0**-24)
    r32 = r.to(torch.float32)
    beta2 = torch.tensor(beta, dtype=torch.float32) * torch.tensor(_LOG2E, dtype=torch.float32)
    s2 = torch.where(r32 == -math.inf, -math.inf, 0.0) if beta == 0.0 else r32 * beta2.item()
    return s2 - torch.log2(-torch.log2(u))


def kchoice_torch_ids(rewards: Tensor, beta: float, m: int, mode: str, key: int, ids: Tensor,
                      candidates: Optional[Tensor]) -> tuple:
    """``kchoice`` on the torch path with per-row Philox streams; inputs validated (``_check_values``).

    Winners: the top ``m`` keys in order (stable: the lowest index wins ties);
    log-probabilities and logsumexp as the torch path computes them (float64
    for float64 rewards).
    """
    n, k = rewards.shape
    dev = rewards.device
    work = _work_dtype(rewards.dtype)
    shape = (n,) if m == 1 else (n, m)
    index = torch.empty((n, m), dtype=torch.int64, device=dev)
    log_prob = torch.empty((n, m), dtype=torch.float32, device=dev)
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    rows = max(1, _rows_per_chunk(k) // 8)  # the Philox words take 8x the rewards' memory
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        r = rewards[start:stop]
        keys = r if mode == "argmax" else _keys(r, beta, mode, key, ids[start:stop])
        idx = torch.sort(keys, dim=1, descending=True, stable=True).indices[:, :m]
        index[start:stop] = idx
        r_w = r.to(work)
        finite = r_w > -math.inf
        mx = torch.where(finite, r_w, 0.0).amax(dim=1, keepdim=True)
        mx = mx * beta if beta != 0.0 else torch.zeros_like(mx)
        buf = torch.empty(r.shape, dtype=work, device=dev)
        row_lse, steps = _plackett_luce_log_probs(r, beta, mx, idx, buf, work)
        lse[start:stop] = row_lse
        if mode == "softmax":
            log_prob[start:stop] = steps
        elif mode == "argmax":
            log_prob[start:stop] = 0.0
        else:
            log_prob[start:stop] = -torch.log(torch.arange(k, k - m, -1, dtype=torch.float64, device=dev)).cumsum(0)
    if mode == "softmax" and m > 1:
        n_short = _count_short_rows(rewards, m)
        if n_short:
            raise _short_rows_error(m, n_short, n)
    chosen = gather_candidates(candidates, index.view(shape)) if candidates is not None else None
    return index.view(shape), log_prob.view(shape), lse, chosen
