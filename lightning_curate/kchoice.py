"""Batched reward-weighted K-choice sampling: the curation step of THEORY.md section 1.

Each of ``N`` slots shows ``K`` candidates with rewards ``r``; ``kchoice`` keeps
``m`` of them per slot. Softmax mode is the Bradley-Terry / Luce choice
(``P(k) = softmax(beta * r)_k``), implemented exactly by the Gumbel-max trick;
with ``m > 1`` winners it is Plackett-Luce sampling without replacement (the
top-``m`` of the same perturbed scores, in order). ``argmax`` is best-of-K and
``uniform`` the no-curation baseline at the same compute.

This module validates inputs and dispatches: the Triton kernel
(``lightning_curate.kernels.kchoice_triton``) on CUDA tensors, the torch path
below everywhere else.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional

import torch
from torch import Tensor

MODES = ("softmax", "argmax", "uniform")
BACKENDS = ("auto", "triton", "torch")

# Rows processed together by the torch path, as a number of reward elements.
# A fixed constant: the torch path's random stream depends on it, never on
# the caller.
_TORCH_CHUNK_ELEMENTS = 1 << 20
_SEED_SPACE = 1 << 62


class KChoice(NamedTuple):
    """Result of :func:`kchoice`.

    index:     int64 ``[N]`` (or ``[N, m]`` in choice order), the kept candidates.
    log_prob:  float32, same shape as ``index``: log-probability of the choice
               under the mode's law. For ``m > 1``, column ``j`` holds the
               log-probability of the ordered choice of the first ``j + 1``
               winners, so ``log_prob[:, -1]`` is that of the whole ordered choice.
    logsumexp: float32 ``[N]``, ``logsumexp(beta * r)`` per row.
    chosen:    ``candidates`` gathered at ``index`` (``[N, ...]`` or ``[N, m, ...]``),
               or ``None`` when no candidates were given.
    """

    index: Tensor
    log_prob: Tensor
    logsumexp: Tensor
    chosen: Optional[Tensor]


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """Why the Triton kernel cannot run on ``device`` (``None`` when it can)."""
    if device.type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") != "1":
            return ("the tensors are on the CPU and TRITON_INTERPRET=1 is not set "
                    "(Triton runs on CUDA, or on the CPU only under its interpreter)")
    elif device.type != "cuda":
        return f"Triton does not run on {device.type} tensors (CUDA only)"
    try:
        import triton  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the platform
        return f"triton is not installed ({err}); it is available on Linux: pip install triton"
    return None


def _validate(rewards, beta, num_winners, mode, seed, candidates, backend) -> float:
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a torch.Tensor of shape [N, K], got {type(rewards).__name__}")
    if not rewards.is_floating_point():
        raise TypeError(f"rewards must be a floating-point tensor (float16/bfloat16/float32/float64), "
                        f"got dtype {rewards.dtype}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [N, K] (2-D), got shape {tuple(rewards.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(beta, Tensor):
        if beta.numel() != 1:
            raise ValueError(f"beta must be a scalar, got a tensor of shape {tuple(beta.shape)}")
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise TypeError(f"beta must be a real number, got {type(beta).__name__}")
    beta = float(beta)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    if isinstance(num_winners, bool) or not isinstance(num_winners, int):
        raise TypeError(f"num_winners must be an int, got {type(num_winners).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    n, k = rewards.shape
    if k == 0 and n > 0:
        raise ValueError("rewards has K = 0 candidates per row; each slot needs at least 1 candidate")
    # Checked for N = 0 too (the empty result's shape uses it); only an empty
    # [0, 0] input may ask for more winners than it has candidates.
    if num_winners < 1 or (num_winners > k and (n > 0 or k > 0)):
        raise ValueError(f"num_winners must be in 1..K = 1..{k}, got {num_winners}")
    if candidates is not None:
        if not isinstance(candidates, Tensor):
            raise TypeError(f"candidates must be a torch.Tensor of shape [N, K, ...], got {type(candidates).__name__}")
        if candidates.dim() < 2 or tuple(candidates.shape[:2]) != (n, k):
            raise ValueError(f"candidates must have shape [N, K, ...] = [{n}, {k}, ...] to match rewards, "
                             f"got {tuple(candidates.shape)}")
        if candidates.device != rewards.device:
            raise ValueError(f"candidates are on {candidates.device} but rewards on {rewards.device}")
    if n > 0:
        # One reduction pass: NaN propagates through amax, +inf and all -inf show in it.
        row_max = rewards.amax(dim=1)
        bad = torch.isnan(row_max) | (row_max == math.inf)
        n_bad = int(bad.sum())
        if n_bad:
            raise ValueError(f"rewards contains NaN or +inf in {n_bad} of {n} rows; "
                             "rewards must be finite (-inf is allowed: that candidate can never win)")
        n_dead = int((row_max == -math.inf).sum())
        if n_dead:
            raise ValueError(f"rewards has {n_dead} of {n} rows whose candidates are all -inf; "
                             "each row needs at least one candidate with a finite reward")
        if mode == "softmax" and num_winners > 1:
            n_short = int(((rewards > -math.inf).sum(dim=1) < num_winners).sum())
            if n_short:
                raise ValueError(f"num_winners={num_winners} but {n_short} of {n} rows have fewer than "
                                 f"{num_winners} candidates with a finite reward (-inf candidates can never win)")
    return beta


def kchoice(
    rewards: Tensor,
    beta: float = 1.0,
    *,
    num_winners: int = 1,
    mode: str = "softmax",
    seed: Optional[int] = None,
    candidates: Optional[Tensor] = None,
    backend: str = "auto",
) -> KChoice:
    """Keep ``num_winners`` of the ``K`` candidates in each of ``N`` slots.

    Args:
        rewards: ``[N, K]`` floating tensor; ``-inf`` marks a candidate that can never win.
        beta: inverse temperature ``>= 0`` (``0``: uniform choice among finite rewards).
        num_winners: ``m`` winners per slot, in choice order (Plackett-Luce for softmax).
        mode: ``"softmax"`` (Bradley-Terry / Plackett-Luce), ``"argmax"`` (best-of-K,
            the lowest index wins ties) or ``"uniform"`` (rewards ignored).
        seed: makes the draw reproducible; ``None`` draws a seed from torch's global
            generator (so ``torch.manual_seed`` makes it reproducible too).
        candidates: optional ``[N, K, ...]`` tensor whose winners are gathered into ``chosen``.
        backend: ``"auto"`` (Triton on CUDA tensors, torch otherwise), ``"triton"`` or ``"torch"``.
    """
    beta = _validate(rewards, beta, num_winners, mode, seed, candidates, backend)
    # A draw is not differentiable; the outputs carry no gradient on either backend.
    rewards = rewards.detach()
    if seed is None:
        seed = int(torch.randint(0, _SEED_SPACE, (1,)).item())
    seed = seed % _SEED_SPACE

    if backend == "auto":
        use_triton = rewards.device.type == "cuda" and triton_unavailable_reason(rewards.device) is None
    elif backend == "triton":
        reason = triton_unavailable_reason(rewards.device)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run here: {reason}")
        use_triton = True
    else:
        use_triton = False

    n, k = rewards.shape
    if n == 0:
        return _empty(rewards, num_winners, candidates)
    if use_triton:
        from lightning_curate.kernels.kchoice_triton import kchoice_triton

        return KChoice(*kchoice_triton(rewards, beta, num_winners=num_winners, mode=mode,
                                       seed=seed, candidates=candidates))
    return _kchoice_torch(rewards, beta, num_winners, mode, seed, candidates)


def _empty(rewards: Tensor, m: int, candidates: Optional[Tensor]) -> KChoice:
    shape = (0,) if m == 1 else (0, m)
    dev = rewards.device
    chosen = None
    if candidates is not None:
        chosen = candidates.new_empty(shape + tuple(candidates.shape[2:]))
    return KChoice(torch.empty(shape, dtype=torch.int64, device=dev),
                   torch.empty(shape, dtype=torch.float32, device=dev),
                   torch.empty((0,), dtype=torch.float32, device=dev), chosen)


def _scaled(r: Tensor, beta: float) -> Tensor:
    """``beta * r`` with ``-inf`` kept as ``-inf`` (``0 * -inf`` would be NaN)."""
    if beta == 1.0:
        return r
    out = r * beta
    if beta == 0.0:
        out.masked_fill_(r == -math.inf, -math.inf)
    return out


def gather_candidates(candidates: Tensor, index: Tensor) -> Tensor:
    """``candidates[arange(N), index]`` for ``index`` of shape ``[N]`` or ``[N, m]``."""
    rows = torch.arange(candidates.shape[0], device=candidates.device)
    if index.dim() == 2:
        rows = rows[:, None]
    return candidates[rows, index]


def _kchoice_torch(rewards: Tensor, beta: float, m: int, mode: str, seed: int,
                   candidates: Optional[Tensor]) -> KChoice:
    n, k = rewards.shape
    work_dtype = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    gen = torch.Generator(device=rewards.device)
    gen.manual_seed(seed)
    shape = (n,) if m == 1 else (n, m)
    index = torch.empty(shape, dtype=torch.int64, device=rewards.device)
    log_prob = torch.empty(shape, dtype=torch.float32, device=rewards.device)
    lse = torch.empty((n,), dtype=torch.float32, device=rewards.device)
    rows_per_chunk = max(1, _TORCH_CHUNK_ELEMENTS // max(k, 1))
    uniform_lp = None
    if mode == "uniform":
        uniform_lp = -torch.log(torch.arange(k, k - m, -1, dtype=torch.float64)).cumsum(0)
        uniform_lp = uniform_lp.to(device=rewards.device, dtype=torch.float32)

    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        r = rewards[start:stop].to(work_dtype)
        s = _scaled(r, beta)
        # Kept in the working dtype: log-probs are differences of large numbers.
        chunk_lse = torch.logsumexp(s, dim=1)
        lse[start:stop] = chunk_lse
        if mode == "argmax":
            if m == 1:
                idx = torch.argmax(r, dim=1)
            else:
                idx = torch.sort(r, dim=1, descending=True, stable=True).indices[:, :m]
            index[start:stop] = idx
            log_prob[start:stop] = 0.0
            continue
        if mode == "uniform" and m == 1:
            index[start:stop] = torch.randint(0, k, (stop - start,), generator=gen, device=r.device)
            log_prob[start:stop] = uniform_lp[0]
            continue
        # Gumbel-max as an exponential race: argmax_k (s_k - log E_k), E_k ~ Exp(1).
        noise = torch.empty_like(r).exponential_(generator=gen)
        noise.clamp_min_(torch.finfo(work_dtype).tiny).log_()
        if mode == "uniform":
            noise.neg_()
        else:
            torch.sub(s, noise, out=noise)
        if m == 1:
            idx = torch.argmax(noise, dim=1)
            index[start:stop] = idx
            log_prob[start:stop] = s.gather(1, idx[:, None])[:, 0] - chunk_lse
            continue
        idx = torch.topk(noise, m, dim=1, sorted=True).indices
        index[start:stop] = idx
        if mode == "uniform":
            log_prob[start:stop] = uniform_lp
            continue
        # Plackett-Luce: each winner's probability among the candidates still left.
        del noise
        remaining = s.clone() if s is r else s
        step_lp = torch.empty((stop - start, m), dtype=work_dtype, device=r.device)
        for j in range(m):
            col = idx[:, j : j + 1]
            step_lp[:, j] = remaining.gather(1, col)[:, 0] - torch.logsumexp(remaining, dim=1)
            remaining.scatter_(1, col, -math.inf)
        log_prob[start:stop] = step_lp.cumsum(dim=1)

    chosen = gather_candidates(candidates, index) if candidates is not None else None
    return KChoice(index, log_prob, lse, chosen)
