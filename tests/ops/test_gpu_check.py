"""scripts/gpu_check.py on a CPU machine: it refuses loudly, and the run configs it builds are valid.

The GPU steps themselves only run on a CUDA machine (docs/readme/gpu.md); here the
CIFAR-shaped config runs for real on the CPU (small UNet, no compile, no
autocast) through the same builders, and the digits config is parsed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_configs import load_script

from lightning_curate.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _load():
    return load_script(SCRIPT)


def test_gpu_check_fails_loudly_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine that has one
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "gpu_check: FAILED: no CUDA device" in proc.stderr
    assert "does not skip" in proc.stderr
    assert not (tmp_path / "out").exists()  # it refused before doing anything
    assert time.perf_counter() - t0 < 60


def test_quick_is_the_kernel_acceptance_and_fails_loudly_without_cuda(tmp_path):
    """--quick keeps the CUDA tests and the roofline (its target shapes) and refuses without a GPU too."""
    gc = _load()
    assert set(gc.STEPS) - set(gc.QUICK_SKIPS) == {"tests", "roofline"}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "gpu_check: FAILED: no CUDA device" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_check_rounds_finds_missing_rounds_and_bad_rewards():
    gc = _load()
    good = [{"round": str(i), "reward_mean": "0.5"} for i in range(3)]
    assert gc.check_rounds(good, 2) == []
    assert gc.check_rounds(good[:2], 2) == ["rounds.csv holds rounds [0, 1], expected 0..2"]
    bad = [dict(r) for r in good]
    bad[1]["reward_mean"] = "nan"
    assert gc.check_rounds(bad, 2) == ["round 1: reward_mean is 'nan'"]


@pytest.mark.slow
def test_cifar_like_config_runs_and_resumes_on_cpu(tmp_path):
    """The CIFAR-shaped run gpu_check makes (TensorImages of random images, an untrained
    SmallCNN's q_0 as the reward), shrunk, on the CPU: round 1, then a resume to round 2."""
    gc = _load()
    kwargs = {"accelerator": "cpu", "compile_": False, "autocast": None, "precision": "32-true", "small": True}
    first = gc._write(tmp_path / "c1.yaml", gc.cifar_like_config(tmp_path, 1, **kwargs))
    second = gc._write(tmp_path / "c2.yaml", gc.cifar_like_config(tmp_path, 2, **kwargs))
    run_dir = tmp_path / "runs" / "cifar_like"
    main(["fit", "-c", str(first)])
    assert [int(r["round"]) for r in gc.read_rounds(run_dir)] == [0, 1]
    main(["fit", "-c", str(second), "--ckpt_path", "last"])
    assert gc.check_rounds(gc.read_rounds(run_dir), 2) == []


def test_digits_config_parses(tmp_path, capsys):
    """The digits config gpu_check builds (CUDA, compile, bf16 autocast) is a valid run config."""
    gc = _load()
    cfg = gc._write(tmp_path / "d.yaml", gc.digits_config(tmp_path, 2))
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(cfg), "--print_config"])
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "compile: true" in printed and "autocast: bfloat16" in printed and "accelerator: gpu" in printed
    assert str(tmp_path / "checkpoints" / "digits_classifier.ckpt") in printed


def test_fidelity_config_is_the_shipped_digits_run_in_each_variant(tmp_path, capsys):
    """The fidelity step runs configs/digits.yaml whole: its rounds and epochs, its own folder per variant."""
    gc = _load()
    shipped = gc._callback(gc._load("digits.yaml"), "RetrainingLoop")["init_args"]
    for variant, (compile_, autocast) in (("fp32", (False, None)), ("bf16", (True, "bfloat16"))):
        cfg = gc.fidelity_config(tmp_path, variant)
        loop = gc._callback(cfg, "RetrainingLoop")["init_args"]
        assert (loop["rounds"], loop["epochs_per_round"], loop["initial_epochs"]) == (
            shipped["rounds"], shipped["epochs_per_round"], shipped["initial_epochs"])
        assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "runs" / f"digits_{variant}")
        gen = cfg["model"]["init_args"]["generator"]["init_args"]
        assert (gen["compile"], gen["autocast"]) == (compile_, autocast)
    path = gc._write(tmp_path / "f.yaml", gc.fidelity_config(tmp_path, "fp32"))
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(path), "--print_config"])
    assert info.value.code == 0
    assert "accelerator: gpu" in capsys.readouterr().out
    with pytest.raises(ValueError, match="variant must be one of"):
        gc.fidelity_config(tmp_path, "fp16")


def _rows(reward, share, gaps, stderr="0.05"):
    rows = [{"round": "0", "reward_fidelity": "", "gain_share_fidelity": "", "learner_gap": "-0.5",
             "learner_gap_stderr": "0.01", "learner_noise": "0"}]
    for t, (r, s, g) in enumerate(zip(reward, share, gaps), start=1):
        rows.append({"round": str(t), "reward_fidelity": r, "reward_fidelity_stderr": stderr,
                     "gain_share_fidelity": s, "gain_share_fidelity_stderr": stderr, "learner_gap": g,
                     "learner_gap_stderr": "0.01", "learner_noise": "0"})
    return rows


def test_fidelity_summary_and_target_read_the_band_with_each_ratios_error():
    gc = _load()
    rows = _rows(["0.9", "1.1", "nan"], ["0.95", "", "1.0"], ["-0.01", "-0.03", "-0.02"])
    summary = gc.fidelity_summary(rows)
    assert summary["reward_fidelity"] == "0.90, 1.10, -"
    assert summary["gain_share_fidelity"] == "0.95, -, 1.00"
    assert summary["ratios"] == [0.9, 0.95, 1.1, 1.0]
    assert summary["verdicts"] == ["in"] * 4
    assert summary["mean_gap"] == pytest.approx(-0.02)  # equal errors: the plain mean of rounds 1-3, not round 0
    step = {"runs": {"fp32": {"seconds": 1.0, **summary}}}
    target = gc.fidelity_target(step, "card")
    assert target["status"] == "PASS"
    assert "fp32 on card: reward 0.90, 1.10, -" in target["detail"]
    assert "(4 ratios: 4 inside, 0 outside by at most 2 standard errors, 0 further out)" in target["detail"]
    near = gc.fidelity_summary(_rows(["0.81"], ["1.0"], ["-0.01"], stderr="0.077"))  # 0.04 below: 0.5 se
    assert near["verdicts"] == ["near", "in"]
    both = {"runs": {"fp32": {"seconds": 1.0, **summary}, "bf16": {"seconds": 1.0, **near}}}
    assert gc.fidelity_target(both, "card")["status"] == "NEAR"
    out = gc.fidelity_summary(_rows(["0.59"], ["1.0"], ["-0.01"], stderr="0.08"))  # 0.26 below: 3.3 se
    assert out["verdicts"] == ["out", "in"]
    both["runs"]["bf16"] = {"seconds": 1.0, **out}
    assert gc.fidelity_target(both, "card")["status"] == "FAIL"
    assert gc.fidelity_target({"runs": {}}, "card")["status"] == "SKIP"
    # A variant that failed fails the target, named, even when the runs that finished are faithful.
    crashed = gc.fidelity_target({"runs": {"fp32": {"seconds": 1.0, **summary}},
                                  "problems": ["bf16: RuntimeError: boom"]}, "card")
    assert crashed["status"] == "FAIL" and crashed["detail"].endswith("; FAILED: bf16: RuntimeError: boom")


def test_classifiers_folder_without_its_checkpoints_is_refused_by_name(tmp_path):
    """--classifiers names what is missing and stops before anything is written (even without CUDA)."""
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "digits_classifier.ckpt").write_bytes(b"x")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--classifiers",
                           str(tmp_path / "cls")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"--classifiers {tmp_path / 'cls'}: no " in proc.stderr
    assert "digits_classifier.ckpt.net.safetensors" in proc.stderr and "digits_judge.ckpt" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_fidelity_config_seed_replaces_the_three_seeds_and_names_its_folder(tmp_path):
    gc = _load()
    shipped = gc.fidelity_config(tmp_path, "fp32")
    assert shipped["seed_everything"] == 0 and shipped["trainer"]["default_root_dir"].endswith("digits_fp32")
    cfg = gc.fidelity_config(tmp_path, "bf16", seed=2)
    assert cfg["seed_everything"] == 2
    assert gc._callback(cfg, "RetrainingLoop")["init_args"]["seed"] == 2
    assert cfg["data"]["init_args"]["source"]["init_args"]["seed"] == 2
    assert cfg["trainer"]["default_root_dir"] == str(tmp_path / "runs" / "digits_bf16_seed2")
