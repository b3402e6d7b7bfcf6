"""The torch path of :func:`lightning_curate.ops.kchoice.kchoice` (what CPU users run).

Same law and outputs as the Triton kernel; inputs arrive validated. Works chunk
by chunk over rows in one reused ``[rows, K]`` buffer, so its working memory
stays below the rewards' size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["gather_candidates", "kchoice_torch"]

# Rows processed together by the torch path: at most this many reward elements
# (a 4 MiB float32 working buffer) and this many rows (small K: the per-row
# temporaries), so its working memory stays well below the rewards' size.
# Large enough that the per-chunk overhead (a dozen ops, each a parallel region
# when torch uses several threads) is small. Fixed constants; on the CPU the
# draw does not depend on them anyway (random numbers are consumed in row order).
_TORCH_CHUNK_ELEMENTS = 1 << 20
_TORCH_CHUNK_ROWS = 1 << 17


def _count_short_rows(rewards: Tensor, m: int) -> int:
    """Rows with fewer than ``m`` finite rewards, counted chunk by chunk (bounded memory)."""
    n, k = rewards.shape
    rows = _rows_per_chunk(k)
    short = torch.zeros((), dtype=torch.int64, device=rewards.device)
    for start in range(0, n, rows):
        finite = (rewards[start : start + rows] > -math.inf).sum(dim=1)
        short += (finite < m).sum()
    return int(short)


def _short_rows_error(m: int, n_short: int, n: int) -> ValueError:
    return ValueError(f"num_winners={m} but {n_short} of {n} rows have fewer than "
                      f"{m} candidates with a finite beta * reward (-inf candidates can never win; a finite reward "
                      "times beta can also underflow to -inf)")

def gather_candidates(candidates: Tensor, index: Tensor) -> Tensor:
    """``candidates[arange(N), index]`` for ``index`` of shape ``[N]`` or ``[N, m]``.

    When the first two dims of ``candidates`` merge into one without a copy (any
    layout with row-major ``[N, K]``), one ``index_select`` over the ``N * K``
    candidates (about 2x faster than advanced indexing on the CPU); otherwise
    advanced indexing.
    """
    n, k = candidates.shape[:2]
    trailing = tuple(candidates.shape[2:])
    try:
        flat = candidates.view((n * k,) + trailing)
    except RuntimeError:  # e.g. expanded or permuted candidates: no copy-free view
        rows = torch.arange(n, device=candidates.device)
        return candidates[rows if index.dim() == 1 else rows[:, None], index]
    # Index of candidate (i, index[i]) among the N * K: i * K + index[i] (one N-sized temporary).
    starts = torch.arange(0, n * k, k, device=candidates.device)
    flat_index = starts.add_(index) if index.dim() == 1 else (starts[:, None] + index).view(-1)
    return flat.index_select(0, flat_index).view(tuple(index.shape) + trailing)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch path computes in float64 for float64 rewards, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_chunk(k: int) -> int:
    """Rows the torch path processes together: a fixed function of ``K`` only."""
    return max(1, min(_TORCH_CHUNK_ROWS, _TORCH_CHUNK_ELEMENTS // max(k, 1)))


def _exp_weights(r: Tensor, beta: float, mx: Tensor, out: Tensor) -> Tensor:
    """``out <- exp(beta * r - mx)`` (``0`` where ``r = -inf``, also for ``beta = 0``)."""
    if beta == 0.0:
        return torch.ne(r, -math.inf, out=out)  # exp(0) = 1 for finite r, 0 for -inf
    if beta == 1.0:
        torch.sub(r, mx, out=out)
    else:
        torch.add(-mx, r, alpha=beta, out=out)  # one pass, any reward dtype
    return out.exp_()


def _shifted_scores(r_sel: Tensor, beta: float, mx: Tensor, work: torch.dtype) -> Tensor:
    """``beta * r - mx`` for gathered rewards, rounded exactly as ``mx`` was (so the
    row's maximum gives exactly 0). Only finite rewards are ever gathered here."""
    if beta == 0.0:
        return torch.zeros(r_sel.shape, dtype=work, device=r_sel.device)
    r_sel = r_sel.to(work)
    return (r_sel if beta == 1.0 else r_sel * beta) - mx


def kchoice_torch(rewards: Tensor, beta: float, m: int, mode: str, seed: int,
                  candidates: Optional[Tensor], row_max: Tensor) -> tuple:
    """The torch path (what CPU users run); same law and outputs as the kernel.

    Works chunk by chunk over rows (:func:`_rows_per_chunk`, a fixed function of
    ``K``) in one reused ``[rows, K]`` working buffer, so its extra memory stays
    below the rewards' size. Every random number comes from one generator seeded
    with ``seed``, consumed in row order (one uniform per row for softmax with
    ``m = 1``; one per candidate, row-major, for ``m > 1``; ``randint`` per row
    for uniform ``m = 1``), so on the CPU the draw does not depend on the chunk
    size and the first rows of a batch are drawn as they would be alone.

    * softmax, ``m = 1``: inverse-CDF sampling. ``c = cumsum(exp(beta r - mx))``
      (``mx`` the row maximum, from validation), ``u = U * c[-1]`` with one
      uniform ``U`` per row, winner = number of ``c_j <= u``. A ``-inf`` reward
      has an interval of zero width and can never win. ``logsumexp = mx +
      log c[-1]`` and ``log_prob = (beta r_k - mx) - log c[-1]`` reuse the same
      sums. Precision, float32 (float64 rewards compute in float64): the CPU
      cumsum accumulates in float64 and rounds each running sum to float32, so
      every interval is right to an ulp of the row total whatever ``K`` (no
      error build-up), and ``U`` has 24 random bits. Each probability is thus
      exact up to an absolute error of about ``2**-23 ~ 1.2e-7``. Known
      limitation, as for ``torch.multinomial`` (float32 probabilities too): a
      candidate whose probability is below that resolution may be drawn at the
      wrong rate or never. (On CUDA the cumsum accumulates in float32, so the
      error there grows slowly with ``K``.)
    * softmax, ``m > 1``: Gumbel top-``m`` (Plackett-Luce without replacement):
      the ``m`` smallest ``log(-log U_j) - beta r_j`` in order (= the largest
      ``beta r_j + G_j``), ``U`` clamped into ``[tiny, 1)`` so every noise is
      finite. The per-step log-probabilities use ``exp(beta r - mx)`` re-summed
      after each removal (no cancellation); rows whose remaining mass
      underflows are recomputed in log space.
    * uniform: ``randint`` for ``m = 1``; for ``m > 1`` the top-``m`` of i.i.d.
      uniforms (a uniformly random ordered choice).
    * argmax: ``argmax`` / stable descending sort (lowest index wins ties).
    """
    n, k = rewards.shape
    dev = rewards.device
    work = _work_dtype(rewards.dtype)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    shape = (n,) if m == 1 else (n, m)
    index = torch.empty(shape, dtype=torch.int64, device=dev)
    log_prob = torch.empty(shape, dtype=torch.float32, device=dev)
    lse = torch.empty((n,), dtype=torch.float32, device=dev)
    rows = _rows_per_chunk(k)
    buf_flat = torch.empty(min(n, rows) * k, dtype=work, device=dev)
    finfo = torch.finfo(work)
    n_short = torch.zeros((), dtype=torch.int64, device=dev) if mode == "softmax" and m > 1 else None
    uniform_lp: Optional[Tensor] = None
    if mode == "uniform":
        uniform_lp = -torch.log(torch.arange(k, k - m, -1, dtype=torch.float64)).cumsum(0)
        uniform_lp = uniform_lp.to(device=dev, dtype=torch.float32)

    for start in range(0, n, rows):
        stop = min(n, start + rows)
        r = rewards[start:stop]
        buf = buf_flat[: (stop - start) * k].view(stop - start, k)
        if beta == 0.0:
            mx = torch.zeros((stop - start, 1), dtype=work, device=dev)
        else:
            mx = row_max[start:stop, None].to(work)  # may be a view of row_max: never in place
            if beta != 1.0:
                mx = mx * beta

        if mode == "softmax" and m == 1:
            c = _exp_weights(r, beta, mx, buf).cumsum_(dim=1)  # running sums of the weights
            total = c[:, -1:]
            log_total = total.log()
            u = torch.rand((stop - start, 1), generator=gen, dtype=work, device=dev).mul_(total)
            torch.minimum(u, torch.nextafter(total, total.new_zeros(())), out=u)  # u < total
            # The winner is searchsorted(c, u, right=True), counted (faster for small K);
            # c is overwritten, so total and log_total are taken first.
            idx = index[start:stop, None]
            idx.copy_(torch.le(c, u, out=c).sum(dim=1, keepdim=True))
            log_prob[start:stop, None] = _shifted_scores(r.gather(1, idx), beta, mx, work).sub_(log_total)
            lse[start:stop, None] = log_total.add_(mx)
            continue

        if mode == "softmax":
            # Exponential race in log form: the m smallest log(E_j) - beta r_j,
            # E_j = -log U_j ~ Exp(1). -inf rewards cost +inf and never win.
            cost = buf.uniform_(generator=gen).clamp_(finfo.tiny, 1.0 - finfo.eps / 2)
            cost.log_().neg_().log_()
            if beta == 0.0:
                cost.masked_fill_(r == -math.inf, math.inf)
            else:
                cost.sub_(r, alpha=beta)
            vals, idx = torch.topk(cost, m, dim=1, largest=False, sorted=True)
            assert n_short is not None  # allocated above for softmax with m > 1
            n_short += (vals[:, -1] == math.inf).sum()
            index[start:stop] = idx
            del cost, vals
            lse[start:stop], log_prob[start:stop] = _plackett_luce_log_probs(r, beta, mx, idx, buf, work)
            continue

        w = _exp_weights(r, beta, mx, buf)
        lse[start:stop] = (mx + w.sum(dim=1, keepdim=True).log_())[:, 0]
        if mode == "argmax":
            if m == 1:
                index[start:stop] = torch.argmax(r, dim=1)
            else:
                index[start:stop] = torch.sort(r, dim=1, descending=True, stable=True).indices[:, :m]
            log_prob[start:stop] = 0.0
        elif m == 1:  # uniform
            assert uniform_lp is not None  # computed above for mode == "uniform"
            index[start:stop] = torch.randint(0, k, (stop - start,), generator=gen, device=dev)
            log_prob[start:stop] = uniform_lp[0]
        else:  # uniform, m > 1: a uniformly random ordered m-subset
            assert uniform_lp is not None  # computed above for mode == "uniform"
            noise = buf.uniform_(generator=gen)
            index[start:stop] = torch.topk(noise, m, dim=1, sorted=True).indices
            log_prob[start:stop] = uniform_lp

    if n_short is not None:
        short = int(n_short)
        if short:
            raise _short_rows_error(m, short, n)
    chosen = gather_candidates(candidates, index) if candidates is not None else None
    return index, log_prob, lse, chosen


# Below this remaining mass (the row maximum weighs 1) a Plackett-Luce step is
# recomputed in log space: float32 weights underflow below ~1e-38.
_PL_LOW_MASS = 2.0 ** -64


def _plackett_luce_log_probs(r: Tensor, beta: float, mx: Tensor, idx: Tensor, buf: Tensor,
                             work: torch.dtype) -> tuple[Tensor, Tensor]:
    """Row ``logsumexp(beta r)`` and cumulative Plackett-Luce log-probs of the ordered choice ``idx``.

    Step ``j``: ``(beta r_{i_j} - mx) - log(sum of exp(beta r - mx) over the candidates
    not chosen before j)``; each denominator is re-summed (positive terms only).
    """
    rows, m = idx.shape
    w = _exp_weights(r, beta, mx, buf)
    den = torch.empty((rows, m), dtype=work, device=r.device)
    den[:, 0] = w.sum(dim=1)
    for j in range(1, m):
        w.scatter_(1, idx[:, j - 1 : j], 0.0)
        den[:, j] = w.sum(dim=1)
    steps = _shifted_scores(r.gather(1, idx), beta, mx, work) - den.log()
    lse = mx[:, 0] + den[:, 0].log()
    low = (den[:, 1:] < _PL_LOW_MASS).any(dim=1) if m > 1 else None
    if low is not None and bool(low.any()):
        sel = low.nonzero()[:, 0]
        steps[sel] = _plackett_luce_steps_logspace(r[sel], beta, idx[sel], work)
    return lse, steps.cumsum(dim=1)


def _plackett_luce_steps_logspace(r: Tensor, beta: float, idx: Tensor, work: torch.dtype) -> Tensor:
    """Per-step Plackett-Luce log-probs by ``logsumexp`` over what is left (rare rows)."""
    r = r.to(work)
    s = torch.where(r == -math.inf, r, r * beta)
    steps = torch.empty(idx.shape, dtype=work, device=r.device)
    for j in range(idx.shape[1]):
        col = idx[:, j : j + 1]
        steps[:, j] = s.gather(1, col)[:, 0] - torch.logsumexp(s, dim=1)
        s.scatter_(1, col, -math.inf)
    return steps
