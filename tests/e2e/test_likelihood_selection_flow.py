"""End to end: the loop keeps a fraction of its pool by a flow's own log-likelihood.

A tiny 2D run from the YAML config (FlowMatching with an EMA, ``PoolFraction(score=likelihood)``),
curated in chunks smaller than the pool, so the second pass regenerates every chunk from its seeds.
An oracle written here regenerates the pool from the same seeds with a copy of the generator taken
when the round began, ranks it by ``log_prob`` with its own tie rule, and must find the stored
winners exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.loop import CurationModule
from lightning_curate.store.rounds import RoundStore
from lightning_curate.utils.seeding import derive_seed

SLOTS, K, FRACTION, CHUNK = 600, 2, 0.25, 512  # a pool of 1200 in two chunks (blocks of 512 slots)


def _oracle(generator, seed: int, rule: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept candidates, their pool indices and the whole pool's log-likelihoods, from the round's
    seeds, ranked independently of lightning_curate.loop.selection."""
    blocks = [(b, min(512, SLOTS - b * 512)) for b in range((SLOTS + 511) // 512)]
    # one chunk of blocks per chunk_size, as the round scores them (log_prob per chunk)
    per_chunk = max(1, -(-CHUNK // 512))
    pool, logp = [], []
    for first in range(0, len(blocks), per_chunk):
        chunk = blocks[first:first + per_chunk]
        cands = torch.cat([generator.sample(nb * K, generator=torch.Generator().manual_seed(
            derive_seed(seed, "candidates", b))) for b, nb in chunk])
        pool.append(cands)
        logp.append(generator.log_prob(cands))
    x, scores = torch.cat(pool), torch.cat(logp).double().tolist()
    keep = int(FRACTION * SLOTS * K)
    sign = -1.0 if rule == "top" else 1.0
    order = sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))  # ties: the lower index first
    kept = sorted(order[:keep])
    return x[kept], torch.tensor(kept), torch.tensor(scores)


@pytest.mark.parametrize("rule", ["bottom", "top"])
def test_flow_likelihood_selection_keeps_exactly_the_oracles_set(tmp_path, monkeypatch, rule):
    seen: dict[int, tuple[int, object]] = {}
    original = CurationModule.curate_round

    def recording(self, round_idx, seed, *args, **kwargs):
        seen[round_idx] = (seed, copy.deepcopy(self.generator))  # the model the round draws from
        return original(self, round_idx, seed, *args, **kwargs)

    monkeypatch.setattr(CurationModule, "curate_round", recording)
    run = tmp_path / rule
    selection = {"class_path": "lightning_curate.loop.PoolFraction",
                 "init_args": {"rule": rule, "fraction": FRACTION, "score": "likelihood"}}
    cfg = tiny_config(run, rounds=1, num_slots=SLOTS, num_candidates=K, chunk_size=CHUNK, preview_size=100,
                      selection=selection)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])  # completes: no regeneration error

    assert [int(r["round"]) for r in read_rows(run)] == [0, 1]
    store = RoundStore(run / "rounds")
    assert sorted(seen) == [0, 1]
    for t, (seed, generator) in seen.items():
        assert generator.ema is not None and generator.ema.n_averaged.item() > 0  # the EMA net is the one ranked
        record = store.read(t)
        assert record.manifest["settings"]["selection"] == {"class": "PoolFraction", "rule": rule,
                                                            "fraction": FRACTION, "score": "likelihood"}
        x, index, scores = _oracle(generator, seed, rule)
        assert x.shape == (int(FRACTION * SLOTS * K), 2)
        assert torch.equal(record.tensors["x"], x)
        assert torch.equal(record.tensors["slot"], index // K)
        # the rule did what it says: every kept score on its side of every dropped one
        dropped = torch.ones(scores.numel(), dtype=torch.bool)
        dropped[index] = False
        if rule == "bottom":
            assert scores[index].max() <= scores[dropped].min()
        else:
            assert scores[index].min() >= scores[dropped].max()
