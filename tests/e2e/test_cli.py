"""End to end: the console script's ``main(args)`` runs whole curated-retraining runs.

Multi-round runs use real epochs (not fast_dev_run), a CSV logger in tmp and
checkpoints, so resume is tested the way users resume.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_configs import read_rows, store_digest, tiny_config, tree_digest, write_config

from lightning_curate.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_fit_three_rounds_writes_every_artifact(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run))
    main(["fit", "-c", str(cfg)])
    rows = read_rows(run)
    assert [int(r["round"]) for r in rows] == [0, 1, 2, 3]
    for col in ("round", "reward_mean", "reward_std", "curated_reward_mean", "real_fraction", "n_real",
                "n_synthetic", "share_mode0", "share_mode7", "sw_distance", "selection_entropy"):
        assert col in rows[0], col
    assert float(rows[0]["real_fraction"]) == 1.0 and int(rows[0]["n_synthetic"]) == 0
    assert float(rows[1]["real_fraction"]) == 0.0 and int(rows[1]["n_synthetic"]) == 600
    for r in rows:
        assert abs(sum(float(r[f"share_mode{i}"]) for i in range(8)) - 1.0) < 1e-9
        # Curation with beta > 0 keeps better samples than the model's average.
        assert float(r["curated_reward_mean"]) > float(r["reward_mean"])
    assert sorted(store_digest(run)) == [f"round_{t:03d}" for t in range(4)]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    for png in ("samples.png", "round_metrics.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "per-round summary" in out and str(run) in out


def test_turning_the_progress_bar_off_drops_the_configs_round_bar(tmp_path, capsys):
    """Lightning refuses enable_progress_bar=False beside a progress-bar callback; the flag wins."""
    cfg = tiny_config(tmp_path / "run", rounds=1)
    cfg["trainer"]["callbacks"].insert(1, {"class_path": "lightning_curate.loop.RoundProgressBar"})
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = False
    config = write_config(tmp_path / "cfg.yaml", cfg)
    main(["fit", "-c", str(config), "--trainer.enable_progress_bar", "false"])
    assert [int(r["round"]) for r in read_rows(tmp_path / "run")] == [0, 1]
    assert "Round 1/1" not in "".join(capsys.readouterr())  # no bar drew
    main(["fit", "-c", str(config), "--trainer.default_root_dir", str(tmp_path / "with_bar"),
          "--trainer.enable_progress_bar", "true"])
    assert "Round 1/1" in "".join(capsys.readouterr())  # the config's bar, when the trainer has one
    cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"][0]  # one callback, not a list: left alone
    single = write_config(tmp_path / "single.yaml", cfg)
    main(["fit", "-c", str(single), "--trainer.default_root_dir", str(tmp_path / "single"),
          "--trainer.enable_progress_bar", "false"])
    assert [int(r["round"]) for r in read_rows(tmp_path / "single")] == [0, 1]


def test_resume_after_crash_reproduces_the_uninterrupted_run(tmp_path):
    ref_run, crash_run = tmp_path / "ref", tmp_path / "crash"
    main(["fit", "-c", str(write_config(tmp_path / "ref.yaml", tiny_config(ref_run)))])

    cfg = tiny_config(crash_run)
    # A callback that raises at the start of epoch 6 (round 2 is in progress; rounds 0 and 1 are done).
    cfg["trainer"]["callbacks"].append({"class_path": "run_configs.CrashAtEpoch", "init_args": {"epoch": 6}})
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "-c", str(write_config(tmp_path / "crash.yaml", cfg))])
    assert sorted(store_digest(crash_run)) == ["round_000", "round_001"]

    main(["fit", "-c", str(write_config(tmp_path / "resume.yaml", tiny_config(crash_run))), "--ckpt_path", "last"])
    assert store_digest(crash_run) == store_digest(ref_run)
    assert read_rows(crash_run) == read_rows(ref_run)


def test_kill_9_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A real crash: SIGKILL the console script once round 1 is stored, then resume.

    The run is held at its first reward call after round 1's commit (``run_configs.GatedReward``), so
    the kill always lands before round 2 however fast the machine is."""
    ref_run, crash_run = tmp_path / "ref", tmp_path / "crash"
    reward = {"class_path": "run_configs.GatedReward", "init_args": {"dataset": "mog8", "targets": [0, 1]}}
    cfg_ref = write_config(tmp_path / "ref.yaml", tiny_config(ref_run, reward=reward))
    cfg = write_config(tmp_path / "crash.yaml", tiny_config(crash_run, reward=reward))
    gate = tmp_path / "gate"
    gate.touch()
    tests_dir = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    gated = {**env, "LC_TEST_GATE": str(gate),
             "LC_TEST_GATE_AFTER": str(crash_run / "rounds" / "round_001" / "manifest.json")}
    cmd = [sys.executable, "-m", "lightning_curate", "fit", "-c"]
    proc = subprocess.Popen(cmd + [str(cfg)], env=gated, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while not Path(str(gate) + ".reached").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "round 1 never appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (crash_run / "rounds" / "round_003").exists()
    subprocess.run(cmd + [str(cfg), "--ckpt_path", "last"], env=env, check=True, timeout=180,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    subprocess.run(cmd + [str(cfg_ref)], env=env, check=True, timeout=180,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert store_digest(crash_run) == store_digest(ref_run)
    assert read_rows(crash_run) == read_rows(ref_run)


def test_fresh_run_refuses_a_directory_with_stored_rounds(tmp_path, capsys):
    """Issue 11's replay: the refusal comes before the config save and the logger, so config.yaml and
    metrics.csv are byte-identical afterwards (a refused start used to overwrite both)."""
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, rounds=1))
    main(["fit", "-c", str(cfg)])
    before = tree_digest(run)
    other = tiny_config(run, rounds=1, beta=3.0)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "other.yaml", other))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {run / 'rounds'} already holds rounds [0, 1]" in err and "Traceback" not in err
    assert tree_digest(run) == before


def test_resume_with_a_tampered_round_is_an_error(tmp_path, capsys):
    run = tmp_path / "run"
    cfg_dict = tiny_config(run, rounds=1)
    cfg = write_config(tmp_path / "cfg.yaml", cfg_dict)
    main(["fit", "-c", str(cfg)])
    samples = run / "rounds" / "round_000" / "part_000_00000.pt"
    data = bytearray(samples.read_bytes())
    data[-20] ^= 0xFF
    samples.write_bytes(bytes(data))
    cfg_dict["trainer"]["callbacks"][0]["init_args"]["rounds"] = 2  # extend the run
    before = tree_digest(run)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "more.yaml", cfg_dict)), "--ckpt_path", "last"])
    assert info.value.code == 2
    assert f"checksum mismatch for {samples}" in capsys.readouterr().err
    assert tree_digest(run) == before
    assert hashlib.sha256(samples.read_bytes()).hexdigest() != store_digest(run)["round_000"][samples.name]


@pytest.mark.parametrize("section, key, value", [
    ("model", "num_candidates", 0),
    ("model", "num_winners", 5),
    ("model", "beta", -1.0),
    ("model", "beta", float("nan")),
    ("model", "beta", float("inf")),
    ("model", "mode", "bogus"),
    ("data", "real_fraction", 1.5),
    ("data", "real_fraction", -0.1),
    ("data", "policy", "bogus"),
    ("loop", "rounds", -1),
    ("loop", "epochs_per_round", 0),
])
def test_bad_config_values_stop_before_training(tmp_path, capsys, section, key, value):
    run = tmp_path / "run"
    cfg = tiny_config(run)
    target = (cfg["trainer"]["callbacks"][0] if section == "loop" else cfg[section])["init_args"]
    target[key] = value
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (run / "rounds").exists() and not (run / "checkpoints").exists()


def test_a_bad_curator_in_a_list_is_named_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(run)
    reward = cfg["model"]["init_args"]["reward"]
    cfg["model"]["init_args"]["curators"] = [
        {"class_path": "lightning_curate.loop.Curator", "init_args": {"reward": reward, "name": "honest"}},
        {"class_path": "lightning_curate.loop.Curator", "init_args": {"reward": reward, "name": "rival", "weight": -1}},
    ]
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: Curator 'rival': weight must be a finite number >= 0.0, got -1.0"
    assert not (run / "rounds").exists()


def test_a_bad_callback_in_the_list_is_named_in_one_line(tmp_path, capsys):
    """jsonargparse's Union alternatives that do not apply (a single Callback, the forms of one) stay out."""
    run = tmp_path / "run"
    cfg = tiny_config(run)
    cfg["trainer"]["callbacks"][1]["init_args"]["every_n_epochs"] = 2
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("error: RoundCheckpoint saves at each round's end: every_n_epochs=2 is "
                                            "not used; use lightning.pytorch.callbacks.ModelCheckpoint for another "
                                            "schedule")
    assert not run.exists() or not any(run.iterdir())


@pytest.mark.parametrize("body, message", [
    ("return x[:, 0] * float('nan')", "reward Broken on 8 generator samples of shape [8, 2] returned 8 non-finite"),
    ("return x[:, :1]", "reward Broken on 8 generator samples of shape [8, 2] returned shape [8, 1]; expected one "
                        "reward per sample, shape [8]"),
    ("return torch.where(x[:, 0] > 0, torch.inf, 0.0)", "reward Broken on 8 generator samples of shape [8, 2] "
                                                        "returned"),
])
def test_broken_reward_model_is_named_before_training(tmp_path, monkeypatch, capsys, body, message):
    """The fit-start check scores a few samples: a broken reward stops the run before round 0 trains."""
    module = f"broken_reward_{hashlib.md5(body.encode()).hexdigest()[:8]}"  # one module per case
    (tmp_path / f"{module}.py").write_text(
        "import torch\n"
        "class Broken(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        f"        {body}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, num_slots=150,
                                                          reward={"class_path": f"{module}.Broken"}))
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(cfg)])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not (run / "rounds").exists() and not (run / "checkpoints").exists()


def test_print_config_shows_the_config_keys(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "run"))
    with pytest.raises(SystemExit):
        main(["fit", "-c", str(cfg), "--print_config"])
    out = capsys.readouterr().out
    for key in ("num_slots", "num_candidates", "beta", "num_winners", "mode", "real_fraction", "policy",
                "rounds", "epochs_per_round"):
        assert f"{key}:" in out, key


def test_module_entry_point_runs_help():
    proc = subprocess.run([sys.executable, "-m", "lightning_curate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "fit" in proc.stdout


@pytest.mark.parametrize("config", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_every_shipped_config_parses(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(REPO / "configs" / config), "--print_config"])
    assert info.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_console_script_exits_0_and_a_root_dir_override_moves_every_artifact(tmp_path):
    """`lightning-curate fit ... --trainer.default_root_dir X` puts logs, checkpoints and rounds under X."""
    script = Path(sys.executable).with_name("lightning-curate")
    assert script.is_file(), "the console script is not installed (pip install -e .)"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tmp_path / "configured", rounds=1))
    moved = tmp_path / "moved"
    proc = subprocess.run([str(script), "fit", "-c", str(cfg), f"--trainer.default_root_dir={moved}"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "configured").exists()
    for path in ("rounds.csv", "config.yaml", "checkpoints/last.ckpt", "rounds/round_001/manifest.json"):
        assert (moved / path).is_file(), path


def test_crash_mid_round_keeps_earlier_rounds_and_the_resumed_run_completes(tmp_path, monkeypatch):
    """The reward model raises in the second chunk of round 1: round 0 survives untouched,
    the partial round is discarded and regenerated from its seed on resume."""
    (tmp_path / "flaky_reward.py").write_text(
        "import os\n"
        "from lightning_curate.rewards import ClippedDistanceReward\n"
        "class Flaky(ClippedDistanceReward):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        if x.shape[0] == 2048:  # one full chunk: 512 slots x K = 4\n"
        "            Flaky.calls += 1\n"
        "            if str(Flaky.calls) == os.environ.get('CRASH_AT_CALL'):\n"
        "                raise RuntimeError('reward model crashed')\n"
        "        return super().forward(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = {"class_path": "flaky_reward.Flaky", "init_args": {"dataset": "mog8", "targets": [0, 1]}}
    ref_run, crash_run = tmp_path / "ref", tmp_path / "crash"
    main(["fit", "-c", str(write_config(tmp_path / "ref.yaml", tiny_config(
        ref_run, rounds=2, num_slots=1100, chunk_size=512, reward=reward)))])
    cfg = write_config(tmp_path / "crash.yaml", tiny_config(crash_run, rounds=2, num_slots=1100, chunk_size=512,
                                                           reward=reward))
    import flaky_reward

    flaky_reward.Flaky.calls = 0
    monkeypatch.setenv("CRASH_AT_CALL", "4")  # round 0 makes calls 1-2; call 4 is round 1's second chunk
    with pytest.raises(RuntimeError, match="reward model crashed"):
        main(["fit", "-c", str(cfg)])
    round0 = store_digest(crash_run)
    assert list(round0) == ["round_000"]
    assert len(list((crash_run / "rounds" / ".tmp_round_001").glob("part_*.pt"))) == 1  # the chunk before the crash

    monkeypatch.delenv("CRASH_AT_CALL")
    main(["fit", "-c", str(cfg), "--ckpt_path", "last"])
    assert store_digest(crash_run)["round_000"] == round0["round_000"]
    assert store_digest(crash_run) == store_digest(ref_run)
    assert read_rows(crash_run) == read_rows(ref_run)
    assert not (crash_run / "rounds" / ".tmp_round_001").exists()
