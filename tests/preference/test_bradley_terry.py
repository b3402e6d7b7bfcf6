"""Bradley-Terry fitting: the loss against exact choice laws, determinism, errors, and the
issue's target on mog8 (one round of 2,000 slots at K = 4 -> rank correlation >= 0.9)."""

import math

import pytest
import torch

from lightning_curate.data.toy2d import make_2d
from lightning_curate.ops import kchoice
from lightning_curate.preference import (
    AtomScores,
    RewardMLP,
    bradley_terry_loss,
    fit_bradley_terry,
    recovered_scale,
    spearman,
)
from lightning_curate.rewards import ClippedDistanceReward
from lightning_curate.theory.laws import plackett_luce_law


def test_loss_is_minus_log_softmax_of_the_choice():
    scores = torch.tensor([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], dtype=torch.float64)
    chosen = torch.tensor([2, 1])
    expected = -(torch.log_softmax(scores, 1)[0, 2] + torch.log_softmax(scores, 1)[1, 1]) / 2
    assert float(bradley_terry_loss(scores, chosen)) == pytest.approx(float(expected), abs=1e-14)


def test_plackett_luce_loss_matches_the_exact_law():
    scores = [0.3, -1.0, 2.0, 0.7]
    law = plackett_luce_law(scores, 2)
    s = torch.tensor([scores], dtype=torch.float64)
    for order, prob in law.items():
        nll = float(bradley_terry_loss(s, torch.tensor([order])))
        assert nll == pytest.approx(-math.log(prob), abs=1e-12)
    # One pick per slot given as [n, 1] is the plain Bradley-Terry loss.
    assert float(bradley_terry_loss(s, torch.tensor([[2]]))) == float(bradley_terry_loss(s, torch.tensor([2])))


def test_atom_scores_recover_pairwise_log_odds():
    # Atom 1 beats atom 0 in 3 of 4 slots: the MLE score gap is log 3 exactly.
    cands = torch.tensor([[[0.0], [1.0]]] * 40)
    chosen = torch.tensor([1, 1, 1, 0] * 10)
    fit = fit_bradley_terry(cands, chosen, AtomScores(2), val_fraction=0.0, max_epochs=400, batch_size=40, lr=0.05)
    gap = float((fit.model.scores[1] - fit.model.scores[0]).detach())
    assert gap == pytest.approx(math.log(3), abs=1e-3)


def _mog8_logs(num_slots=2000, K=4, beta=1.0, seed=0):
    x, _ = make_2d("mog8", num_slots * K, seed=seed)
    reward = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5, gamma=1.0)
    r = reward(x).reshape(num_slots, K)
    chosen = kchoice(r, beta, seed=seed).index
    return x.reshape(num_slots, K, 2), chosen, reward


def test_mog8_one_round_reaches_rank_correlation_0_9():
    cands, chosen, reward = _mog8_logs()
    fit = fit_bradley_terry(cands, chosen, seed=0)
    assert fit.val_index.numel() == 400 and fit.best_epoch < len(fit.history)
    held, _ = make_2d("mog8", 4000, seed=1)  # fresh samples, never shown to the fit
    with torch.no_grad():
        fitted = fit.model(held)
    rho = spearman(fitted, reward(held))
    slope, _ = recovered_scale(fitted, reward(held))
    assert rho >= 0.9  # measured: 0.981
    assert slope == pytest.approx(1.0, abs=0.1)  # beta = 1; measured 0.991
    # Uniform choice carries no information: the same fit finds no ranking.
    flat = fit_bradley_terry(cands, kchoice(torch.zeros(2000, 4), 1.0, mode="uniform", seed=0).index, seed=0)
    with torch.no_grad():
        assert abs(spearman(flat.model(held), reward(held))) < 0.5


def test_fit_is_deterministic_and_leaves_global_rng_alone():
    cands, chosen, _ = _mog8_logs(num_slots=300)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = fit_bradley_terry(cands, chosen, seed=5, max_epochs=15)
    after = torch.rand(1)
    b = fit_bradley_terry(cands, chosen, seed=5, max_epochs=15)
    assert torch.equal(before, after)
    assert a.history == b.history and torch.equal(a.val_index, b.val_index)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    c = fit_bradley_terry(cands, chosen, seed=6, max_epochs=15)
    assert not torch.equal(a.val_index, c.val_index)


def test_early_stopping_keeps_the_best_epoch():
    cands, chosen, _ = _mog8_logs(num_slots=200)
    fit = fit_bradley_terry(cands, chosen, RewardMLP(2, hidden=128, depth=3), seed=0, max_epochs=300, patience=5,
                            lr=1e-2, batch_size=32)
    vals = [v for _, v in fit.history]
    assert len(vals) == fit.best_epoch + 6  # stopped 5 epochs after the best
    assert fit.val_nll == pytest.approx(min(vals), abs=1e-6)


def test_errors_name_the_argument():
    cands = torch.zeros(4, 3, 2)
    with pytest.raises(ValueError, match="chosen indices must be in 0..2"):
        fit_bradley_terry(cands, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="chosen must be a tensor of shape"):
        fit_bradley_terry(cands, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer"):
        fit_bradley_terry(cands, torch.zeros(4))
    with pytest.raises(ValueError, match="same candidate twice"):
        fit_bradley_terry(cands, torch.tensor([[0, 0], [0, 1], [1, 2], [2, 0]]))
    with pytest.raises(ValueError, match="val_fraction"):
        fit_bradley_terry(cands, torch.tensor([0, 1, 2, 0]), val_fraction=0.95)
    with pytest.raises(ValueError, match="pass a model for images"):
        fit_bradley_terry(torch.zeros(4, 3, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="scores"):
        fit_bradley_terry(cands, torch.tensor([0, 1, 2, 0]), torch.nn.Linear(2, 2), val_fraction=0.5)
