"""``kchoice``: gathering candidates, determinism, tile independence, edge cases and validation.

Backends, seeds and thresholds as in test_kchoice.py (shared pieces in kchoice_helpers.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import (
    BACKENDS,
    assert_same,
    kchoice_triton,
    needs_triton,
    reference_log_probs,
)

from lightning_curate import kchoice

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
            idx, lp, lse, _, _ = kchoice_triton(rewards, 1.2, num_winners=m, mode=mode, seed=77,
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("beta", [1.0, 0.0])
@pytest.mark.parametrize("mode", ["softmax", "uniform"])
@pytest.mark.parametrize("bad", [NAN, INF], ids=["nan", "+inf"])
def test_non_finite_rewards_report_row_count(bad, mode, beta, backend):
    """Also with beta = 0 and in uniform mode (which ignore the values): NaN is never a reward."""
    rewards = torch.zeros(5, 3)
    rewards[1, 2] = bad
    rewards[3, 0] = bad
    rewards[3, 1] = bad
    with pytest.raises(ValueError, match=r"rewards contains NaN or \+inf in 2 of 5 rows"):
        kchoice(rewards, beta, mode=mode, seed=0, backend=backend, check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_minus_inf_row_rejected(backend):
    rewards = torch.zeros(4, 3)
    rewards[2] = -INF
    with pytest.raises(ValueError, match=r"rewards has 1 of 4 rows whose candidates are all -inf"):
        kchoice(rewards, backend=backend, check=True)
    # One finite candidate is enough for one winner, not for two (softmax).
    rewards[2, 1] = 0.0
    assert kchoice(rewards, seed=0, backend=backend).index[2] == 1
    with pytest.raises(ValueError, match=r"num_winners=2 but 1 of 4 rows"):
        kchoice(rewards, num_winners=2, seed=0, backend=backend, check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_finite_rewards_for_num_winners_counts_rows(backend):
    rewards = torch.zeros(6, 4)
    rewards[1, 1:] = -INF
    rewards[4, :3] = -INF
    rewards[5, ::2] = -INF  # 2 finite: enough for 2 winners, not 3
    with pytest.raises(ValueError, match=r"num_winners=3 but 3 of 6 rows have fewer than 3"):
        kchoice(rewards, num_winners=3, seed=0, backend=backend, check=True)
    assert kchoice(rewards[[0, 2, 3]], num_winners=3, seed=0, backend=backend).index.shape == (3, 3)
    # Argmax and uniform may pick -inf candidates: no such check.
    assert kchoice(rewards, num_winners=3, mode="uniform", seed=0, backend=backend).index.shape == (6, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["softmax", "argmax"])
def test_beta_times_rewards_overflow_rejected(backend, mode):
    rewards = torch.tensor([[1e37, 0.0], [0.0, 1.0]])
    assert kchoice(rewards, 1.0, mode=mode, seed=0, backend=backend).index[0] == 0
    with pytest.raises(ValueError, match=r"beta \* rewards overflows torch.float32"):
        kchoice(rewards, 100.0, mode=mode, seed=0, backend=backend, check=True)
    # A row whose best reward times beta is -inf in float32 would have no candidate left.
    with pytest.raises(ValueError, match=r"beta \* rewards overflows"):
        kchoice(torch.tensor([[0.0, 1.0], [-1e37, -2e37]]), 100.0, mode=mode, seed=0, backend=backend, check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_rewards_must_fit_float32(backend):
    """Log-probabilities are float32 on both backends and the kernel reads float32: a float64 reward
    beyond float32's range is refused on both (it was inf on one and a never-chosen -inf on the other)."""
    rewards = torch.tensor([[1e37, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert kchoice(rewards, 1.0, seed=0, backend=backend).index[0] == 0
    with pytest.raises(ValueError, match=r"beta \* rewards overflows torch.float32 \(the dtype of log_prob"):
        kchoice(rewards, 100.0, seed=0, backend=backend, check=True)
    for bad in (1e300, -1e300, 1e39):
        with pytest.raises(ValueError, match=r"rewards are float64 with finite values up to .* outside float32's"):
            kchoice(torch.tensor([[bad, 1.0], [0.0, 1.0]], dtype=torch.float64), 0.0, seed=0, backend=backend,
                    check=True)
    ok = torch.tensor([[-math.inf, 1.0], [3e38, -3e38]], dtype=torch.float64)  # -inf and float32's edge: fine
    assert kchoice(ok, 0.5, seed=0, backend=backend).index.tolist() in ([1, 0], [1, 1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["softmax", "argmax", "uniform"])
@pytest.mark.parametrize("case", ["nan", "inf at beta 0", "nan row"])
def test_non_finite_rewards_are_refused_with_several_winners(backend, mode, case):
    """With m > 1 a NaN never enters the race; it must still refuse the call (and no index may leave the row)."""
    rewards = torch.tensor([[1.0, 2.0, 0.5], [0.0, 1.0, 2.0]])
    beta = 1.0
    if case == "nan":
        rewards[0, 2] = math.nan
    elif case == "inf at beta 0":
        rewards[0, 2], beta = math.inf, 0.0
    else:
        rewards[0, [0, 2]] = math.nan
    with pytest.raises(ValueError, match=r"rewards contains NaN or \+inf in 1 of 2 rows"):
        kchoice(rewards, beta, num_winners=2, mode=mode, seed=0, backend=backend, check=True)


def test_underflow_that_leaves_too_few_candidates_is_named():
    """beta * r of a finite reward can underflow float32 to -inf: the kernel path says so, with the row count."""
    rewards = torch.tensor([[0.0, -1e30], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"leaves float32's range in 1 of 2 rows .*underflows to -inf"):
        kchoice(rewards, 1e10, num_winners=2, seed=0, backend="triton", check=True)


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match=r"backend='triton'.*TRITON_INTERPRET"):
        kchoice(torch.zeros(2, 3), backend="triton", check=True)
    # auto quietly uses torch instead.
    assert kchoice(torch.zeros(2, 3), seed=0).index.shape == (2,)
