"""End to end: the selection rules, the transform and a growing slot budget from a YAML config.

Each run is tiny (2D mog8, 200 slots, two curated rounds); what is checked is what the store,
the manifest and ``rounds.csv`` say of the rule, and an exact resume of a scheduled run.
"""

from __future__ import annotations

import json

import pytest
import torch
from run_configs import read_rows, store_digest, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.store.rounds import RoundStore

POOL = "lightning_curate.loop.PoolFraction"


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
    if rule == "random":  # no predicted move: no fidelity ratio, never a wrong number
        assert float(rows[0]["predicted_curated_reward_mean"]) == pytest.approx(float(rows[0]["reward_mean"]),
                                                                                 abs=0.2)
        assert rows[1]["fidelity_reliable"] in ("0.0", "")
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
