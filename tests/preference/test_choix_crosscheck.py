"""An independent check of ``lightning-curate-reward``: choix's top-1 solver (``ilsr_top1``, the
maximum-likelihood Plackett-Luce fit by iterative Luce spectral ranking) on the same logged choices.

The logs are the exact learner's ten atoms shown as one-hot vectors, so the command's MLP can
give each atom any score: both codes then maximise the same likelihood, and they must agree
far inside the MLE's own standard error. ILSR's Markov chain takes a candidate that repeats the
winner's atom as a self-loop, which drops out, so ``(winner, the other K - 1 atoms)`` is the
exact top-1 likelihood of a slot with repeats. Tolerances are in units of the MLE's standard
error from :func:`~lightning_curate.preference.best_bt_scores`' covariance (as in
test_evaluate.py); the seeds are fixed and the measured values are noted beside each bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_curate.ops import kchoice
from lightning_curate.preference import best_bt_scores
from lightning_curate.preference.cli import load_reward_model, run
from lightning_curate.store import RoundStore
from lightning_curate.theory.population import AtomCurator

choix = pytest.importorskip("choix", reason="choix is a test dependency (pip install -e .[test])")

TEN = [0.1] * 10
K = 4


def _logs(crowd: list[AtomCurator], n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` slots of ``K`` uniform atoms; each slot's curator drawn by weight, its pick by ``kchoice``."""
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randint(0, 10, (n, K), generator=gen)
    weights = torch.tensor([c.weight for c in crowd], dtype=torch.float64)
    who = torch.multinomial(weights, n, replacement=True, generator=gen)
    chosen = torch.empty(n, dtype=torch.long)
    for u, c in enumerate(crowd):
        mask = who == u
        chosen[mask] = kchoice(c.r.float()[atoms[mask]], c.beta, seed=seed + u).index
    return atoms, chosen


def _choix_scores(atoms: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    data = []
    for row, k in zip(atoms.tolist(), chosen.tolist()):
        data.append((row[k], row[:k] + row[k + 1:]))
    params = choix.ilsr_top1(10, data, max_iter=1000, tol=1e-12)
    return torch.as_tensor(params - np.mean(params), dtype=torch.float64)


def _standard_errors(best: dict, n: int) -> torch.Tensor:
    """Per-atom standard errors of the mean-zero MLE from ``n`` slots: the sandwich covariance taken in the
    mean-zero gauge (projecting out the all-ones direction, where only round-off lives)."""
    gauge = torch.eye(10, dtype=torch.float64) - 1.0 / 10
    return ((gauge @ best["covariance"] @ gauge).diag() / n).sqrt()


def _command_scores(tmp_path, atoms: torch.Tensor, chosen: torch.Tensor, beta: float, curators: int) -> torch.Tensor:
    """Write the logs as a round of a store, run ``lightning-curate-reward`` on all slots, score each atom."""
    n = atoms.shape[0]
    onehot = torch.nn.functional.one_hot(atoms, 10).float()
    manifest = {"beta": beta, "num_candidates": K, "curators": [{}] * curators if curators > 1 else []}
    RoundStore(tmp_path / "rounds").write(0, {"choice_candidates": onehot, "choice_index": chosen[:, None],
                                              "choice_slot": torch.arange(n)}, manifest)
    out = tmp_path / "reward.pt"
    run(["--round-dir", str(tmp_path / "rounds" / "round_000"), "--out", str(out), "--no-config-reward",
         "--val-fraction", "0", "--hidden", "16", "--depth", "1", "--batch-size", str(n), "--lr", "0.1",
         "--max-epochs", "250"])
    with torch.no_grad():
        s = load_reward_model(out)(torch.eye(10)).double()
    return s - s.mean()


def test_one_curator_both_recover_beta_times_reward(tmp_path):
    r = torch.tensor([3.0, 2.0, 1.5, 1.0, 0.5, 0.0, 0.0, -0.5, -1.0, -2.0], dtype=torch.float64)
    beta = 1.5
    curator = AtomCurator(r, beta=beta, num_candidates=K)
    n = 4000
    atoms, chosen = _logs([curator], n, seed=0)
    s_choix = _choix_scores(atoms, chosen)
    s_cmd = _command_scores(tmp_path, atoms, chosen, beta, curators=1)
    truth = beta * (r - r.mean())
    best = best_bt_scores(TEN, [curator], K)
    assert torch.allclose(best["scores"], truth, atol=1e-8)  # well specified: the projection is beta * r
    se = _standard_errors(best, n)
    assert float(((s_choix - truth) / se).abs().max()) < 4  # measured: 1.30 (the command: 1.30)
    assert float(((s_cmd - truth) / se).abs().max()) < 4
    # The same likelihood, maximised by two codes: they differ by far less than the statistical error.
    assert float(((s_cmd - s_choix) / se).abs().max()) < 0.05  # measured: 5e-5


def test_population_both_agree_with_the_best_bt_scores(tmp_path):
    # test_evaluate.py's population: honest curators (75%) reward 5 * 1{class 0}, adversaries (25%) 5 * 1{class 1}.
    crowd = [AtomCurator([5.0] + [0.0] * 9, weight=0.75, num_candidates=K),
             AtomCurator([0.0, 5.0] + [0.0] * 8, weight=0.25, num_candidates=K)]
    n = 10000
    atoms, chosen = _logs(crowd, n, seed=1)
    s_choix = _choix_scores(atoms, chosen)
    s_cmd = _command_scores(tmp_path, atoms, chosen, 1.0, curators=2)
    best = best_bt_scores(TEN, crowd, K)
    s_best = best["scores"]
    se = _standard_errors(best, n)  # sandwich: valid for the (misspecified) population MLE
    assert float(((s_choix - s_best) / se).abs().max()) < 4  # measured: 1.74 (the command: 1.74)
    assert float(((s_cmd - s_best) / se).abs().max()) < 4
    assert float(((s_cmd - s_choix) / se).abs().max()) < 0.05  # measured: 4e-5
    # Neither lands on the population's average reward (measured: 30 standard errors away).
    avg = torch.tensor([3.75, 1.25] + [0.0] * 8, dtype=torch.float64)
    assert float(((avg - avg.mean() - s_choix) / se).abs().max()) > 20
