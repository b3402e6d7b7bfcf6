"""Populations and choice logs through the CLI: the exact learner follows the mixture law, a changed
population refuses to resume, and the logged choices give back the reward (lightning-curate-reward)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import yaml
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.preference.cli import run as fit_reward
from lightning_curate.rewards import ClippedDistanceReward
from lightning_curate.store import RoundStore
from lightning_curate.theory.population import AtomCurator, population_trajectory

REPO = Path(__file__).resolve().parents[2]
HONEST = [5.0] + [0.0] * 9  # AtomReward gamma 5 on class 0
TARGET = [0.0, 5.0] + [0.0] * 8  # the adversaries want class 1


def curator(name, weight, rewards, **extra):
    return {"class_path": "lightning_curate.loop.Curator",
            "init_args": {"name": name, "weight": weight, **extra,
                          "reward": {"class_path": "lightning_curate.rewards.AtomReward",
                                     "init_args": {"rewards": rewards, "gamma": 1.0}}}}


def test_the_exact_learner_follows_the_population_law(tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(tmp_path / "run")
    cfg["trainer"]["callbacks"][0]["init_args"]["rounds"] = 3
    model = cfg["model"]["init_args"]
    n = model["num_slots"]
    model["preview_size"] = n
    model["curators"] = [curator("honest", 0.75, HONEST), curator("adversary", 0.25, TARGET, beta=2.0)]
    model["log_choices"] = 1000
    main(["fit", "-c", str(write_config(tmp_path / "pop.yaml", cfg))])
    rows = [{k: float(v) for k, v in r.items() if v != ""} for r in read_rows(tmp_path / "run")]
    assert len(rows) == 4
    names = [f"class{i}" for i in range(10)]
    crowd = [AtomCurator(HONEST, 1.0, "softmax", 4, 0.75), AtomCurator(TARGET, 2.0, "softmax", 4, 0.25)]
    laws = [torch.tensor([row[f"exact_share_{c}"] for c in names], dtype=torch.float64) for row in rows]
    ideal = population_trajectory([0.1] * 10, crowd, rounds=3)
    for t, row in enumerate(rows):
        # The exact ideal-learner column is the population iteration itself.
        assert torch.allclose(torch.tensor([row[f"ideal_share_{c}"] for c in names], dtype=torch.float64),
                              ideal[t], atol=1e-9)
        assert abs(row["slots_honest"] - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)
        # The T-round prediction on the real data's points (exactly p_data here) is the same iteration.
        honest_reward = torch.tensor(HONEST, dtype=torch.float64)
        assert abs(row["ideal_reward_mean_honest"] - float(ideal[t] @ honest_reward)) < 1e-6
        assert abs(row["ideal_reward_mean"] - float(ideal[t] @ honest_reward)) < 1e-6
    for t in range(3):
        # Given p_t, the N kept samples are i.i.d. from the mixture q_t: p_{t+1} is Binomial(N, q_t) / N.
        q = population_trajectory(laws[t], crowd, rounds=1)[1]
        sigma = (q * (1 - q) / n).sqrt()
        assert bool(((laws[t + 1] - q).abs() <= 5 * sigma + 1e-12).all()), (t, laws[t + 1], q)
        # The loop's own prediction (the mixture on round t's N x K candidates) matches too.
        predicted = torch.tensor([rows[t][f"predicted_share_{c}"] for c in names], dtype=torch.float64)
        assert bool(((laws[t + 1] - predicted).abs() <= 6 * sigma + 2e-3).all()), t
        assert abs(rows[t + 1]["reward_mean_honest"] - rows[t]["predicted_reward_mean_honest"]) < 0.05
    # The honest class wins here: its share grows round after round; the adversaries' class first
    # grows (beta 2 while class 0 is rare) and is then pushed out.
    assert laws[3][0] > laws[2][0] > laws[1][0] > 0.2
    assert rows[3]["reward_mean_honest"] > 3.0
    # The logged choices name their curators; a single Bradley-Terry fit of them says it recovers a mixture.
    logs = RoundStore(tmp_path / "run" / "rounds").read(0).tensors
    assert logs["choice_curator"].shape == (1000,) and set(logs["choice_curator"].tolist()) == {0, 1}
    report = fit_reward(["--round-dir", str(tmp_path / "run" / "rounds" / "round_000"),
                         "--out", str(tmp_path / "r.pt"), "--max-epochs", "3"])
    assert report["slots"] == 1000 and "mixture" in report["note"]


def test_a_changed_population_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    crowd = [{"class_path": "lightning_curate.loop.Curator",
              "init_args": {"name": name, "weight": w, "reward": {
                  "class_path": "lightning_curate.rewards.ClippedDistanceReward",
                  "init_args": {"dataset": "mog8", "targets": targets}}}}
             for name, w, targets in (("honest", 0.75, [0, 1]), ("adversary", 0.25, [4]))]
    cfg = tiny_config(run, rounds=1, curators=crowd)
    main(["fit", "-c", str(write_config(tmp_path / "a.yaml", cfg))])
    settings = json.loads((run / "rounds" / "round_001" / "manifest.json").read_text())["settings"]
    assert [c["name"] for c in settings["curators"]] == ["honest", "adversary"]
    for change in ("weight", "targets", "none"):
        cfg = tiny_config(run, rounds=2, curators=json.loads(json.dumps(crowd)))
        if change == "weight":
            cfg["model"]["init_args"]["curators"][1]["init_args"]["weight"] = 0.5
        elif change == "targets":
            cfg["model"]["init_args"]["curators"][1]["init_args"]["reward"]["init_args"]["targets"] = [5]
        else:
            del cfg["model"]["init_args"]["curators"]
        try:
            main(["fit", "-c", str(write_config(tmp_path / "b.yaml", cfg)), "--ckpt_path", "last"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2 and "curators: stored" in err, (change, err[-800:])
    assert RoundStore(run / "rounds").rounds() == [0, 1]


def test_choice_logs_give_back_the_reward(tmp_path):
    """One round of 2,000 logged slots at K = 4 (the issue's setting, on a small round-0 model)."""
    run = tmp_path / "run"
    cfg = tiny_config(run, rounds=0, num_slots=2000, log_choices=2000)
    main(["fit", "-c", str(write_config(tmp_path / "log.yaml", cfg))])
    t = RoundStore(run / "rounds").read(0).tensors
    cands, idx = t["choice_candidates"], t["choice_index"][:, 0]
    assert cands.shape == (2000, 4, 2) and torch.equal(t["choice_slot"], torch.arange(2000))
    truth = ClippedDistanceReward(dataset="mog8", targets=[0, 1], radius=0.5)
    assert torch.equal(t["choice_rewards"], truth(cands.reshape(-1, 2)).view(2000, 4))
    assert torch.equal(t["x"], cands[torch.arange(2000), idx])  # the logged choice is the stored winner
    report = fit_reward(["--round-dir", str(run / "rounds" / "round_000"), "--out", str(tmp_path / "r.pt")])
    assert report["slots"] == 2000 and report["num_candidates"] == 4 and report["heldout_slots"] == 400
    assert report["spearman"] >= 0.9, report
    assert abs(report["recovered_beta"] - 1.0) < 0.3, report
    assert "note" not in report
