"""Likelihood-ranked selection (lightning_curate.experiments.field_likelihood): the selection rule exactly, the
one-generation retention ordering at fixed seeds on tiny sizes, and the rows."""

from __future__ import annotations

import pytest
import torch

from lightning_curate.experiments.field_likelihood import (
    LikelihoodSetting,
    likelihood_selection,
    minority_retention,
    mixture_sample,
    select_by_log_prob,
)
from lightning_curate.loop.selection import kept_mask

TINY = dict(n_real=300, pool=600, measure=4000, flow_steps=300)


def test_select_by_log_prob_keeps_the_top_bottom_or_a_random_k():
    lp = torch.tensor([0.5, -2.0, 3.0, 1.0, -1.0, 2.0])
    assert sorted(select_by_log_prob(lp, 2, "top", torch.Generator()).tolist()) == [2, 5]
    assert sorted(select_by_log_prob(lp, 2, "bottom", torch.Generator()).tolist()) == [1, 4]
    random = select_by_log_prob(lp, 3, "random", torch.Generator().manual_seed(4))
    assert random.tolist() == torch.randperm(6, generator=torch.Generator().manual_seed(4))[:3].tolist()
    with pytest.raises(ValueError, match="rule must be one of"):
        select_by_log_prob(lp, 2, "middle", torch.Generator())


@pytest.mark.parametrize("rule", ["top", "bottom"])
def test_select_by_log_prob_keeps_the_loops_set_in_rank_order_ties_to_the_lower_index(rule):
    lp = torch.tensor([1.0, 2.0, 2.0, 0.0, 2.0, 0.0, 1.0])
    picked = select_by_log_prob(lp, 3, rule, torch.Generator())
    assert picked.tolist() == ([1, 2, 4] if rule == "top" else [3, 5, 0])  # best first; equal scores by index
    mask = torch.zeros(lp.numel(), dtype=torch.bool)
    mask[picked] = True
    assert torch.equal(mask, kept_mask(lp, 3, rule))  # what PoolFraction keeps of the same scores
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(500, generator=generator)
    expected = torch.topk(scores, 50, largest=rule == "top").indices  # no ties: the former direct top-k's picks
    assert select_by_log_prob(scores, 50, rule, generator).tolist() == expected.tolist()


def test_the_mixture_is_imbalanced_as_set():
    setting = LikelihoodSetting(seeds=[0], flow_seeds=[0], minority=0.2)
    x = mixture_sample(20000, setting, torch.Generator().manual_seed(0))
    share = float((x[:, 0] > 0).double().mean())
    assert abs(share - 0.2) < 4 * (0.2 * 0.8 / 20000) ** 0.5  # within 4 standard errors (a fixed draw)


@pytest.mark.parametrize("learner,seeds", [("kde", [0, 1, 2]), ("flow", [0])])
def test_bottom_keeps_more_minority_than_random_than_top(learner, seeds):
    setting = LikelihoodSetting(seeds=seeds, flow_seeds=seeds, **TINY)
    for seed in seeds:
        run = minority_retention(learner, setting, seed)
        assert run["bottom"] > run["random"] > run["top"], (seed, run)
        assert run["top"] < 0.1 < 1.5 < run["bottom"]  # top-k empties the minority, bottom-k enriches it
        if learner == "kde":
            assert run == minority_retention(learner, setting, seed)  # seeded: the same numbers again


def test_rows_and_figure(tmp_path):
    setting = LikelihoodSetting(seeds=[0, 1], flow_seeds=[], learners=("kde",), **TINY)
    result = likelihood_selection(tmp_path, setting=setting)
    assert [row.passed for row in result.rows] == [True]
    assert "ordered in 2/2 seeds" in result.rows[0].numbers and "no published value found" in result.rows[0].what
    assert result.figures == [tmp_path / "likelihood_selection.png"] and result.figures[0].stat().st_size > 0
