"""The torch path of ``kchoice``: inverse-CDF softmax at row edges, chunking, underflow.

Backends, seeds and thresholds as in test_kchoice.py (shared pieces in kchoice_helpers.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import (
    P_MIN,
    assert_same,
    chi2_pvalue,
    kchoice_torch_module,
    reference_log_probs,
)

from lightning_curate import kchoice

# ------------------------------------- torch path: inverse-CDF softmax, chunking

INF_EDGE_ROWS = torch.tensor([
    [-math.inf, -math.inf, 0.3, 1.0, -math.inf],
    [-math.inf, 2.0, -math.inf, -math.inf, -math.inf],
    [0.5, -math.inf, -math.inf, -math.inf, -math.inf],
    [-math.inf, -math.inf, -math.inf, -math.inf, 7.0],
    [1.0, 1.0, -math.inf, 1.0, -math.inf],
    [-math.inf, -4.0, -1.0, 3.0, 2.9],
])
FIRST_FINITE = [2, 1, 0, 4, 0, 1]
LAST_FINITE = [3, 1, 0, 4, 3, 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("u_value, expected", [
    (0.0, FIRST_FINITE),              # the smallest uniform torch.rand returns
    (1.0 - 2.0**-24, LAST_FINITE),    # the largest float32 one
    (1.0, LAST_FINITE),               # never returned; clamped below the row total anyway
], ids=["u=0", "u=max", "u=1"])
def test_softmax_single_winner_skips_minus_inf_at_row_edges(monkeypatch, dtype, u_value, expected):
    """The torch path draws one winner by inverse CDF: a -inf candidate has an
    interval of zero width, so even the extreme uniforms never land on one, at
    the start, in the middle or at the end of a row."""
    real_rand = torch.rand

    def extreme_rand(*args, **kwargs):
        return real_rand(*args, **kwargs).fill_(u_value)

    monkeypatch.setattr(torch, "rand", extreme_rand)
    rewards = INF_EDGE_ROWS.to(dtype)
    for beta in (0.0, 0.7, 1.0):
        out = kchoice(rewards, beta, seed=0, backend="torch")
        assert out.index.tolist() == expected, beta
        lse, lp = reference_log_probs(rewards, beta, out.index)
        torch.testing.assert_close(out.logsumexp.double(), lse, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.log_prob.double(), lp, atol=1e-6, rtol=1e-6)


def test_softmax_single_winner_law_with_minus_inf_at_row_edges():
    """Many draws: the -inf candidates at both ends of the rows are never chosen,
    the law is softmax(beta * r) (chi-square), and every log_prob and logsumexp
    equals the float64 computation to float32 rounding."""
    n, beta = 120_000, 1.3
    rows = torch.tensor([
        [-math.inf, 0.0, 1.0, -0.5, -math.inf],
        [-math.inf, -math.inf, 2.0, 2.0, -3.0],
        [1.5, -1.0, -math.inf, -math.inf, -math.inf],
    ])
    rewards = rows.repeat(n // 3, 1)  # row i % 3 of the pattern
    out = kchoice(rewards, beta, seed=99, backend="torch")
    assert torch.isfinite(rewards.gather(1, out.index[:, None])).all()
    for i, row in enumerate(rows):
        counts = torch.bincount(out.index[i::3], minlength=5)
        law = torch.softmax(beta * row.double(), 0)
        assert (counts[law == 0] == 0).all()
        assert chi2_pvalue(counts, law) > P_MIN
        # Power: the same statistic rejects the law at another beta.
        assert chi2_pvalue(counts, torch.softmax(0.5 * row.double(), 0)) < P_MIN
    lse, lp = reference_log_probs(rewards, beta, out.index)
    torch.testing.assert_close(out.logsumexp.double(), lse, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.log_prob.double(), lp, atol=1e-6, rtol=1e-6)


def test_softmax_single_winner_wide_rows_match_float64():
    """Rewards spread over a wide range, large K, -inf blocks at both ends."""
    gen = torch.Generator().manual_seed(12)
    n, k = 64, 3000
    rewards = torch.randn(n, k, generator=gen) * 20
    rewards[:, :100] = -math.inf
    rewards[:, -700:] = -math.inf
    for beta in (0.05, 1.0, 4.0):
        out = kchoice(rewards, beta, seed=5, backend="torch")
        assert ((out.index >= 100) & (out.index < k - 700)).all()
        lse, lp = reference_log_probs(rewards, beta, out.index)
        torch.testing.assert_close(out.logsumexp.double(), lse, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(out.log_prob.double(), lp, atol=1e-5, rtol=1e-6)


CHUNK_CASES = [("softmax", 1), ("softmax", 3), ("uniform", 1), ("uniform", 3), ("argmax", 2)]


@pytest.mark.parametrize("mode, m", CHUNK_CASES, ids=[f"{md}-m{m}" for md, m in CHUNK_CASES])
def test_torch_draw_does_not_depend_on_chunking(monkeypatch, mode, m):
    """The torch path's chunk size changes nothing (random numbers are consumed
    in row order), and the first rows of a batch are drawn as they would be alone."""
    gen = torch.Generator().manual_seed(14)
    n, k = 700, 9
    rewards = torch.randn(n, k, generator=gen) * 2
    rewards[torch.rand(n, k, generator=gen) < 0.2] = -math.inf
    rewards[:, 4:7] = torch.randn(n, 3, generator=gen)  # 3 finite per row
    candidates = torch.randn(n, k, 2, generator=gen)
    ref = kchoice(rewards, 0.9, num_winners=m, mode=mode, seed=31, candidates=candidates, backend="torch")
    for elements, rows in [(64, 1 << 17), (1 << 20, 5), (9, 1000), (1, 1)]:
        monkeypatch.setattr(kchoice_torch_module, "_TORCH_CHUNK_ELEMENTS", elements)
        monkeypatch.setattr(kchoice_torch_module, "_TORCH_CHUNK_ROWS", rows)
        out = kchoice(rewards, 0.9, num_winners=m, mode=mode, seed=31, candidates=candidates, backend="torch")
        assert_same(out, ref)
    head = kchoice(rewards[:250], 0.9, num_winners=m, mode=mode, seed=31, backend="torch")
    assert torch.equal(head.index, ref.index[:250])
    assert torch.equal(head.log_prob, ref.log_prob[:250])


def test_plackett_luce_log_probs_survive_weight_underflow():
    """After the best candidates are taken, what is left may weigh less than
    float32 can hold relative to the row maximum (exp(-200)): those steps are
    recomputed in log space and still match float64."""
    inf = math.inf
    rewards = torch.tensor([
        [0.0, -200.0, -inf, -300.0],
        [-250.0, 0.0, -0.5, -inf],
        [5.0, 4.0, 3.0, 2.0],
    ]).repeat(40, 1)
    out = kchoice(rewards, 1.0, num_winners=3, seed=2, backend="torch")
    assert torch.isfinite(rewards.gather(1, out.index)).all()
    assert torch.isfinite(out.log_prob).all()
    _, lp = reference_log_probs(rewards, 1.0, out.index)
    torch.testing.assert_close(out.log_prob.double(), lp, atol=2e-5, rtol=1e-6)
    # Row 0's first two winners are forced: 0.0, then -200 over -300 (log-prob ~ -e^-100).
    assert out.index[0::3, :2].tolist() == [[0, 1]] * 40
