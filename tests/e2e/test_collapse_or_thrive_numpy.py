"""An independent implementation, in plain numpy, of the "Collapse or Thrive?" discrete workflows
(Kazdan, Schaeffer et al., ICML 2025) against the package's exact-learner path.

The workflows: each round an exact categorical learner is refitted by counting on its training
set and ``n`` samples are drawn from it; round ``t >= 1`` trains on

* ``replace``: the previous round's samples only (a Wright-Fisher chain: it fixes on one atom);
* ``accumulate``: every round's samples so far (it stays diverse);
* ``accumulate_subsample``: every round's samples so far, subsampled without replacement to ``n``
  (it loses diversity, slowly).

Round 0 trains on the real data (``n`` samples in exact proportions of ``p_data``, as
:class:`~lightning_curate.data.Atoms` makes them); ``real_fraction = 0`` afterwards, and no
curation (``K = 1``), as in the paper's workflows. The package side is its own code, driven round by
round without the trainer: :class:`~lightning_curate.data.BlendingDataModule` composes each round's set
(the policy), :class:`~lightning_curate.models.ExactCategorical` fits it, and
:meth:`~lightning_curate.loop.CurationModule.curate_round` samples and curates, with the loop's round
seeds. The first test checks that this driver is the package's path: it reproduces a real
``lightning-curate fit`` run's stored rounds bit for bit.

The two codes share no random stream, so they are compared in distribution over seeds with a
two-sample KS test (scipy.stats.ks_2samp): rounds to fixation under ``replace``, and the model's
entropy after ``T`` rounds under the accumulating workflows. The seeds are fixed, so each p-value
is a fixed number (noted beside its bound); the same test rejects the two workflows against each other.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats

from lightning_curate.cli import main
from lightning_curate.data import Atoms, BlendingDataModule
from lightning_curate.loop import CurationModule
from lightning_curate.models import ExactCategorical
from lightning_curate.rewards import AtomReward
from lightning_curate.store import RoundStore
from lightning_curate.utils.seeding import derive_seed

REPO = Path(__file__).resolve().parents[2]
ATOMS = 4  # support size
N = 24  # samples a round (and real samples)
SEEDS = 60
FIX_CAP = 400  # replace: a run not fixed by then counts as this round (none at these sizes)
T_ACC = 40  # the accumulating workflows: the model's entropy after this many rounds


# ---------------------------------------------------------------------------------------------
# The independent implementation: plain numpy, from the workflows' definitions.
# ---------------------------------------------------------------------------------------------
def numpy_workflow(policy: str, rounds: int, rng: np.random.Generator, stop_at_fixation: bool = False,
                   n: int = N) -> list:
    """The model (probability vector) of every round ``0..rounds``, with ``n`` samples a round."""
    real = np.repeat(np.arange(ATOMS), n // ATOMS)  # exact proportions of the uniform p_data
    rounds_data: list[np.ndarray] = []  # the samples drawn at the end of each round
    models = []
    train = real
    for t in range(rounds + 1):
        if t >= 1:
            if policy == "replace":
                train = rounds_data[-1]
            elif policy == "accumulate":
                train = np.concatenate(rounds_data)
            else:  # accumulate_subsample
                pool = np.concatenate(rounds_data)
                train = pool[rng.permutation(pool.size)[:n]] if pool.size > n else pool
        p = np.bincount(train, minlength=ATOMS) / train.size  # the exact MLE: counting
        models.append(p)
        if stop_at_fixation and p.max() == 1.0:
            break
        rounds_data.append(rng.choice(ATOMS, size=n, p=p))
    return models


# ---------------------------------------------------------------------------------------------
# The package's path, round by round.
# ---------------------------------------------------------------------------------------------
class _MemoryStore:
    """The round store's ``read`` for the data module, in memory."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict] = {}

    def read(self, t: int):
        return type("Record", (), {"tensors": self.rounds[t]})()


def package_workflow(policy: str, rounds: int, seed: int, stop_at_fixation: bool = False) -> list:
    """The package's exact learner through its data module, model and curation code; models per round."""
    source = Atoms(probs=[1.0 / ATOMS] * ATOMS, num_train=N, num_heldout=N, seed=seed)
    dm = BlendingDataModule(source, real_fraction=0.0, policy=policy, batch_size=N, seed=seed)
    store = _MemoryStore()
    dm.attach(store, lambda epoch: epoch)
    module = CurationModule(ExactCategorical(num_atoms=ATOMS), AtomReward([0.0] * ATOMS), num_slots=N,
                            num_candidates=1, preview_size=0, backend="torch")
    models = []
    for t in range(rounds + 1):
        module.generator.fit(dm.dataset_for_round(t).tensors[0])
        p = module.generator.probs.numpy()
        models.append(p)
        if stop_at_fixation and p.max() == 1.0:
            break
        store.rounds[t] = module.curate_round(t, seed=derive_seed(seed, "round", t)).tensors
    return models


def _entropy(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def _fixation_round(models: list) -> int:
    return next((t for t, p in enumerate(models) if p.max() == 1.0), FIX_CAP)


# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_driver_is_the_package_path_a_real_run_stores_the_same_rounds(tmp_path, monkeypatch):
    """``lightning-curate fit`` on configs/discrete.yaml, resized to these workflows, stores the rounds
    that :func:`package_workflow` draws, bit for bit (replace and accumulate_subsample)."""
    monkeypatch.setattr(sys, "argv", ["lightning-curate"])  # as from the console script, not pytest's argv
    with open(REPO / "configs" / "discrete.yaml") as fh:
        base = yaml.safe_load(fh)
    for policy in ("replace", "accumulate_subsample"):
        cfg = yaml.safe_load(yaml.safe_dump(base))
        run = tmp_path / policy
        cfg["trainer"].update(default_root_dir=str(run), logger=False)
        cfg["trainer"]["callbacks"] = [{"class_path": "lightning_curate.loop.RetrainingLoop",
                                        "init_args": {"rounds": 4, "seed": 3, "plots": False}}]
        cfg["model"]["init_args"].update(
            generator={"class_path": "lightning_curate.models.ExactCategorical", "init_args": {"num_atoms": ATOMS}},
            reward={"class_path": "lightning_curate.rewards.AtomReward", "init_args": {"rewards": [0.0] * ATOMS}},
            num_slots=N, num_candidates=1, preview_size=0, backend="torch")
        cfg["data"]["init_args"].update(policy=policy, batch_size=N, seed=3)
        cfg["data"]["init_args"]["source"]["init_args"] = {"probs": [1.0 / ATOMS] * ATOMS, "num_train": N,
                                                           "num_heldout": N, "seed": 3}
        path = tmp_path / f"{policy}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        main(["fit", "-c", str(path)])
        store = RoundStore(run / "rounds")
        ours = _MemoryStore()
        source = Atoms(probs=[1.0 / ATOMS] * ATOMS, num_train=N, num_heldout=N, seed=3)
        dm = BlendingDataModule(source, real_fraction=0.0, policy=policy, batch_size=N, seed=3)
        dm.attach(ours, lambda epoch: epoch)
        module = CurationModule(ExactCategorical(num_atoms=ATOMS), AtomReward([0.0] * ATOMS), num_slots=N,
                                num_candidates=1, preview_size=0, backend="torch")
        for t in range(5):
            module.generator.fit(dm.dataset_for_round(t).tensors[0])
            ours.rounds[t] = module.curate_round(t, seed=derive_seed(3, "round", t)).tensors
            assert torch.equal(ours.rounds[t]["x"], store.read(t).tensors["x"]), (policy, t)


def collect_statistics() -> dict:
    """Per code and workflow, the statistic over ``SEEDS`` seeds (the codes' seeds are unrelated)."""
    out: dict = {}
    for code, run in (("numpy", lambda pol, s, **kw: numpy_workflow(pol, rng=np.random.default_rng(10_000 + s),
                                                                     **kw)),
                      ("package", lambda pol, s, **kw: package_workflow(pol, seed=s, **kw))):
        out[code, "replace"] = [_fixation_round(run("replace", s, rounds=FIX_CAP, stop_at_fixation=True))
                                for s in range(SEEDS)]
        for pol in ("accumulate", "accumulate_subsample"):
            out[code, pol] = [_entropy(run(pol, s, rounds=T_ACC)[-1]) for s in range(SEEDS)]
    return out


@pytest.fixture(scope="module")
def samples() -> dict:
    return collect_statistics()


@pytest.mark.slow
# The p-values at these seeds (SEEDS = 60): replace 0.51, accumulate 0.12, accumulate_subsample 0.18.
@pytest.mark.parametrize("policy", ["replace", "accumulate", "accumulate_subsample"])
def test_numpy_and_package_agree_in_distribution(samples, policy):
    ours, theirs = samples["numpy", policy], samples["package", policy]
    assert len(ours) == len(theirs) == SEEDS
    if policy == "replace":
        assert max(ours + theirs) < FIX_CAP  # every run fixed: nothing censored
    p = stats.ks_2samp(ours, theirs).pvalue
    assert p > 0.01, (policy, p, np.mean(ours), np.mean(theirs))


@pytest.mark.slow
def test_the_ks_test_has_power_and_the_claims_hold(samples):
    """The same test rejects a wrong sample size (``2 N`` a round: fixation takes twice as long) and
    accumulate against accumulate_subsample; the Collapse-or-Thrive claims hold (replace fixes,
    accumulate keeps more entropy than subsampling, and never comes near collapse)."""
    replace = samples["package", "replace"]
    doubled = [_fixation_round(numpy_workflow("replace", FIX_CAP, np.random.default_rng(20_000 + s),
                                              stop_at_fixation=True, n=2 * N)) for s in range(SEEDS)]
    assert max(doubled) < FIX_CAP
    assert stats.ks_2samp(replace, doubled).pvalue < 1e-6  # measured: 3e-9
    acc, sub = samples["package", "accumulate"], samples["package", "accumulate_subsample"]
    assert stats.ks_2samp(acc, sub).pvalue < 0.01  # measured: 2.5e-4
    assert np.mean(acc) > np.mean(sub)
    assert min(acc) > 0.5 * math.log(ATOMS)  # measured: 0.99 (log 4 = 1.39)
