"""The exact learner: its pieces, and whole CLI runs against docs/THEORY.md's second worked example.

The runs use configs/discrete.yaml itself (fewer rounds, no plots). Their
tolerances come from the number of slots: with ``N`` slots the curated share of
class 0 is a binomial proportion of ``N`` draws from ``q_t`` and the model's
share a binomial proportion of ``N K`` candidates from ``p_t``; the checks
allow 5 standard errors, propagated through the iteration where they compound.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from run_configs import read_rows, store_digest, write_config

from lightning_curate import theory
from lightning_curate.cli import main
from lightning_curate.data.atoms import Atoms, proportional_counts
from lightning_curate.models.exact import ExactCategorical
from lightning_curate.models.generator import is_closed_form
from lightning_curate.rewards.atoms import AtomReward
from lightning_curate.store.rounds import RoundStore
from lightning_curate.theory.ideal_learner import check_improvement, predict_round
from lightning_curate.theory.laws import two_level_band
from lightning_curate.utils.seeding import generator as make_generator

REPO = Path(__file__).resolve().parents[2]
GAMMA, K, DATA_SHARE = 5.0, 4, 0.1


# --------------------------------------------------------------------------- #
# the pieces
# --------------------------------------------------------------------------- #


def test_exact_categorical_fits_the_counts_of_what_it_was_trained_on():
    model = ExactCategorical(num_atoms=3)
    assert torch.allclose(model.probs, torch.full((3,), 1 / 3, dtype=torch.float64))
    # A closed-form learner: no trainable parameters, fitted by fit(x) (no dummy parameter).
    assert list(model.parameters()) == [] and is_closed_form(model)
    model.fit(torch.tensor([[0.0], [2.0], [2.0], [2.0], [1.0], [2.0]]))
    assert model.counts.tolist() == [1, 1, 4] and int(model.fits) == 1
    assert torch.allclose(model.probs, torch.tensor([1 / 6, 1 / 6, 4 / 6], dtype=torch.float64))
    draws = model.sample(10, generator=make_generator(0))
    assert draws.shape == (10, 1) and draws.dtype == torch.float32
    # The loss is a score (the batch's NLL), in any mode, and trains nothing.
    model.train()
    loss = model.loss(torch.tensor([[0.0], [2.0]]))
    assert loss.dim() == 0 and loss.item() == pytest.approx(-(math.log(1 / 6) + math.log(4 / 6)) / 2)
    assert model.counts.tolist() == [1, 1, 4]
    # A refit replaces the model (the MLE of the new set, not a running count).
    model.fit(torch.tensor([[1.0]] * 3))
    assert model.counts.tolist() == [0, 3, 0] and int(model.fits) == 2
    assert model.sample(0).shape == (0, 1)
    with pytest.raises(ValueError, match="empty"):
        model.fit(torch.zeros(0, 1))


def test_exact_categorical_samples_by_seed_and_its_state_round_trips():
    model = ExactCategorical(num_atoms=4)
    model.fit(torch.tensor([[0.0]] * 7 + [[3.0]] * 3))
    a = model.sample(5000, generator=make_generator(11))
    b = model.sample(5000, generator=make_generator(11))
    assert torch.equal(a, b)
    assert set(a.flatten().tolist()) <= {0.0, 3.0}
    assert abs(float((a == 0).float().mean()) - 0.7) < 5 * math.sqrt(0.21 / 5000)
    state = model.state_dict()
    assert set(state) == {"counts", "fits"}
    clone = ExactCategorical(num_atoms=4)
    clone.load_state_dict(state)
    assert torch.equal(clone.sample(100, generator=make_generator(3)), model.sample(100, generator=make_generator(3)))
    assert clone.counts.tolist() == [7, 0, 0, 3]


def test_exact_categorical_rejects_bad_batches():
    model = ExactCategorical(num_atoms=3)
    with pytest.raises(ValueError, match="0..2"):
        model.fit(torch.tensor([[3.0]]))
    with pytest.raises(ValueError, match="whole numbers"):
        model.loss(torch.tensor([[0.5]]))
    with pytest.raises(ValueError, match=r"\[n, 1\]"):
        model.loss(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="num_atoms"):
        ExactCategorical(num_atoms=0)


def test_proportional_counts_are_exact_where_possible():
    assert proportional_counts([0.1] * 10, 20000).tolist() == [2000] * 10
    assert proportional_counts([0.5, 0.3, 0.2], 7).tolist() == [4, 2, 1]
    assert int(proportional_counts([1 / 3] * 3, 100).sum()) == 100


def test_atoms_source_and_reward():
    source = Atoms([0.5, 0.25, 0.25], num_train=8, num_heldout=4, seed=0, names=["a", "b", "c"])
    data = source.load()
    assert data.train.shape == (8, 1) and data.heldout.shape == (4, 1)
    assert torch.bincount(data.train_labels, minlength=3).tolist() == [4, 2, 2]
    assert torch.equal(source.label(data.train), data.train_labels)
    assert source.class_names == ["a", "b", "c"]
    assert Atoms([0.5, 0.5]).class_names == ["atom0", "atom1"]
    metrics = source.sample_metrics(torch.tensor([[0.0], [0.0]]), data.heldout)
    assert metrics["kl_to_data"] == pytest.approx(math.log(2)) and metrics["tv_to_data"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="sum to 1"):
        Atoms([0.5, 0.4])
    with pytest.raises(ValueError, match="one name per atom"):
        Atoms([0.5, 0.5], names=["x"])
    reward = AtomReward([1.0, 0.0, -2.0], gamma=5.0)
    assert reward(torch.tensor([[0.0], [2.0], [1.0]])).tolist() == [5.0, -10.0, 0.0]
    assert reward.values.tolist() == [5.0, 0.0, -10.0]
    with pytest.raises(ValueError, match="rewards must not be empty"):
        AtomReward([])
    with pytest.raises(ValueError, match=r"rewards must be finite, got \[1\.0, nan\]"):
        AtomReward([1.0, math.nan])
    with pytest.raises(ValueError, match="rewards must be a list of numbers"):
        AtomReward(["high", "low"])


def test_round_metrics_of_the_exact_learner():
    model = ExactCategorical(num_atoms=2)
    model.fit(torch.tensor([[0.0]] * 3 + [[1.0]]))
    reward, source = AtomReward([1.0, 0.0]), Atoms([0.5, 0.5], names=["top", "rest"])
    row = model.round_metrics(reward, source, beta=1.0, num_candidates=2, real_fraction=0.0, round_idx=1)
    assert row["exact_share_top"] == pytest.approx(0.75)
    ideal = theory.curated_distribution([0.5, 0.5], [1.0, 0.0], 2)
    assert row["ideal_share_top"] == pytest.approx(float(ideal[0]))
    optimum = theory.rlhf_optimum([0.5, 0.5], [1.0, 0.0], 1.0, 1)
    assert row["kl_to_rlhf_optimum"] == pytest.approx(theory.kl_divergence([0.75, 0.25], optimum))
    assert model.round_metrics(torch.nn.Identity(), source, beta=1.0, num_candidates=2, real_fraction=0.0,
                               round_idx=1) == {}
    # Any other generator adds no exact columns: the loop calls the hook on every model.
    from lightning_curate.models.generator import Generator
    assert Generator().round_metrics(reward, source, beta=1.0, num_candidates=2, real_fraction=0.0,
                                     round_idx=1) == {}


# --------------------------------------------------------------------------- #
# whole runs through the CLI against the ideal iteration
# --------------------------------------------------------------------------- #


def discrete_config(run_dir: Path, *, rounds: int, real_fraction: float, num_slots: int = 20000) -> dict:
    """configs/discrete.yaml with fewer rounds, no plots, its run directory in tmp."""
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(run_dir)
    loop = cfg["trainer"]["callbacks"][0]
    assert loop["class_path"].endswith("RetrainingLoop")
    loop["init_args"].update(rounds=rounds, plots=False)
    cfg["model"]["init_args"]["num_slots"] = num_slots
    cfg["data"]["init_args"]["real_fraction"] = real_fraction
    return cfg


def run_discrete(tmp_path: Path, name: str, **kw) -> list[dict]:
    run = tmp_path / name
    main(["fit", "-c", str(write_config(tmp_path / f"{name}.yaml", discrete_config(run, **kw)))])
    return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in read_rows(run)]


def check_against_theory(rows: list[dict], rho: float, n_slots: int) -> None:
    n_cand = n_slots * K
    ideal, se_traj = two_level_band(DATA_SHARE, GAMMA, 0.0, K, 1.0, rho, len(rows) - 1, n_slots)
    # Round 0 trains on the real data, exactly 10% of each class: p_0 = p_data.
    p = DATA_SHARE
    for t, row in enumerate(rows):
        assert row["round"] == t
        if t > 0:
            assert row["real_fraction"] == pytest.approx(rho)
            assert row["n_synthetic"] == n_slots and row["n_real"] == round(rho / (1 - rho) * n_slots)
        # Round by round, given the model p_t: the model's share is a binomial proportion
        # of N K candidates from p_t ...
        se_share = math.sqrt(max(p * (1 - p), 1e-12) / n_cand)
        assert abs(row["share_class0"] - p) <= 5 * se_share + 1e-12, (t, row["share_class0"], p)
        # ... and the curated share one of N draws from q_t = curated(p_t).
        q = theory.curated_share_map(p, GAMMA, 0.0, K)
        se_curated = math.sqrt(max(q * (1 - q), 1e-12) / n_slots)
        assert abs(row["curated_share_class0"] - q) <= 5 * se_curated + 1e-12, (t, row["curated_share_class0"], q)
        # Against docs/THEORY.md's trajectory, with every round's noise propagated.
        assert abs(row["share_class0"] - ideal[t]) <= 5 * se_traj[t] + 1e-9, (t, row["share_class0"], ideal[t])
        # The exact learner's next model is the round's training set, exactly.
        p = rho * DATA_SHARE + (1 - rho) * row["curated_share_class0"]


def check_predictions(run_dir: Path, rows: list[dict], rho: float, n_slots: int) -> None:
    """The predictor, fed each stored round's probe (its first slots' K candidates), predicts the
    next round's share of class 0 within the sampling noise of the probe, the winners and the
    next round's candidates."""
    store = RoundStore(run_dir / "rounds")
    names = [f"class{i}" for i in range(10)]
    real_labels = torch.arange(10).repeat_interleave(2000)
    real_rewards = GAMMA * (real_labels == 0).double()
    probes = [store.read(t).tensors for t in range(len(rows))]
    for t in range(len(rows) - 1):
        probe = probes[t]
        pred = predict_round(probe["probe_rewards"], 1.0, labels=probe["probe_labels"], class_names=names,
                             real_fraction=rho, real_rewards=real_rewards, real_labels=real_labels, round_idx=t)
        p = rows[t]["share_class0"]
        m = probe["probe_rewards"].numel()
        h = 1e-4
        lo, hi = max(p - h, 0.0), min(p + h, 1.0)
        slope = (theory.curated_share_map(hi, GAMMA, 0.0, K) - theory.curated_share_map(lo, GAMMA, 0.0, K)) / (hi - lo)
        q = theory.curated_share_map(p, GAMMA, 0.0, K)
        nxt = rows[t + 1]["share_class0"]
        se = math.sqrt(((1 - rho) * slope) ** 2 * p * (1 - p) / m + (1 - rho) ** 2 * q * (1 - q) / n_slots
                       + nxt * (1 - nxt) / (n_slots * K))
        assert abs(pred["predicted_share_class0"] - nxt) <= 5 * se + 1e-9, (t, pred["predicted_share_class0"], nxt)
        # The exact learner is an ideal learner: round t + 1 meets the bound that round t predicts.
        w_next = torch.exp(probes[t + 1]["probe_rewards"].double()).flatten()
        verdict = check_improvement(pred, {"exp_reward_mean": float(w_next.mean()),
                                           "exp_reward_stderr": float(w_next.std() / math.sqrt(w_next.numel()))})
        assert verdict["improvement_violation"] == 0.0, (t, verdict)


def check_fidelity(rows: list[dict]) -> None:
    """The exact learner is the ideal learner: its fidelity is 1 within sampling noise, wherever the
    predicted move is above noise (rounds 1-3 here); collapsed rounds report no ratio."""
    # Round 0 fits p_data exactly (proportional counts): no share error, a distance at the noise floor.
    assert rows[0]["p0_share_error_max"] < 0.01 and 0.3 < rows[0]["p0_distance_ratio"] < 3.0
    meaningful = [t for t in range(1, len(rows)) if math.isfinite(rows[t]["reward_fidelity"])]
    assert meaningful[:3] == [1, 2, 3], meaningful
    for t in meaningful:
        fid, se = rows[t]["reward_fidelity"], rows[t]["reward_fidelity_stderr"]
        assert abs(fid - 1.0) <= 5 * se, (t, fid, se)
        assert abs(rows[t]["gain_share_fidelity"] - 1.0) <= 5 * se + 0.01, (t, rows[t]["gain_share_fidelity"])
    assert all(rows[t]["fidelity_reliable"] == float(t in meaningful) for t in range(1, len(rows)))


@pytest.mark.slow
def test_curated_only_rounds_follow_the_ideal_iteration_to_collapse(tmp_path):
    rows = run_discrete(tmp_path, "rho0", rounds=4, real_fraction=0.0)
    assert len(rows) == 5
    check_against_theory(rows, 0.0, 20000)
    check_predictions(tmp_path / "rho0", rows, 0.0, 20000)
    # docs/THEORY.md: 0.338, 0.798, 0.996, 1.0 (collapse).
    for t, expected in ((1, 0.338), (2, 0.798), (3, 0.996)):
        assert abs(rows[t]["share_class0"] - expected) < 0.02, (t, rows[t]["share_class0"])
    assert rows[4]["share_class0"] > 0.999 and rows[4]["reward_mean"] > 4.99
    check_fidelity(rows)
    # The model after the last round is the MLE of its training set, the stored winners of round 3.
    state = torch.load(tmp_path / "rho0" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    counts = state["state_dict"]["generator.counts"]
    assert int(counts.sum()) == 20000 and int(state["state_dict"]["generator.fits"]) == 5


@pytest.mark.slow
def test_real_data_rounds_follow_the_ideal_iteration_to_its_fixed_point(tmp_path):
    rows = run_discrete(tmp_path, "rho05", rounds=6, real_fraction=0.5)
    check_against_theory(rows, 0.5, 20000)
    check_predictions(tmp_path / "rho05", rows, 0.5, 20000)
    # docs/THEORY.md: 0.219, 0.359, 0.461, 0.503, 0.516, 0.519 -> about 0.52.
    for t, expected in enumerate((0.219, 0.359, 0.461, 0.503, 0.516, 0.519), start=1):
        assert abs(rows[t]["share_class0"] - expected) < 0.02, (t, rows[t]["share_class0"])
    # Every other class keeps at least rho * 0.1 = 0.05 (up to sampling noise).
    for row in rows:
        assert min(row[f"share_class{i}"] for i in range(1, 10)) > 0.05 - 5 * math.sqrt(0.05 * 0.95 / 80000)


def test_a_resumed_discrete_run_matches_the_uninterrupted_one(tmp_path):
    ref = tmp_path / "ref"
    main(["fit", "-c", str(write_config(tmp_path / "ref.yaml",
                                        discrete_config(ref, rounds=3, real_fraction=0.5, num_slots=1500)))])
    part = tmp_path / "part"
    main(["fit", "-c", str(write_config(tmp_path / "part1.yaml",
                                        discrete_config(part, rounds=1, real_fraction=0.5, num_slots=1500)))])
    main(["fit", "-c", str(write_config(tmp_path / "part2.yaml",
                                        discrete_config(part, rounds=3, real_fraction=0.5, num_slots=1500))),
          "--ckpt_path", "last"])
    assert store_digest(part) == store_digest(ref)
    assert read_rows(part) == read_rows(ref)
