"""Evaluation of a recovered reward, and what one Bradley-Terry model recovers from a population
of curators on a finite support (the exact learner's ten classes)."""

import math

import pytest
import torch
from scipy import stats

from lightning_curate.ops import kchoice
from lightning_curate.preference import (
    AtomScores,
    best_bt_scores,
    fit_bradley_terry,
    population_choice_law,
    rankdata,
    recovered_scale,
    spearman,
)
from lightning_curate.theory.population import AtomCurator

TEN = [0.1] * 10


def test_ranks_and_spearman_match_scipy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 6, (200,), generator=gen).double()  # many ties
    y = x + torch.randn(200, generator=gen, dtype=torch.float64)
    assert torch.equal(rankdata(x), torch.as_tensor(stats.rankdata(x.numpy()), dtype=torch.float64))
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))
    with pytest.raises(ValueError, match="same length"):
        spearman(torch.arange(3.0), torch.arange(4.0))


def test_recovered_scale_is_the_least_squares_line():
    true = torch.tensor([0.0, 1.0, 2.0, 5.0])
    assert recovered_scale(2.5 * true - 7.0, true) == pytest.approx((2.5, -7.0), abs=1e-12)
    with pytest.raises(ValueError, match="constant"):
        recovered_scale(true, torch.ones(4))


def test_choice_law_rows_are_distributions_and_mix_linearly():
    crowd = [AtomCurator([5.0] + [0.0] * 9, weight=3.0), AtomCurator([0.0, 5.0] + [0.0] * 8, weight=1.0)]
    tuples, prob, choice = population_choice_law(TEN, crowd, 2)
    assert tuples.shape == (100, 2) and float(prob.sum()) == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(choice.sum(1), torch.ones(100, dtype=torch.float64), atol=1e-14)
    row = (tuples == torch.tensor([0, 1])).all(1).nonzero().item()  # class 0 against class 1
    s = 1 / (1 + math.exp(-5))
    assert float(choice[row, 0]) == pytest.approx(0.75 * s + 0.25 * (1 - s), abs=1e-14)


def test_one_curator_best_bt_is_beta_times_reward():
    # Well specified: the KL projection is the curator's own beta * r (mean-zero gauge).
    r = torch.tensor([2.0, 0.0, -1.0, 0.5], dtype=torch.float64)
    out = best_bt_scores([0.4, 0.3, 0.2, 0.1], [AtomCurator(r, beta=1.5, num_candidates=3)], 3)
    assert torch.allclose(out["scores"], 1.5 * (r - r.mean()), atol=1e-8)


def test_population_fit_recovers_the_best_bt_approximation_not_the_average():
    # configs/discrete.yaml's ten classes, K = 4: honest curators (75%) reward 5 * 1{class 0},
    # adversaries (25%) reward 5 * 1{class 1}.
    crowd = [AtomCurator([5.0] + [0.0] * 9, weight=0.75, num_candidates=4),
             AtomCurator([0.0, 5.0] + [0.0] * 8, weight=0.25, num_candidates=4)]
    best = best_bt_scores(TEN, crowd, 4)
    s_best = best["scores"]
    assert float(s_best[0] - s_best[2]) == pytest.approx(2.4398, abs=1e-4)
    assert float(s_best[1] - s_best[2]) == pytest.approx(0.9193, abs=1e-4)
    # The logs: N slots, a curator drawn per slot, kchoice with its reward.
    N = 20000
    gen = torch.Generator().manual_seed(0)
    atoms = torch.randint(0, 10, (N, 4), generator=gen)
    who = torch.multinomial(torch.tensor([0.75, 0.25]), N, replacement=True, generator=gen)
    chosen = torch.empty(N, dtype=torch.long)
    for u, c in enumerate(crowd):
        mask = who == u
        chosen[mask] = kchoice(c.r.float()[atoms[mask]], c.beta, seed=u).index
    fit = fit_bradley_terry(atoms[:, :, None].float(), chosen, AtomScores(10), val_fraction=0.0,
                            max_epochs=300, batch_size=N, lr=0.1)
    s_fit = fit.model.scores.detach().double()
    s_fit = s_fit - s_fit.mean()
    se = (best["covariance"].diag() / N).sqrt()  # sandwich standard error of the MLE
    assert float(((s_fit - s_best) / se).abs().max()) < 4  # measured: 1.65
    # The population-weighted average of beta_u r_u is far outside the noise (42 SE on class 0).
    avg = torch.tensor([3.75, 1.25] + [0.0] * 8, dtype=torch.float64)
    assert float(((avg - avg.mean() - s_best) / se).abs().max()) > 20
