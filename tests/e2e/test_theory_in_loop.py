"""Theory in the loop: every run logs what an ideal learner would do next; the exact
discrete learner (configs/discrete.yaml) must do exactly that, up to sampling noise."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from run_configs import read_rows

from lightning_curate.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_exact_learner_follows_the_predicted_next_round(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "run")
    cfg["trainer"]["callbacks"][0]["init_args"]["rounds"] = 3
    cfg["trainer"]["enable_progress_bar"] = False
    num_slots = cfg["model"]["init_args"]["num_slots"]
    cfg["model"]["init_args"]["preview_size"] = num_slots  # predict from every slot
    path = tmp_path / "discrete.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["fit", "-c", str(path)])
    rows = [{k: float(v) for k, v in r.items() if v != ""} for r in read_rows(tmp_path / "run")]
    assert len(rows) == 4
    for now, nxt in zip(rows, rows[1:]):
        p = now["predicted_share_class0"]
        # The next model is fitted to num_slots curated samples drawn from the predicted law.
        sigma = math.sqrt(max(p * (1 - p), 1e-4) / num_slots)
        assert abs(nxt["share_class0"] - p) < 6 * sigma + 2e-3, (now["round"], p, nxt["share_class0"])
        assert abs(nxt["reward_mean"] - now["predicted_reward_mean"]) < 0.05
        assert nxt["improvement_violation"] == 0.0  # docs/THEORY.md 4.2 holds for an exact learner
    # The exact learner reproduces its training set: its gap is the sampling error alone,
    # against the very set it trained on (round t's is round t - 1's curated set here).
    for prev, row in zip(rows, rows[1:]):
        assert row["training_set_reward_mean"] == pytest.approx(prev["curated_reward_mean"], abs=1e-6)
    for row in rows:
        assert abs(row["learner_gap"]) < 4 * row["learner_gap_stderr"], row["round"]
    # The ideal-learner law itself: 0.1 -> 0.338 -> 0.798 (docs/THEORY.md section 3).
    assert abs(rows[0]["predicted_share_class0"] - 0.338) < 0.02
    assert abs(rows[1]["predicted_share_class0"] - 0.798) < 0.02
    assert [r["rlhf_coefficient"] for r in rows[1:]] == [1.0, 0.5, 1 / 3]
    # The exact learner's own law, against docs/THEORY.md's iteration and the RLHF optimum.
    for row in rows:
        assert row["kl_to_ideal"] < 1e-3, row["round"]
    assert rows[0]["kl_to_rlhf_optimum"] < 1e-3  # t = 0: the optimum is p_data itself
    assert rows[-1]["kl_to_rlhf_optimum"] > 0.0
