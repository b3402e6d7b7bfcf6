"""Batched reward-weighted K-choice sampling: the curation step of docs/THEORY.md section 1.

Each of ``N`` slots shows ``K`` candidates with rewards ``r``; ``kchoice`` keeps
``m`` of them per slot. Softmax mode is the Bradley-Terry / Luce choice
(``P(k) = softmax(beta * r)_k``), drawn exactly (the kernel by the Gumbel-max
trick, the torch path by inverse-CDF sampling with one uniform per slot);
with ``m > 1`` winners it is Plackett-Luce sampling without replacement (the
top-``m`` of Gumbel-perturbed scores, in order). ``argmax`` is best-of-K and
``uniform`` the no-curation baseline at the same compute.

This module validates arguments and dispatches: the Triton kernel
(``lightning_curate.kernels.kchoice_triton``) on CUDA tensors, the torch path
(``lightning_curate.ops.kchoice_torch``, ``kchoice_philox`` for per-row seeds)
everywhere else. The torch path checks the reward values before it draws; the
kernel checks them in its own read of the rewards and leaves its flag unread,
so a default call on CUDA is one kernel and no host sync: ``KChoice.check()``
(or ``check=True``) raises on invalid rewards, with the same messages.
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from lightning_curate.ops.kchoice_torch import (
    _count_short_rows,
    _short_rows_error,
    gather_candidates,
    kchoice_torch,
)

__all__ = ["BACKENDS", "MODES", "KChoice", "gather_candidates", "kchoice", "triton_unavailable_reason"]

MODES = ("softmax", "argmax", "uniform")
BACKENDS = ("auto", "triton", "torch")

_SEED_SPACE = 1 << 62
SeedLike = Union[None, int, Tensor, tuple[int, Tensor]]


class _KChoiceFields(NamedTuple):
    index: Tensor  # type: ignore[assignment]
    log_prob: Optional[Tensor]
    logsumexp: Tensor
    chosen: Optional[Tensor]


class _Pending(NamedTuple):
    """What a deferred check needs: the kernel's count of invalid rows (unread) and the call's inputs."""

    flag: Tensor
    rewards: Tensor
    beta: float
    m: int
    mode: str


class KChoice(_KChoiceFields):
    """Result of :func:`kchoice`.

    index:     int64 ``[N]`` (or ``[N, m]`` in choice order), the kept candidates.
    log_prob:  float32, same shape as ``index``: log-probability of the choice
               under the mode's law. For ``m > 1``, column ``j`` holds the
               log-probability of the ordered choice of the first ``j + 1``
               winners, so ``log_prob[:, -1]`` is that of the whole ordered choice.
               ``None`` when called with ``log_probs=False``.
    logsumexp: float32 ``[N]``, ``logsumexp(beta * r)`` per row.
    chosen:    ``candidates`` gathered at ``index`` (``[N, ...]`` or ``[N, m, ...]``),
               or ``None`` when no candidates were given.

    On the Triton path the reward values are checked inside the kernel and the
    result carries the kernel's flag unread (no host sync): :meth:`check` reads
    it and raises on invalid rewards. ``kchoice(..., check=True)`` does so at once.
    """

    _pending: Optional[_Pending] = None

    def check(self) -> "KChoice":
        """Raise ``ValueError`` (naming how many rows, and why) if the kernel flagged invalid rewards.

        One host sync; a no-op for results of the torch path (checked before they
        were returned) and for results that passed a check. Returns ``self``.

        Example:
            >>> out = kchoice(torch.tensor([[0.0, 1.0]]), seed=0).check()
        """
        pending = self.__dict__.get("_pending")
        if pending is not None:
            n_bad = int(pending.flag.item())
            if n_bad:
                _diagnose(pending, n_bad)  # raises; the result stays unchecked, so it raises again
            del self.__dict__["_pending"]
        return self


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
    """Check the arguments (not yet the reward values, see :func:`_check_values`); returns ``beta`` as a float."""
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
    return beta


def _check_values(rewards: Tensor, beta: float) -> Tensor:
    """Reject NaN / +inf rewards, all -inf rows and ``beta * r`` overflows; return the row maxima.

    One pass over the rewards (``amax``: NaN propagates through it, +inf and
    all -inf rows show in it), then one tiny reduction of the ``N`` maxima and
    one host sync. The per-row counts of the error messages are only computed
    when something is wrong.
    """
    n = rewards.shape[0]
    row_max = rewards.detach().amax(dim=1)
    lo, hi = torch.stack(torch.aminmax(row_max)).tolist()  # NaN propagates through both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        n_bad = int((torch.isnan(row_max) | (row_max == math.inf)).sum())
        if n_bad:
            raise ValueError(f"rewards contains NaN or +inf in {n_bad} of {n} rows; "
                             "rewards must be finite (-inf is allowed: that candidate can never win)")
        n_dead = int((row_max == -math.inf).sum())
        raise ValueError(f"rewards has {n_dead} of {n} rows whose candidates are all -inf; "
                         "each row needs at least one candidate with a finite reward")
    # log_prob and logsumexp are float32 on every backend, so beta * r must fit float32 (float64 rewards too).
    if beta > 0 and not all(math.isfinite(x) for x in torch.tensor([lo, hi], dtype=torch.float32).mul_(beta).tolist()):
        raise ValueError(f"beta * rewards overflows {torch.float32} (the dtype of log_prob and logsumexp): "
                         f"beta={beta} with row maxima in [{lo}, {hi}]; rescale the rewards or lower beta")
    return row_max

def kchoice(
    rewards: Tensor,
    beta: float = 1.0,
    *,
    num_winners: int = 1,
    mode: str = "softmax",
    seed: SeedLike = None,
    candidates: Optional[Tensor] = None,
    backend: str = "auto",
    check: bool = False,
    index_dtype: torch.dtype = torch.int64,
    log_probs: bool = True,
) -> KChoice:
    """Keep ``num_winners`` of the ``K`` candidates in each of ``N`` slots.

    Args:
        rewards: ``[N, K]`` floating tensor; ``-inf`` marks a candidate that can never win.
        beta: inverse temperature ``>= 0`` (``0``: uniform choice among finite rewards).
        num_winners: ``m`` winners per slot, in choice order (Plackett-Luce for softmax).
        mode: ``"softmax"`` (Bradley-Terry / Plackett-Luce), ``"argmax"`` (best-of-K,
            the lowest index wins ties) or ``"uniform"`` (rewards ignored).
        seed: makes the draw reproducible; ``None`` draws a seed from torch's global
            generator (so ``torch.manual_seed`` makes it reproducible too). Per-row seeds:
            an int64 tensor ``[N]`` of stream ids, or ``(seed, ids)``: row ``i`` is drawn
            from its own Philox stream ``ids[i]`` (under key ``seed``, default 0), so a
            row draws the same whatever batch, order or rank it is in. ``(seed,
            torch.arange(N))`` on the Triton path draws exactly what ``seed`` draws.
        candidates: optional ``[N, K, ...]`` tensor whose winners are gathered into ``chosen``.
        backend: ``"auto"`` (Triton on CUDA tensors, torch otherwise), ``"triton"`` or ``"torch"``.
        check: on the Triton path, read the kernel's validity flag now (one host sync) and
            raise on invalid rewards. By default the result carries the flag unread and
            :meth:`KChoice.check` raises later; the torch path always checks at once.
        index_dtype: ``torch.int64`` (default) or ``torch.int32`` (half the index traffic).
        log_probs: ``False`` leaves ``log_prob`` as ``None`` (the kernel does not write it).

    Example:
        >>> out = kchoice(torch.tensor([[0.0, 2.0, 1.0]]), 1.0, seed=0)
        >>> out.index.shape, out.logsumexp.shape
        (torch.Size([1]), torch.Size([1]))
    """
    beta = _validate(rewards, beta, num_winners, mode, seed, candidates, backend)
    key, ids = _split_seed(seed, rewards)
    if index_dtype not in (torch.int64, torch.int32):
        raise ValueError(f"index_dtype must be torch.int64 or torch.int32, got {index_dtype}")
    # A draw is not differentiable; the outputs carry no gradient on either backend.
    rewards = rewards.detach()

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
        return _empty(rewards, num_winners, candidates, index_dtype, log_probs)
    if rewards.dtype == torch.float64:
        _check_float32_range(rewards)
    if use_triton:
        from lightning_curate.kernels.kchoice_triton import kchoice_triton

        res = kchoice_triton(rewards, beta, num_winners=num_winners, mode=mode, seed=key, candidates=candidates,
                             ids=ids, index_dtype=index_dtype, write_lp=log_probs)
        out = KChoice(res.index, res.log_prob, res.logsumexp, res.chosen)
        out._pending = _Pending(res.flag, rewards, beta, num_winners, mode)
        return out.check() if check else out
    row_max = _check_values(rewards, beta)
    if ids is None:
        index, log_prob, lse, chosen = kchoice_torch(rewards, beta, num_winners, mode, key, candidates, row_max)
    else:
        from lightning_curate.ops.kchoice_philox import kchoice_torch_ids

        index, log_prob, lse, chosen = kchoice_torch_ids(rewards, beta, num_winners, mode, key, ids, candidates)
    return KChoice(index.to(index_dtype), log_prob if log_probs else None, lse, chosen)


def _split_seed(seed: SeedLike, rewards: Tensor) -> tuple[int, Optional[Tensor]]:
    """``(key, ids)``: the Philox key (a 62-bit int) and the per-row stream ids (int64 ``[N]``) or ``None``."""
    ids = None
    if isinstance(seed, Tensor) or (isinstance(seed, tuple) and len(seed) == 2 and isinstance(seed[1], Tensor)):
        key, ids = (0, seed) if isinstance(seed, Tensor) else seed
        n = rewards.shape[0]
        if ids.dtype not in (torch.int64, torch.int32) or tuple(ids.shape) != (n,):
            raise ValueError(f"per-row seed ids must be an int64 tensor of shape [N] = [{n}], "
                             f"got {ids.dtype} of shape {tuple(ids.shape)}")
        if ids.device != rewards.device:
            raise ValueError(f"per-row seed ids are on {ids.device} but rewards on {rewards.device}")
        ids = ids.to(torch.int64)
        seed = key
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, None, an int64 tensor [N] of per-row ids or (int, ids), "
                        f"got {type(seed).__name__}")
    if seed is None:
        seed = int(torch.randint(0, _SEED_SPACE, (1,)).item())
    return seed % _SEED_SPACE, ids


def _check_float32_range(rewards: Tensor) -> None:
    """float64 rewards must lie in float32's range: both backends return float32 log-probabilities,
    and the kernel reads rewards in float32 (where -1e300 would become -inf, a candidate never chosen)."""
    big = float(torch.where(torch.isfinite(rewards), rewards.abs(), 0.0).amax())
    if big > torch.finfo(torch.float32).max:
        raise ValueError(f"rewards are float64 with finite values up to {big:g} in magnitude, outside float32's "
                         f"range (+-{torch.finfo(torch.float32).max:.4g}), in which log-probabilities are "
                         "computed; rescale the rewards")


def _diagnose(p: _Pending, n_bad: int) -> None:
    """Raise the error for rewards the kernel flagged (``n_bad`` rows); only this path re-reads them.

    The kernel counts a row as invalid when its ``logsumexp(beta * r)`` is not
    finite (NaN, +inf, an all -inf row, an overflowing ``beta * r``; the
    ``m > 1`` kernel's first pass takes every column into it) or, for ``m > 1``
    softmax, when its last log-probability is not (fewer than ``m`` candidates
    with a finite ``beta * r``). The valid case thus costs no pass besides the
    kernel's own (a separate pass cost 2.3x the kernel's time on an H100 at
    N = 1e6, K = 16: docs/GPU.md).
    """
    rewards, beta, m = p.rewards, p.beta, p.m
    _check_values(rewards, beta)
    if p.mode == "softmax" and m > 1:
        n_short = _count_short_rows(rewards, m)
        if n_short:
            raise _short_rows_error(m, n_short, rewards.shape[0])
    raise ValueError(f"beta * rewards leaves float32's range in {n_bad} of {rewards.shape[0]} rows "
                     f"(beta={beta}, rewards {rewards.dtype}): a candidate the choice needs overflows or "
                     "underflows to -inf; rescale the rewards or lower beta")


def _empty(rewards: Tensor, m: int, candidates: Optional[Tensor], index_dtype: torch.dtype,
           log_probs: bool) -> KChoice:
    shape = (0,) if m == 1 else (0, m)
    dev = rewards.device
    chosen = None
    if candidates is not None:
        chosen = candidates.new_empty(shape + tuple(candidates.shape[2:]))
    return KChoice(torch.empty(shape, dtype=index_dtype, device=dev),
                   torch.empty(shape, dtype=torch.float32, device=dev) if log_probs else None,
                   torch.empty((0,), dtype=torch.float32, device=dev), chosen)
