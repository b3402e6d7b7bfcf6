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
