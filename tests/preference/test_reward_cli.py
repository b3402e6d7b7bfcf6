"""lightning-curate-reward on a round store filled by the test, in the choice-log format
(``choice_candidates [n, K, ...]``, ``choice_index [n, m]``, ``choice_slot [n]``)."""

import json

import pytest
import torch
import yaml

from lightning_curate.data.toy2d import make_2d
from lightning_curate.ops import kchoice
from lightning_curate.preference.cli import load_reward_model, main, parse_rounds, run
from lightning_curate.preference.evaluate import spearman
from lightning_curate.rewards import ClippedDistanceReward
from lightning_curate.store import RoundStore

REWARD = {"class_path": "lightning_curate.rewards.ClippedDistanceReward",
          "init_args": {"dataset": "mog8", "targets": [0, 1], "radius": 0.5, "gamma": 1.0}}


def _round(t, num_slots, beta, K=4, with_rewards=False):
    x, _ = make_2d("mog8", num_slots * K, seed=100 + t)
    reward = ClippedDistanceReward(**REWARD["init_args"])
    r = reward(x).reshape(num_slots, K)
    tensors = {"x": x[:num_slots], "slot": torch.arange(num_slots),
               "choice_candidates": x.reshape(num_slots, K, 2),
               "choice_index": kchoice(r, beta, seed=t).index[:, None],
               "choice_slot": torch.arange(num_slots)}
    if with_rewards:
        tensors["choice_rewards"] = r
    return tensors, {"beta": beta, "num_candidates": K}


@pytest.fixture
def run_dir(tmp_path):
    store = RoundStore(tmp_path / "rounds")
    for t in range(3):
        store.write(t, *_round(t, 700, beta=2.0))
    with open(tmp_path / "config.yaml", "w") as fh:
        yaml.safe_dump({"model": {"init_args": {"reward": REWARD}}}, fh)
    return tmp_path


def test_one_round_with_the_reward_from_the_run_config(run_dir, capsys):
    out = run_dir / "reward.pt"
    report = run(["--round-dir", str(run_dir / "rounds" / "round_001"), "--out", str(out)])
    assert report["rounds"] == [1] and report["slots"] == 700 and report["heldout_slots"] == 140
    assert report["loop_beta"] == 2.0 and report["model"]["kind"] == "mlp"
    assert report["spearman"] >= 0.9
    assert report["recovered_beta"] == pytest.approx(2.0, abs=0.4)
    assert report["heldout_nll"] < report["uniform_nll"]
    assert json.loads(capsys.readouterr().out)["spearman"] == report["spearman"]
    # The console entry point returns exit status 0 (a report dict would be an error exit).
    assert main(["--round-dir", str(run_dir / "rounds" / "round_002"), "--out", str(out), "--max-epochs", "2"]) == 0
    # The saved model rebuilds and ranks fresh points like the true reward.
    model = load_reward_model(out)
    pts, _ = make_2d("mog8", 2000, seed=7)
    with torch.no_grad():
        assert spearman(model(pts), ClippedDistanceReward(**REWARD["init_args"])(pts)) >= 0.9


def test_pooled_rounds_and_logged_rewards(tmp_path):
    store = RoundStore(tmp_path / "rounds")
    for t in range(2):
        store.write(t, *_round(t, 300, beta=1.0, with_rewards=True))
    report = run(["--round-dir", str(tmp_path / "rounds"), "--rounds", "0-1", "--out", str(tmp_path / "r.pt"),
                   "--max-epochs", "30"])
    assert report["rounds"] == [0, 1] and report["slots"] == 600
    assert "spearman" in report  # from choice_rewards, no config needed


def test_plackett_luce_logs(tmp_path):
    x, _ = make_2d("mog8", 400 * 4, seed=3)
    r = ClippedDistanceReward(**REWARD["init_args"])(x).reshape(400, 4)
    tensors = {"choice_candidates": x.reshape(400, 4, 2), "choice_index": kchoice(r, 1.0, num_winners=2, seed=0).index,
               "choice_slot": torch.arange(400)}
    RoundStore(tmp_path / "rounds").write(0, tensors, {"beta": 1.0, "curators": [{}, {}]})
    report = run(["--round-dir", str(tmp_path / "rounds" / "round_000"), "--out", str(tmp_path / "r.pt"),
                   "--max-epochs", "5", "--no-config-reward"])
    assert report["picks_per_slot"] == 2 and "spearman" not in report
    assert "mixture" in report["note"]


def test_errors(tmp_path, run_dir, capsys):
    store = RoundStore(tmp_path / "plain")
    store.write(0, {"x": torch.zeros(3, 2), "slot": torch.arange(3)}, {})
    with pytest.raises(SystemExit) as exc:
        main(["--round-dir", str(tmp_path / "plain" / "round_000"), "--out", str(tmp_path / "r.pt")])
    assert exc.value.code == 2
    assert "no choice logs (missing choice_candidates" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--round-dir", str(run_dir / "rounds"), "--rounds", "5", "--out", str(tmp_path / "r.pt")])
    assert "--rounds asks for rounds [5]" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--rounds must be"):
        parse_rounds("one", [0])
    assert parse_rounds("all", [0, 2]) == [0, 2] and parse_rounds("0,2", [0, 1, 2]) == [0, 2]


def test_image_logs_use_the_classifier_cnn(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(48, 2, 1, 8, 8, generator=gen)
    brightness = images.mean(dim=(2, 3, 4))
    tensors = {"choice_candidates": images, "choice_index": brightness.argmax(1)[:, None],
               "choice_slot": torch.arange(48)}
    RoundStore(tmp_path / "rounds").write(0, tensors, {"beta": 1.0})
    out = tmp_path / "img.pt"
    report = run(["--round-dir", str(tmp_path / "rounds" / "round_000"), "--out", str(out), "--hidden", "4",
                   "--max-epochs", "2", "--batch-size", "16"])
    assert report["model"] == {"kind": "cnn", "in_channels": 1, "image_size": 8, "width": 4}
    model = load_reward_model(out)
    assert model(images[:5, 0]).shape == (5,)
    with pytest.raises(SystemExit):
        main(["--round-dir", str(tmp_path / "rounds"), "--out", str(out), "--model", "cnn", "--rounds", "0",
              "--max-epochs", "1", "--no-config-reward", "--val-fraction", "0.99"])
