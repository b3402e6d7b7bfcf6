"""``lightning-curate diagnose jitter``: refits of one round from the same checkpoint, and the noise they show."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from run_configs import read_rows, tiny_config, tree_digest, write_config

from lightning_curate.cli import main
from lightning_curate.diagnostics import jitter as script
from lightning_curate.diagnostics.cli import main as diagnose
from lightning_curate.diagnostics.common import DiagnosticError

REPO = Path(__file__).resolve().parents[2]
CONSOLE = Path(sys.executable).parent / "lightning-curate"  # the console script installed with the package


def test_jitter_of_rows_is_the_refits_spread_in_sampling_errors():
    jitter = script.jitter_of_rows
    rows = [{"reward_mean": m, "reward_std": 2.0, "share_a": a, "share_b": 1 - a}
            for m, a in ((1.0, 0.5), (1.2, 0.6), (1.4, 0.4))]
    out = jitter(rows, num_candidates=400)
    assert out["reward_spread"] == pytest.approx(0.2)  # sample standard deviation of 1.0, 1.2, 1.4
    assert out["reward_sampling_se"] == pytest.approx(2.0 / 20) and out["reward_ratio"] == pytest.approx(2.0)
    assert out["share_spread"] == pytest.approx(0.1)  # both classes' shares spread by 0.1
    assert out["share_sampling_se"] == pytest.approx(math.sqrt(0.25 / 400))
    assert out["share_ratio"] == pytest.approx(4.0) and out["learner_noise"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least two refits"):
        jitter(rows[:1], 400)


def test_refits_start_from_the_same_round_and_refit_zero_is_the_run_itself(tmp_path):
    cfg = tiny_config(tmp_path / "run", rounds=1)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    config = write_config(tmp_path / "tiny.yaml", cfg)
    proc = subprocess.run([str(CONSOLE), "diagnose", "jitter", "-c", str(config), "--rounds", "1", "--refits", "2",
                           "--work-dir", str(tmp_path / "jitter"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    means = result["rounds"]["1"]["reward_means"]
    # The run straight through its round 1 (no resume, the config's own shuffling seed) is refit 0.
    main(["fit", "-c", str(config)])
    assert float(read_rows(tmp_path / "run")[1]["reward_mean"]) == means[0]
    # Both refits trained round 1 from the same round 0 (the same stored rows), with other batches.
    refits = [read_rows(tmp_path / "jitter" / f"round1_refit{k}") for k in (0, 1)]
    assert refits[0][0] == refits[1][0]
    assert means[0] != means[1]
    assert result["learner_noise"] == result["rounds"]["1"]["learner_noise"] >= 0.0
    assert "learner_noise:" in proc.stdout
    # Each refit's learner gap is its own row's, and the table prints it.
    gaps = result["rounds"]["1"]["learner_gap"]
    assert gaps == [float(rows[1]["learner_gap"]) for rows in refits]
    assert f"({gaps[0]:+.4f}, {gaps[1]:+.4f})" in proc.stdout


def test_bad_rounds_and_refits_are_refused(tmp_path):
    for args, message in ((["--rounds", "0"], "--rounds must be >= 1"), (["--rounds", "2", "--refits", "1"],
                                                                          "--refits must be >= 2")):
        proc = subprocess.run([sys.executable, "-m", "lightning_curate", "diagnose", "jitter", "-c",
                               "configs/mog8.yaml", *args],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert proc.returncode == 2 and message in proc.stderr


def test_a_missing_config_is_named(tmp_path):
    proc = subprocess.run([str(CONSOLE), "diagnose", "jitter", "-c", str(tmp_path / "nope.yaml"), "--rounds", "2"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 1
    assert f"error: cannot compose {tmp_path / 'nope.yaml'}: " in proc.stderr and "does not exist" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing was written


def test_a_reused_work_dir_whose_base_went_further_is_refused(tmp_path, monkeypatch, capsys):
    """Its refits would resume past round t and train nothing: equal rows, a learner noise of 0."""
    config = {"trainer": {"default_root_dir": "runs/x", "callbacks": [
        {"class_path": "lightning_curate.loop.RetrainingLoop", "init_args": {"rounds": 10}}]},
        "data": {"init_args": {"seed": 0}}, "model": {"init_args": {"num_slots": 10, "num_candidates": 2}}}
    monkeypatch.setattr(script, "composed_config", lambda files: config)
    runs = []
    monkeypatch.setattr(script, "_run", lambda cfg, run_dir, rounds, seed, **kw: runs.append((run_dir, rounds)))
    base = tmp_path / "work" / "base"
    base.mkdir(parents=True)
    (base / "rounds.csv").write_text("round,reward_mean\n0,1.0\n1,1.5\n2,1.7\n3,1.8\n")
    assert diagnose(["jitter", "-c", "cfg.yaml", "--rounds", "2", "--work-dir", str(tmp_path / "work")]) == 1
    assert "holds rounds up to 3, so round 2 cannot be refitted from it" in capsys.readouterr().err
    assert runs == []  # refused before the base resumed (Lightning would refuse it, past max_epochs) or a refit ran


def test_a_reused_base_of_another_config_is_refused(tmp_path, monkeypatch):
    """Resuming it would mix the rounds of two configs; only the loop's rounds may differ."""
    calls = []
    monkeypatch.setattr(script.subprocess, "run",
                        lambda args, **kw: calls.append(args) or subprocess.CompletedProcess(args, 0))
    config = {"trainer": {"default_root_dir": "runs/x", "callbacks": [
        {"class_path": "lightning_curate.loop.RetrainingLoop", "init_args": {"rounds": 10, "seed": 0}}]},
        "data": {"init_args": {"seed": 0}}, "model": {"init_args": {"lr": 0.002}}}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    script._run(config, Path("work/base"), rounds=1, data_seed=0, resume=False, reused=True)
    stored = yaml.safe_load((tmp_path / "work" / "base.yaml").read_text())
    other = json.loads(json.dumps(config))
    other["model"]["init_args"]["lr"] = 0.005
    with pytest.raises(DiagnosticError, match="was trained with another config"):
        script._run(other, tmp_path / "work" / "base", rounds=2, data_seed=0, resume=True, reused=True)
    assert yaml.safe_load((tmp_path / "work" / "base.yaml").read_text()) == stored  # left as it was
    # The same config, more rounds, the work dir spelled another way: resumed.
    script._run(config, tmp_path / "work" / "base", rounds=2, data_seed=0, resume=True, reused=True)
    assert len(calls) == 2 and calls[1][-2:] == ["--ckpt_path", "last"]
    # A refit folder is rebuilt from the base each time: an old config file beside it is not compared.
    (tmp_path / "work" / "round2_refit0.yaml").write_text(yaml.safe_dump(other))
    script._run(config, tmp_path / "work" / "round2_refit0", rounds=2, data_seed=0, resume=True)
    assert len(calls) == 3


def test_a_checkpoint_folder_outside_the_run_is_refused(tmp_path):
    config = {"trainer": {"default_root_dir": str(tmp_path / "run"), "callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "/tmp/shared"}}]},
        "data": {"init_args": {}}}
    with pytest.raises(DiagnosticError, match="saves to /tmp/shared, outside the run directory"):
        script._run(config, tmp_path / "refit0", rounds=1, data_seed=0, resume=False)
    assert not (tmp_path / "refit0.yaml").exists()


def test_a_run_directory_is_retrained_from_its_saved_config_and_only_read(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("saved: config\n")
    before = tree_digest(run_dir)
    composed, runs = [], []
    config = {"trainer": {"default_root_dir": str(run_dir), "callbacks": [
        {"class_path": "lightning_curate.loop.RetrainingLoop", "init_args": {"rounds": 10}}]},
        "data": {"init_args": {"seed": 7}}, "model": {"init_args": {"num_slots": 10, "num_candidates": 2}}}
    monkeypatch.setattr(script, "composed_config", lambda files: composed.append(files) or config)

    def fake_run(cfg, where, rounds, seed, **kw):  # a round 1 whose reward_mean is the shuffling seed
        runs.append((where.name, rounds, seed))
        where.mkdir(parents=True, exist_ok=True)
        (where / "rounds.csv").write_text("round,reward_mean,reward_std\n0,0.0,1.0\n"
                                          + (f"1,{seed},1.0\n" if rounds == 1 else ""))

    monkeypatch.setattr(script, "_run", fake_run)
    work = tmp_path / "work"
    assert diagnose(["jitter", str(run_dir), "--rounds", "1", "--refits", "3", "--work-dir", str(work),
                     "--json"]) == 0
    assert composed == [[str(run_dir / "config.yaml")]]
    assert runs == [("base", 0, 7), ("round1_refit0", 1, 7), ("round1_refit1", 1, 8), ("round1_refit2", 1, 9)]
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rounds"]["1"]["reward_means"] == [7.0, 8.0, 9.0]
    assert result["rounds"]["1"]["reward_spread"] == pytest.approx(1.0)  # stdev of 7, 8, 9
    assert result["learner_noise"] == pytest.approx(math.sqrt(20))  # spread 1 over 1 / sqrt(20)
    assert tree_digest(run_dir) == before


def test_the_config_source_is_named(tmp_path, capsys):
    assert diagnose(["jitter", str(tmp_path), "--rounds", "1"]) == 1
    assert f"run directory {tmp_path}: no config.yaml" in capsys.readouterr().err
    for args in ([str(tmp_path), "-c", "configs/mog8.yaml"], []):
        with pytest.raises(SystemExit) as err:
            diagnose(["jitter", *args, "--rounds", "1"])
        assert err.value.code == 2 and "either RUN_DIR" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as err:
        diagnose(["jitter", str(tmp_path), "--rounds", "1", "--work-dir", str(tmp_path / "w")])
    assert err.value.code == 2 and "is inside RUN_DIR" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_config_without_a_curated_loop_is_named_before_any_training(tmp_path, monkeypatch, capsys):
    config = {"trainer": {"default_root_dir": "runs/x", "callbacks": []}, "data": {"init_args": {"seed": 0}},
              "model": {"init_args": {"num_slots": 10, "num_candidates": 2}}}
    monkeypatch.setattr(script, "composed_config", lambda files: config)
    monkeypatch.setattr(script, "_run", lambda *a, **kw: pytest.fail("trained a config it should have refused"))
    assert diagnose(["jitter", "-c", "plain.yaml", "--rounds", "1", "--work-dir", str(tmp_path / "w")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: plain.yaml: not a curated-retraining config") and "RetrainingLoop" in err
    assert not (tmp_path / "w").exists()


def test_the_sampling_error_is_the_rounds_own_pool_under_a_slot_schedule(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path / "run", rounds=3, num_slots_schedule={"kind": "geometric", "factor": 1.5})
    composed = script.composed_config([str(write_config(tmp_path / "grow.yaml", cfg))])  # fit's own composition
    model = composed["model"]["init_args"]
    assert [script.candidates_of_round(model, t) for t in range(4)] == [600 * 4, 900 * 4, 1350 * 4, 2025 * 4]
    # the diagnostic's own numbers: refits' rows faked, the standard error from each round's pool
    refit_rows = iter([{"reward_mean": m, "reward_std": 3.0} for m in (1.0, 1.5, 2.0, 2.6)])
    monkeypatch.setattr(script, "composed_config", lambda files: composed)
    monkeypatch.setattr(script, "_check_base", lambda *a, **kw: None)
    monkeypatch.setattr(script, "_run", lambda *a, **kw: None)
    monkeypatch.setattr(script, "_row", lambda run_dir, t: next(refit_rows))
    (tmp_path / "w" / "base").mkdir(parents=True)
    assert diagnose(["jitter", "-c", "grow.yaml", "--rounds", "1", "2", "--refits", "2", "--work-dir",
                     str(tmp_path / "w"), "--json"]) == 0
    rounds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rounds"]
    assert rounds["1"]["reward_sampling_se"] == pytest.approx(3.0 / math.sqrt(900 * 4))  # not 600 * 4
    assert rounds["2"]["reward_sampling_se"] == pytest.approx(3.0 / math.sqrt(1350 * 4))
    assert rounds["2"]["reward_spread"] == pytest.approx(0.6 / math.sqrt(2))  # the stdev of 2.0 and 2.6


def test_a_bad_slot_schedule_is_named_before_any_training(tmp_path, monkeypatch, capsys):
    config = {"trainer": {"default_root_dir": "runs/x", "callbacks": []}, "data": {"init_args": {"seed": 0}},
              "model": {"init_args": {"num_slots": 10, "num_candidates": 2, "num_slots_schedule": {"kind": "cubic"}}}}
    monkeypatch.setattr(script, "composed_config", lambda files: config)
    monkeypatch.setattr(script, "_run", lambda *a, **kw: pytest.fail("trained a config it should have refused"))
    assert diagnose(["jitter", "-c", "grow.yaml", "--rounds", "1", "--work-dir", str(tmp_path / "w")]) == 1
    assert "num_slots_schedule.kind" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
