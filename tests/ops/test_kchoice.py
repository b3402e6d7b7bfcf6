"""Tests of ``lightning_curate.kchoice``: laws (chi-square against the exact oracle),
ties and log-probabilities. The torch path's own tests are in test_kchoice_torch_path.py,
gathering, determinism, edge cases and validation in test_kchoice_api.py.

Both backends run: "torch", and "triton" (the Triton interpreter on the CPU,
``TRITON_INTERPRET=1`` from conftest.py), with small shapes for the latter.
Every random test uses fixed seeds, and each statistical threshold is one a
correct implementation passes with certainty at that seed; each chi-square
test also shows that the same statistic rejects a wrong law at the same size.
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import (
    BACKENDS,
    N_STAT,
    P_MIN,
    chi2_pvalue,
    kchoice_triton,
    needs_triton,
    pair_counts,
    pl_pair_law,
    reference_log_probs,
)

from lightning_curate import kchoice, theory

# --------------------------------------------------------------------------- laws

# (p, r, K, beta, wrong law or None for "p itself")
CURATED_CASES = [
    pytest.param((0.5, 0.3, 0.2), (0.0, 1.0, 2.0), 2, 1.0, None, id="worked-K2"),
    pytest.param((0.5, 0.3, 0.2), (0.0, 1.0, 2.0), 3, 1.0, None, id="worked-K3"),
    pytest.param((0.5, 0.3, 0.2), (0.0, 1.0, 2.0), 5, 1.0, None, id="worked-K5"),
    pytest.param((0.1, 0.2, 0.3, 0.4), (-1.0, 0.5, 2.0, 0.0), 4, 0.7, None, id="4atoms-K4"),
    pytest.param((0.05, 0.15, 0.3, 0.2, 0.3), (3.0, 1.0, -2.0, 0.5, 0.0), 7, 1.5, None, id="5atoms-K7"),
    # beta = 0 is no curation: q = p. The wrong law is what beta = 1 would give.
    pytest.param((0.5, 0.3, 0.2), (0.0, 1.0, 2.0), 3, 0.0, "beta=1", id="beta0-K3"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("p, r, K, beta, wrong", CURATED_CASES)
def test_winner_law_matches_curated_distribution(backend, p, r, K, beta, wrong):
    n = N_STAT[backend]
    gen = torch.Generator().manual_seed(1234 + K)
    atoms = torch.multinomial(torch.tensor(p), n * K, replacement=True, generator=gen).view(n, K)
    rewards = torch.tensor(r, dtype=torch.float32)[atoms]
    out = kchoice(rewards, beta, seed=2024 + K, backend=backend)
    assert out.index.shape == (n,) and out.index.dtype == torch.int64
    winners = atoms[torch.arange(n), out.index]
    counts = torch.bincount(winners, minlength=len(p))

    q = theory.curated_distribution(p, r, K, beta)
    assert chi2_pvalue(counts, q) > P_MIN
    # Power: the same statistic at the same N rejects a wrong law.
    wrong_law = torch.tensor(p) if wrong is None else theory.curated_distribution(p, r, K, 1.0)
    assert chi2_pvalue(counts, wrong_law) < P_MIN


@pytest.mark.parametrize("backend", BACKENDS)
def test_ordered_pairs_follow_plackett_luce(backend):
    n = N_STAT[backend]
    beta = 1.3
    row = torch.tensor([0.0, 1.0, -0.5, 2.0, -math.inf])
    k = row.numel()
    rewards = row.expand(n, k)  # stride 0 along rows: any strides are accepted
    out = kchoice(rewards, beta, num_winners=2, seed=7, backend=backend)
    assert out.index.shape == (n, 2)
    assert (out.index[:, 0] != out.index[:, 1]).all()
    counts = pair_counts(out.index, k)
    law = pl_pair_law((beta * row).tolist(), k)
    assert counts.view(k, k)[:, 4].sum() == 0 and counts.view(k, k)[4].sum() == 0
    assert chi2_pvalue(counts, law) > P_MIN
    # Power: independent draws with replacement removed would be a different law.
    uniform_pairs = (law > 0).to(torch.float64)
    assert chi2_pvalue(counts, uniform_pairs) < P_MIN
    # The first winner alone follows softmax(beta * r).
    first = torch.bincount(out.index[:, 0], minlength=k)
    assert chi2_pvalue(first, torch.softmax(beta * row.double(), 0)) > P_MIN


@pytest.mark.parametrize("backend", BACKENDS)
def test_beta_zero_is_uniform_over_finite_rewards(backend):
    n = N_STAT[backend]
    row = torch.tensor([0.0, -math.inf, 5.0, -math.inf, -2.0])
    rewards = row.repeat(n, 1)
    out = kchoice(rewards, 0.0, seed=11, backend=backend)
    law = torch.tensor([1, 0, 1, 0, 1], dtype=torch.float64) / 3
    assert chi2_pvalue(torch.bincount(out.index, minlength=5), law) > P_MIN
    torch.testing.assert_close(out.logsumexp, torch.full((n,), math.log(3.0)))
    torch.testing.assert_close(out.log_prob, torch.full((n,), -math.log(3.0)))

    two = kchoice(rewards, 0.0, num_winners=2, seed=12, backend=backend)
    finite = torch.tensor([True, False, True, False, True])
    assert finite[two.index].all()
    torch.testing.assert_close(two.log_prob[:, 1], torch.full((n,), -math.log(3.0) - math.log(2.0)))
    assert chi2_pvalue(pair_counts(two.index, 5), pl_pair_law([0.0, -math.inf, 0.0, -math.inf, 0.0], 5)) > P_MIN


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_mode_ignores_rewards(backend):
    n, k = N_STAT[backend], 6
    gen = torch.Generator().manual_seed(5)
    rewards = torch.randn(n, k, generator=gen) * 3
    rewards[:, 0] = -math.inf  # uniform mode may still pick it
    out = kchoice(rewards, 2.0, mode="uniform", seed=3, backend=backend)
    counts = torch.bincount(out.index, minlength=k)
    assert chi2_pvalue(counts, torch.full((k,), 1 / k)) > P_MIN
    torch.testing.assert_close(out.log_prob, torch.full((n,), -math.log(k)))
    # Power: softmax of these rewards is far from uniform.
    soft = kchoice(rewards, 2.0, mode="softmax", seed=3, backend=backend)
    assert chi2_pvalue(torch.bincount(soft.index, minlength=k), torch.full((k,), 1 / k)) < P_MIN
    # The rewards do not enter the draw at all.
    other = kchoice(torch.zeros(n, k), 2.0, mode="uniform", seed=3, backend=backend)
    assert torch.equal(out.index, other.index)


@pytest.mark.parametrize("backend", BACKENDS)
def test_uniform_mode_two_winners(backend):
    n, k = N_STAT[backend], 5
    rewards = torch.linspace(-2, 2, k).repeat(n, 1)
    out = kchoice(rewards, 1.0, num_winners=2, mode="uniform", seed=21, backend=backend)
    assert (out.index[:, 0] != out.index[:, 1]).all()
    law = 1.0 - torch.eye(k, dtype=torch.float64)  # every ordered pair of distinct candidates
    counts = pair_counts(out.index, k)
    assert chi2_pvalue(counts, law) > P_MIN
    assert chi2_pvalue(counts, pl_pair_law(torch.linspace(-2, 2, k).tolist(), k)) < P_MIN
    expected = torch.tensor([-math.log(k), -math.log(k) - math.log(k - 1)])
    torch.testing.assert_close(out.log_prob, expected.expand(n, 2))


# ------------------------------------------------------------------ argmax and ties

@pytest.mark.parametrize("backend", BACKENDS)
def test_argmax_lowest_index_wins_ties(backend):
    inf = math.inf
    rewards = torch.tensor([
        [1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 1.0],
        [-inf, -inf, 0.0, -inf, 0.0, -inf, -inf],
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -0.5],
    ])
    one = kchoice(rewards, 2.0, mode="argmax", seed=0, backend=backend)
    assert one.index.tolist() == [1, 2, 0, 6]
    assert torch.equal(one.log_prob, torch.zeros(4))
    three = kchoice(rewards, 2.0, num_winners=3, mode="argmax", seed=0, backend=backend)
    assert three.index.tolist() == [[1, 2, 4], [2, 4, 0], [0, 1, 2], [6, 0, 1]]
    assert torch.equal(three.log_prob, torch.zeros(4, 3))
    all7 = kchoice(rewards, 2.0, num_winners=7, mode="argmax", seed=0, backend=backend)
    ref = torch.sort(rewards, dim=1, descending=True, stable=True).indices
    assert torch.equal(all7.index, ref)
    lse, _ = reference_log_probs(rewards, 2.0, one.index)
    torch.testing.assert_close(one.logsumexp, lse.float())
    # The draw is deterministic: the seed does not matter.
    assert torch.equal(kchoice(rewards, 2.0, mode="argmax", seed=99, backend=backend).index, one.index)


@needs_triton
@pytest.mark.parametrize("block_k", [2, 4, 8])
def test_argmax_ties_across_chunks(block_k):
    """Ties split over several K-chunks still go to the lowest index."""
    rewards = torch.tensor([[0.0, 1.0, 2.0, 7.0, 7.0, 1.0, 7.0, 7.0, 7.0]]).repeat(3, 1)
    index, lp, _, _, _ = kchoice_triton(rewards, 1.0, num_winners=4, mode="argmax", seed=0,
                                     block_n=2, block_k=block_k)
    assert index.tolist() == [[3, 4, 6, 7]] * 3
    assert torch.equal(lp, torch.zeros(3, 4))


# ------------------------------------------------------------ log-probs, logsumexp

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("num_winners", [1, 3])
@pytest.mark.parametrize("beta", [0.0, 0.5, 2.5])
def test_log_prob_and_logsumexp_match_float64(backend, dtype, num_winners, beta):
    gen = torch.Generator().manual_seed(17)
    n, k = 257, 37
    rewards = (torch.randn(n, k, generator=gen) * 2).to(dtype)
    rewards[torch.rand(n, k, generator=gen) < 0.2] = -math.inf
    rewards[:, :3] = torch.randn(n, 3, generator=gen).to(dtype)  # at least 3 finite per row
    out = kchoice(rewards, beta, num_winners=num_winners, seed=4, backend=backend)
    shape = (n,) if num_winners == 1 else (n, num_winners)
    assert out.index.shape == shape and out.index.dtype == torch.int64
    assert out.log_prob.shape == shape and out.log_prob.dtype == torch.float32
    assert out.logsumexp.shape == (n,) and out.logsumexp.dtype == torch.float32
    assert out.chosen is None
    idx = out.index.view(n, -1)
    assert (idx >= 0).all() and (idx < k).all()
    assert torch.isfinite(rewards.gather(1, idx)).all()  # -inf rewards never win
    assert (idx.sort(dim=1).values.diff(dim=1) > 0).all()  # no repeats
    lse, lp = reference_log_probs(rewards, beta, out.index)
    torch.testing.assert_close(out.logsumexp.double(), lse, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(out.log_prob.double(), lp, atol=2e-5, rtol=1e-6)


def test_torch_float64_log_prob_keeps_precision():
    """Large float64 rewards: the log-prob is a small difference of large numbers."""
    row = torch.tensor([10000.0, 10000.3, 9999.1, 10001.0], dtype=torch.float64)
    rewards = row.repeat(64, 1)
    for m in (1, 3):
        out = kchoice(rewards, 1.0, num_winners=m, seed=0, backend="torch")
        _, lp = reference_log_probs(rewards, 1.0, out.index)
        torch.testing.assert_close(out.log_prob.double(), lp, atol=1e-6, rtol=1e-6)
