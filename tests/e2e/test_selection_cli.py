"""End to end: the selection rules, the transform and a growing slot budget from a YAML config.

Each run is tiny (2D mog8, 200 slots, two curated rounds); what is checked is what the store,
the manifest and ``rounds.csv`` say of the rule, and an exact resume of a scheduled run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from run_configs import read_rows, store_digest, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.models import ExactCategorical
from lightning_curate.models.generator import Generator
from lightning_curate.store.rounds import RoundStore

POOL = "lightning_curate.loop.PoolFraction"
REPO = Path(__file__).resolve().parents[2]


def _config(run, rounds=2, **model):
    cfg = tiny_config(run, rounds=rounds, num_slots=200, preview_size=100, **model)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    return cfg


@pytest.mark.parametrize("rule", ["top", "bottom", "random"])
def test_a_pool_fraction_rule_runs_from_yaml(tmp_path, rule):
    run = tmp_path / rule
    selection = {"class_path": POOL, "init_args": {"rule": rule, "fraction": 0.25}}
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", _config(run, selection=selection)))])
    rows = read_rows(run)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    store = RoundStore(run / "rounds")
    for t in (0, 1):
        record = store.read(t)
        assert record.tensors["x"].shape == (200, 2)  # 0.25 of 200 slots x K = 4
        assert record.manifest["settings"]["selection"] == {"class": "PoolFraction", "rule": rule,
                                                            "fraction": 0.25, "score": "reward"}
        curated, model = float(rows[t]["curated_reward_mean"]), float(rows[t]["reward_mean"])
        if rule == "top":
            assert curated > model
        elif rule == "bottom":
            assert curated < model
    if rule == "random":  # no predicted move (the probe's own mean): no fidelity ratio, never a wrong number
        probe = store.read(0).tensors["probe_rewards"].double()
        assert float(rows[0]["predicted_curated_reward_mean"]) == pytest.approx(float(probe.mean()), rel=1e-12)
        assert rows[1]["reward_fidelity"] in ("nan", "") and float(rows[1]["fidelity_reliable"]) == 0.0
    else:
        assert rows[0]["predicted_reward_mean"] != ""


def test_the_transform_and_a_geometric_budget_resume_exactly(tmp_path):
    extra = {"transform": {"class_path": "lightning_curate.loop.ManifoldProjection",
                           "init_args": {"dataset": "mog8", "strength": 0.5}},
             "num_slots_schedule": {"kind": "geometric", "factor": 1.5}}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    main(["fit", "-c", str(write_config(tmp_path / "w.yaml", _config(whole, **extra)))])
    rows = read_rows(whole)
    assert [int(float(r["num_slots"])) for r in rows[:2]] == [200, 300]
    assert RoundStore(whole / "rounds").read(1).tensors["x"].shape == (300, 2)
    assert "predicted_reward_mean" not in rows[0] or rows[0]["predicted_reward_mean"] == ""  # no prediction
    assert [json.loads((whole / "rounds" / f"round_{t:03d}" / "manifest.json").read_text())["num_slots"]
            for t in range(3)] == [200, 300, 450]
    manifest = json.loads((whole / "rounds" / "round_000" / "manifest.json").read_text())
    assert manifest["settings"]["num_slots_schedule"] == {"kind": "geometric", "factor": 1.5, "increment": None}
    assert manifest["settings"]["transform"]["class_path"] == "lightning_curate.loop.transforms.ManifoldProjection"
    # the same run stopped after round 1 and resumed: the same rounds, bit for bit
    first = _config(cut, rounds=1, **extra)
    main(["fit", "-c", str(write_config(tmp_path / "c1.yaml", first))])
    main(["fit", "-c", str(write_config(tmp_path / "c2.yaml", _config(cut, **extra))), "--ckpt_path", "last"])
    assert store_digest(cut) == store_digest(whole)
    stored = RoundStore(whole / "rounds").read(0).tensors["x"]
    assert torch.isfinite(stored).all()


class LikelyCategorical(ExactCategorical):
    """The exact learner with its own log-likelihood (test-local, until models carry ``log_prob``)."""

    def log_prob(self, x):
        return self.probs.to(x.device)[x.reshape(-1).long()].log()


def _discrete(tmp_path, selection, **model_args):
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "run")
    cfg["trainer"]["callbacks"][0]["init_args"].update(rounds=2, plots=False)
    model = cfg["model"]["init_args"]
    model.update(num_slots=4000, preview_size=1000, selection={"class_path": POOL, "init_args": selection},
                 **model_args)
    return cfg


def test_the_exact_learner_follows_the_truncation_law(tmp_path):
    """Top quarter by reward on 10 atoms: p_1 = p_data truncated to its top quarter ([0.4, 0.4, 0.2, 0...]),
    then p_2 = all mass on atom 0; the exact learner lands there up to the draw of one round."""
    cfg = _discrete(tmp_path, {"rule": "top", "fraction": 0.25})
    cfg["model"]["init_args"]["reward"]["init_args"]["rewards"] = [3, 2, 1, 0, 0, 0, 0, 0, 0, 0]
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    rows = read_rows(tmp_path / "run")
    assert [float(rows[1][f"ideal_share_class{i}"]) for i in range(3)] == pytest.approx([0.4, 0.4, 0.2])
    for i in range(3):  # 4000 kept of 16000: a share's sampling sd is below 0.01
        assert abs(float(rows[1][f"exact_share_class{i}"]) - float(rows[1][f"ideal_share_class{i}"])) < 0.04
    assert float(rows[2]["exact_share_class0"]) == float(rows[2]["ideal_share_class0"]) == 1.0
    assert float(rows[0]["predicted_curated_share_class0"]) == pytest.approx(0.4, abs=0.06)  # the probe's


class GaussianLearner(Generator):
    """An isotropic 2D Gaussian fitted in closed form, with its closed-form log-density (test-local)."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.data_shape = (2,)
        self.register_buffer("mean", torch.zeros(2))
        self.register_buffer("scale", torch.ones(()))

    def fit(self, x):
        self.mean.copy_(x.mean(0))
        self.scale.copy_((x - x.mean(0)).square().mean().sqrt())

    def sample(self, n, *, generator=None, device=None):
        noise = torch.randn(n, 2, generator=generator, device=generator.device if generator is not None else None)
        return (self.mean + self.scale * noise.to(self.mean.device)).to(device or self.mean.device)

    def log_prob(self, x):
        z = (x - self.mean) / self.scale
        return -0.5 * z.square().sum(dim=1) - 2 * self.scale.log() - math.log(2 * math.pi)


def test_likelihood_selection_runs_from_yaml_and_predicts_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = _config(run, generator={"class_path": "test_selection_cli.GaussianLearner"},
                  selection={"class_path": POOL, "init_args": {"rule": "top", "fraction": 0.5,
                                                               "score": "likelihood"}})
    cfg["trainer"]["callbacks"][0]["init_args"].update(epochs_per_round=1, initial_epochs=1)
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    rows = read_rows(run)
    scales = [float(RoundStore(run / "rounds").read(t).tensors["x"].std()) for t in (0, 1)]
    assert scales[1] < scales[0]  # keeping the likeliest half shrinks the Gaussian round after round
    assert all(r.get("predicted_reward_mean", "") == "" for r in rows)
    assert all(r.get("reward_fidelity", "") == "" for r in rows)


def test_the_exact_learner_follows_the_likelihood_truncation(tmp_path):
    """Top half by the model's own likelihood from p_data = [0.4, 0.3, 0.2, 0.1, 0...]: p_1 = [0.8, 0.2, 0...]
    (the likeliest atom whole, the next one's share that fills the half), then p_2 = all mass on atom 0."""
    cfg = _discrete(tmp_path, {"rule": "top", "fraction": 0.5, "score": "likelihood"},
                    generator={"class_path": "test_selection_cli.LikelyCategorical", "init_args": {"num_atoms": 10}})
    cfg["data"]["init_args"]["source"]["init_args"]["probs"] = [0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0]
    main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    rows = read_rows(tmp_path / "run")
    assert [float(rows[1][f"ideal_share_class{i}"]) for i in range(3)] == pytest.approx([0.8, 0.2, 0.0])
    for i in range(3):  # 8000 kept of 16000
        assert abs(float(rows[1][f"exact_share_class{i}"]) - float(rows[1][f"ideal_share_class{i}"])) < 0.03
    assert float(rows[2]["exact_share_class0"]) == float(rows[2]["ideal_share_class0"]) == 1.0
    assert rows[0].get("predicted_reward_mean", "") == ""  # no probe prediction by likelihood
