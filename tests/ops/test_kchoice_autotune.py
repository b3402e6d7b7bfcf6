"""The CUDA launch configurations run under the interpreter: the autotuned K-choice launch and the gather tile.

Triton's autotuner times each config with CUDA events; here its benchmark is
replaced by one that runs each config once and ranks a chosen one first, so
every config of the set goes through the same autotuner, pruning and grid as
on CUDA, and must give the draw of the fixed-tile launch (the draw does not
depend on the tile).
"""

from __future__ import annotations

import math

import pytest
import torch
from kchoice_helpers import needs_triton

from lightning_curate import kchoice


@needs_triton
@pytest.mark.parametrize("mode", ["softmax", "argmax", "uniform"])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("k", [5, 300])
def test_every_autotune_config_gives_the_fixed_tile_draw(monkeypatch, mode, m, k):
    from lightning_curate.kernels import kchoice_triton as kt

    gen = torch.Generator().manual_seed(k)
    rewards = torch.randn(6, k, generator=gen)  # 3 programs at the smallest K = 300 tile
    if k > m + 1:
        rewards[:, 1] = -math.inf
    ref = kchoice(rewards, 1.1, num_winners=m, mode=mode, seed=5, backend="triton")
    tuned = kt._topm_tuned if m > 1 else kt._one_tuned
    pruned = kt._configs_for_k(tuned.configs, {"K": k})
    assert sorted((c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"], c.num_warps) for c in pruned) == \
        sorted((max(tile, kt.gpu_block_k(k)), warps) for tile, warps in kt.gpu_configs(m))
    for target in range(len(pruned)):
        calls = []

        def bench(kernel_call, quantiles, target=target, calls=calls):
            kernel_call()
            calls.append(len(calls))
            return [0.0 if len(calls) - 1 == target else 1.0] * len(quantiles)

        monkeypatch.setitem(tuned.__dict__, "do_bench", bench)
        monkeypatch.setattr(tuned, "cache", {})
        index, log_prob, lse, flag = kt._launch(rewards, 1.1, m, mode, 5, blocks=None)
        assert int(flag) == 0
        assert len(calls) == len(pruned)  # every config was launched
        assert tuned.best_config is pruned[target]
        assert torch.equal(index.view_as(ref.index), ref.index), tuned.best_config
        torch.testing.assert_close(log_prob.view_as(ref.log_prob), ref.log_prob, atol=2e-5, rtol=1e-6)
        torch.testing.assert_close(lse, ref.logsumexp, atol=2e-5, rtol=1e-6)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bool, torch.int16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("trailing", [(), (3,), (2, 33), (1100,)], ids=lambda t: "x".join(map(str, t)) or "scalar")
def test_gather_with_the_cuda_tile(dtype, trailing):
    """The gather's CUDA tile (GATHER_GPU_TILE elements), run under the interpreter: partial
    row and column tiles, several D-tiles per row (D = 1100 > 1024), m = 1 and m = 2."""
    from lightning_curate.kernels.gather_triton import gather_triton

    gen = torch.Generator().manual_seed(len(trailing))
    n, k = 5, 4
    src = torch.randn((n, k, *trailing), generator=gen)
    candidates = src > 0 if dtype == torch.bool else (src * 100).to(dtype)
    for m in (1, 2):
        index = torch.stack([torch.randperm(k, generator=gen)[:m] for _ in range(n)])
        index = index[:, 0] if m == 1 else index
        rows = torch.arange(n) if m == 1 else torch.arange(n)[:, None]
        assert torch.equal(gather_triton(candidates, index, interpret=False), candidates[rows, index])
