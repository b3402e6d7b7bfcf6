"""Tests of ``lightning_curate.kchoice``: laws (chi-square against the exact oracle),
log-probabilities, gathering, determinism, edge cases and input validation.

Both backends run: "torch", and "triton" (the Triton interpreter on the CPU,
``TRITON_INTERPRET=1`` from conftest.py), with small shapes for the latter.
Every random test uses fixed seeds, and each statistical threshold is one a
correct implementation passes with certainty at that seed; each chi-square
test also shows that the same statistic rejects a wrong law at the same size.
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from lightning_curate import kchoice
from lightning_curate import theory
from lightning_curate.ops.kchoice import KChoice

# The torch path's module (its chunk sizes are patched below).
kchoice_torch_module = importlib.import_module("lightning_curate.ops.kchoice_torch")

try:
    from lightning_curate.kernels.kchoice_triton import kchoice_triton
except ImportError as err:  # triton missing, or the package is not installed
    kchoice_triton = None
    _TRITON_SKIP = f"lightning_curate.kernels.kchoice_triton does not import: {err}"
else:
    _TRITON_SKIP = ""

needs_triton = pytest.mark.skipif(kchoice_triton is None, reason=_TRITON_SKIP)
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton)]
# Sample sizes for statistical tests: the interpreter is slow, torch is not.
N_STAT = {"torch": 100_000, "triton": 4_000}
P_MIN = 1e-6  # a correct sampler passes; the wrong laws below score far under it


def chi2_pvalue(counts: torch.Tensor, probs) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs``.

    Cells of probability 0 must be empty (else the p-value is 0) and carry no
    degree of freedom.
    """
    counts = counts.to(torch.float64).flatten()
    probs = torch.as_tensor(probs, dtype=torch.float64).flatten()
    assert counts.shape == probs.shape
    if (counts[probs == 0] > 0).any():
        return 0.0
    keep = probs > 0
    n = counts.sum()
    expected = n * probs[keep] / probs[keep].sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    df = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def pair_counts(index: torch.Tensor, k: int) -> torch.Tensor:
    """Counts of ordered pairs ``(i, j)`` in an ``[N, 2]`` index, as a ``[k * k]`` vector."""
    return torch.bincount(index[:, 0] * k + index[:, 1], minlength=k * k)


def pl_pair_law(scores, k: int) -> torch.Tensor:
    law = torch.zeros(k * k, dtype=torch.float64)
    for (i, j), prob in theory.plackett_luce_law(scores, 2).items():
        law[i * k + j] = prob
    return law


def reference_log_probs(rewards: torch.Tensor, beta: float, index: torch.Tensor):
    """float64 ``logsumexp(beta * r)`` and the cumulative Plackett-Luce log-probs of ``index``."""
    r = rewards.to(torch.float64)
    s = torch.where(r == -math.inf, torch.full_like(r, -math.inf), r * beta)
    lse = torch.logsumexp(s, dim=1)
    idx = index if index.dim() == 2 else index[:, None]
    remaining, steps = s.clone(), []
    for j in range(idx.shape[1]):
        col = idx[:, j : j + 1]
        steps.append(remaining.gather(1, col)[:, 0] - torch.logsumexp(remaining, dim=1))
        remaining.scatter_(1, col, -math.inf)
    lp = torch.stack(steps, dim=1).cumsum(dim=1)
    return lse, lp if index.dim() == 2 else lp[:, 0]


def assert_same(a: KChoice, b: KChoice) -> None:
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.log_prob, b.log_prob)
    assert torch.equal(a.logsumexp, b.logsumexp)
    assert (a.chosen is None) == (b.chosen is None)
    if a.chosen is not None:
        assert torch.equal(a.chosen, b.chosen)


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
    index, lp, _, _ = kchoice_triton(rewards, 1.0, num_winners=4, mode="argmax", seed=0,
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


# -------------------------------------------------------------------- candidates

CANDIDATE_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int64, torch.bool]


def _make_candidates(n, k, trailing, dtype, gen):
    values = torch.randn((n, k) + trailing, generator=gen) * 10
    return values > 0 if dtype == torch.bool else values.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("trailing", [(), (3,), (2, 5)], ids=str)
@pytest.mark.parametrize("dtype", CANDIDATE_DTYPES, ids=str)
def test_chosen_gathers_candidates(backend, trailing, dtype):
    gen = torch.Generator().manual_seed(8)
    n, k = 41, 6
    rewards = torch.randn(n, k, generator=gen)
    candidates = _make_candidates(n, k, trailing, dtype, gen)
    for m in (1, 2):
        out = kchoice(rewards, 1.0, num_winners=m, seed=5, candidates=candidates, backend=backend)
        rows = torch.arange(n) if m == 1 else torch.arange(n)[:, None]
        expected = candidates[rows, out.index]
        assert out.chosen.dtype == dtype
        assert out.chosen.shape == tuple(out.index.shape) + trailing
        assert torch.equal(out.chosen, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chosen_with_strided_and_odd_candidates(backend):
    gen = torch.Generator().manual_seed(9)
    n, k = 23, 5
    rewards = torch.randn(n, k, generator=gen)
    cases = {
        "permuted": torch.randn(k, n, 4, 3, generator=gen).permute(1, 0, 3, 2),
        "sliced": torch.randn(n, k, 8, generator=gen)[:, :, ::2],
        "expanded": torch.randn(1, k, 3, generator=gen).expand(n, k, 3),
        "empty-trailing": torch.randn(n, k, 0, generator=gen),
        "complex64": torch.randn(n, k, 2, dtype=torch.complex64, generator=gen),
        "complex128": torch.randn(n, k, 2, dtype=torch.complex128, generator=gen),
        "uint8": torch.randint(0, 255, (n, k), dtype=torch.uint8, generator=gen),
    }
    for name, candidates in cases.items():
        for m in (1, 3):
            out = kchoice(rewards, 1.0, num_winners=m, seed=1, candidates=candidates, backend=backend)
            rows = torch.arange(n) if m == 1 else torch.arange(n)[:, None]
            assert torch.equal(out.chosen, candidates[rows, out.index]), name
            assert out.chosen.dtype == candidates.dtype, name


# -------------------------------------------------------------------- determinism

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["softmax", "uniform"])
def test_seed_determinism(backend, mode):
    gen = torch.Generator().manual_seed(3)
    rewards = torch.randn(300, 8, generator=gen)
    candidates = torch.randn(300, 8, 2, generator=gen)
    a = kchoice(rewards, 1.0, num_winners=2, mode=mode, seed=123, candidates=candidates, backend=backend)
    b = kchoice(rewards, 1.0, num_winners=2, mode=mode, seed=123, candidates=candidates, backend=backend)
    assert_same(a, b)
    c = kchoice(rewards, 1.0, num_winners=2, mode=mode, seed=124, candidates=candidates, backend=backend)
    assert not torch.equal(a.index, c.index)
    big = kchoice(rewards, 1.0, num_winners=2, mode=mode, seed=2**62 - 1, backend=backend)
    assert not torch.equal(a.index, big.index)

    torch.manual_seed(0)
    d = kchoice(rewards, 1.0, mode=mode, backend=backend)
    e = kchoice(rewards, 1.0, mode=mode, backend=backend)
    torch.manual_seed(0)
    f = kchoice(rewards, 1.0, mode=mode, backend=backend)
    assert_same(d, f)
    assert not torch.equal(d.index, e.index)


def test_auto_backend_on_cpu_is_torch():
    gen = torch.Generator().manual_seed(4)
    rewards = torch.randn(500, 9, generator=gen)
    candidates = torch.randn(500, 9, 3, generator=gen)
    for m in (1, 2):
        auto = kchoice(rewards, 1.5, num_winners=m, seed=42, candidates=candidates)
        ref = kchoice(rewards, 1.5, num_winners=m, seed=42, candidates=candidates, backend="torch")
        assert_same(auto, ref)


@needs_triton
@pytest.mark.parametrize("mode", ["softmax", "uniform", "argmax"])
@pytest.mark.parametrize("k, tiles", [
    (7, [(4, 2), (16, 4)]),
    (37, [(4, 8), (16, 16)]),
    (300, [(8, 64), (4, 128)]),
], ids=["K7", "K37", "K300"])
def test_triton_draw_does_not_depend_on_block_sizes(mode, k, tiles):
    n = 12
    gen = torch.Generator().manual_seed(k)
    rewards = torch.randn(n, k, generator=gen)
    rewards[torch.rand(n, k, generator=gen) < 0.1] = -math.inf
    rewards[:, -3:] = torch.randn(n, 3, generator=gen)  # the last chunk holds finite rewards
    for m in (1, 3):
        public = kchoice(rewards, 1.2, num_winners=m, mode=mode, seed=77, backend="triton")
        for block_n, block_k in tiles:
            assert block_k < k
            idx, lp, lse, _ = kchoice_triton(rewards, 1.2, num_winners=m, mode=mode, seed=77,
                                             block_n=block_n, block_k=block_k)
            assert torch.equal(idx, public.index), (block_n, block_k)
            # Online sums in another order: equal up to float32 rounding.
            torch.testing.assert_close(lp, public.log_prob, atol=2e-5, rtol=1e-6)
            torch.testing.assert_close(lse, public.logsumexp, atol=2e-5, rtol=1e-6)
        if mode == "softmax":
            ref_lse, ref_lp = reference_log_probs(rewards, 1.2, public.index)
            torch.testing.assert_close(public.log_prob.double(), ref_lp, atol=2e-5, rtol=1e-6)
            torch.testing.assert_close(public.logsumexp.double(), ref_lse, atol=2e-5, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_k_streams_in_chunks(backend):
    """K = 4096 (many BLOCK_K chunks in the kernel): exact log-probs, exact argmax."""
    gen = torch.Generator().manual_seed(31)
    n, k = 6, 4096
    rewards = torch.randn(n, k, generator=gen) * 3
    rewards[:, 1000:3000] = -math.inf
    out = kchoice(rewards, 0.9, num_winners=2, seed=8, backend=backend)
    assert torch.isfinite(rewards.gather(1, out.index)).all()
    lse, lp = reference_log_probs(rewards, 0.9, out.index)
    torch.testing.assert_close(out.logsumexp.double(), lse, atol=2e-5, rtol=1e-6)
    torch.testing.assert_close(out.log_prob.double(), lp, atol=2e-5, rtol=1e-6)
    best = kchoice(rewards, 0.9, num_winners=2, mode="argmax", seed=8, backend=backend)
    assert torch.equal(best.index, torch.topk(rewards, 2, dim=1).indices)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_winners", [1, 2])
def test_rewards_that_require_grad_are_accepted(backend, num_winners):
    """Rewards straight out of a reward model (no torch.no_grad) work; outputs carry no grad."""
    rewards = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = kchoice(rewards * 2, 1.0, num_winners=num_winners, seed=3, backend=backend)
    ref = kchoice((rewards * 2).detach(), 1.0, num_winners=num_winners, seed=3, backend=backend)
    assert_same(out, ref)
    assert not out.log_prob.requires_grad and not out.logsumexp.requires_grad


@needs_triton
def test_triton_block_sizes_must_be_powers_of_two():
    rewards = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="block_k"):
        kchoice_triton(rewards, 1.0, num_winners=1, mode="softmax", seed=0, block_k=3)
    with pytest.raises(ValueError, match="block_n"):
        kchoice_triton(rewards, 1.0, num_winners=1, mode="softmax", seed=0, block_n=0)


@needs_triton
def test_triton_and_torch_agree_on_deterministic_parts():
    """The random streams differ; everything the seed does not touch is equal."""
    gen = torch.Generator().manual_seed(6)
    rewards = torch.randn(200, 13, generator=gen)
    for m in (1, 4):
        tr = kchoice(rewards, 0.8, num_winners=m, mode="argmax", seed=1, backend="triton")
        to = kchoice(rewards, 0.8, num_winners=m, mode="argmax", seed=1, backend="torch")
        assert torch.equal(tr.index, to.index)
        torch.testing.assert_close(tr.logsumexp, to.logsumexp)
        tr = kchoice(rewards, 0.8, num_winners=m, mode="uniform", seed=1, backend="triton")
        to = kchoice(rewards, 0.8, num_winners=m, mode="uniform", seed=1, backend="torch")
        torch.testing.assert_close(tr.log_prob, to.log_prob)


# -------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["softmax", "argmax", "uniform"])
def test_single_candidate(backend, mode):
    rewards = torch.tensor([[0.5], [-3.0], [2.0]])
    out = kchoice(rewards, 2.0, mode=mode, seed=1, candidates=torch.arange(3)[:, None], backend=backend)
    assert torch.equal(out.index, torch.zeros(3, dtype=torch.int64))
    assert torch.equal(out.log_prob, torch.zeros(3))
    torch.testing.assert_close(out.logsumexp, 2.0 * rewards[:, 0])
    assert torch.equal(out.chosen, torch.arange(3))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("num_winners", [1, 2])
def test_empty_batch(backend, num_winners):
    rewards = torch.empty(0, 4)
    candidates = torch.empty(0, 4, 3, dtype=torch.float16)
    out = kchoice(rewards, 1.0, num_winners=num_winners, seed=0, candidates=candidates, backend=backend)
    shape = (0,) if num_winners == 1 else (0, num_winners)
    assert out.index.shape == shape and out.index.dtype == torch.int64
    assert out.log_prob.shape == shape and out.log_prob.dtype == torch.float32
    assert out.logsumexp.shape == (0,)
    assert out.chosen.shape == shape + (3,) and out.chosen.dtype == torch.float16
    assert kchoice(rewards, backend=backend).chosen is None


def test_empty_input_with_no_candidates_at_all():
    out = kchoice(torch.empty(0, 0))
    assert out.index.shape == (0,) and out.logsumexp.shape == (0,)


# -------------------------------------------------------------------- validation

INF, NAN = math.inf, math.nan


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rewards=torch.zeros(5)), ValueError, r"rewards.*2-D"),
    (dict(rewards=torch.zeros(2, 3, 4)), ValueError, r"rewards.*2-D"),
    (dict(rewards=torch.zeros(2, 3, dtype=torch.int64)), TypeError, r"rewards.*floating"),
    (dict(rewards=[[0.0, 1.0]]), TypeError, r"rewards.*torch.Tensor"),
    (dict(rewards=torch.zeros(3, 0)), ValueError, r"rewards has K = 0"),
    (dict(num_winners=0), ValueError, r"num_winners"),
    (dict(num_winners=5), ValueError, r"num_winners"),
    (dict(num_winners=2.0), TypeError, r"num_winners"),
    (dict(rewards=torch.empty(0, 4), num_winners=0), ValueError, r"num_winners"),
    (dict(rewards=torch.empty(0, 4), num_winners=-1), ValueError, r"num_winners"),
    (dict(beta=-1.0), ValueError, r"beta"),
    (dict(beta=NAN), ValueError, r"beta"),
    (dict(beta=INF), ValueError, r"beta"),
    (dict(beta="1"), TypeError, r"beta"),
    (dict(beta=torch.ones(2)), ValueError, r"beta"),
    (dict(seed=1.5), TypeError, r"seed"),
    (dict(mode="best"), ValueError, r"mode"),
    (dict(backend="cuda"), ValueError, r"backend"),
    (dict(candidates=torch.zeros(5, 3)), ValueError, r"candidates"),
    (dict(candidates=torch.zeros(4, 5)), ValueError, r"candidates"),
    (dict(candidates=torch.zeros(4)), ValueError, r"candidates"),
    (dict(candidates=[0, 1]), TypeError, r"candidates"),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_bad_inputs_raise(kwargs, error, match):
    args = dict(rewards=torch.zeros(4, 3), beta=1.0)
    args.update(kwargs)
    rewards = args.pop("rewards")
    beta = args.pop("beta")
    with pytest.raises(error, match=match):
        kchoice(rewards, beta, **args)


@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "+inf"])
def test_non_finite_rewards_report_row_count(bad):
    rewards = torch.zeros(5, 3)
    rewards[1, 2] = bad
    rewards[3, 0] = bad
    rewards[3, 1] = bad
    with pytest.raises(ValueError, match=r"rewards contains NaN or \+inf in 2 of 5 rows"):
        kchoice(rewards)


def test_all_minus_inf_row_rejected():
    rewards = torch.zeros(4, 3)
    rewards[2] = -INF
    with pytest.raises(ValueError, match=r"rewards has 1 of 4 rows whose candidates are all -inf"):
        kchoice(rewards)
    # One finite candidate is enough for one winner, not for two (softmax).
    rewards[2, 1] = 0.0
    assert kchoice(rewards, seed=0).index[2] == 1
    with pytest.raises(ValueError, match=r"num_winners=2 but 1 of 4 rows"):
        kchoice(rewards, num_winners=2, seed=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_finite_rewards_for_num_winners_counts_rows(backend):
    rewards = torch.zeros(6, 4)
    rewards[1, 1:] = -INF
    rewards[4, :3] = -INF
    rewards[5, ::2] = -INF  # 2 finite: enough for 2 winners, not 3
    with pytest.raises(ValueError, match=r"num_winners=3 but 3 of 6 rows have fewer than 3"):
        kchoice(rewards, num_winners=3, seed=0, backend=backend)
    assert kchoice(rewards[[0, 2, 3]], num_winners=3, seed=0, backend=backend).index.shape == (3, 3)
    # Argmax and uniform may pick -inf candidates: no such check.
    assert kchoice(rewards, num_winners=3, mode="uniform", seed=0, backend=backend).index.shape == (6, 3)


def test_beta_times_rewards_overflow_rejected():
    rewards = torch.tensor([[1e37, 0.0], [0.0, 1.0]])
    assert kchoice(rewards, 1.0, seed=0).index[0] == 0
    with pytest.raises(ValueError, match=r"beta \* rewards overflows torch.float32"):
        kchoice(rewards, 100.0, seed=0)
    # A row whose best reward times beta is -inf in float32 would have no candidate left.
    with pytest.raises(ValueError, match=r"beta \* rewards overflows"):
        kchoice(torch.tensor([[0.0, 1.0], [-1e37, -2e37]]), 100.0, seed=0)
    # float64 rewards compute in float64: no overflow there.
    assert kchoice(rewards.double(), 100.0, seed=0).index[0] == 0


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend='triton'.*TRITON_INTERPRET"):
        kchoice(torch.zeros(2, 3), backend="triton")
    # auto quietly uses torch instead.
    assert kchoice(torch.zeros(2, 3), seed=0).index.shape == (2,)
