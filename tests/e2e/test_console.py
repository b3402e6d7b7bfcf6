"""The main job's console, as a user sees it: the package's own lines, the progress bar and the
summary; no line from Python's warnings and none of Lightning's messages a user can do nothing about.

Runs ``configs/mog8.yaml`` itself through the console script, reduced by a small overlay (two
curated rounds), in a subprocess with Python's default warning filters, as in a fresh shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# What a line from Python's warnings machinery looks like ("path.py:123: SomeWarning: text" or,
# for warnings without a category name shown, "path.py:123: text"), and Lightning's noise.
WARNING_LINE = re.compile(r"^\S+\.py:\d+: ")
NOISE = ("Warning", "💡 Tip", "max_epochs` was not set", "LeafSpec", "logging interval", "in eval mode",
         "GPU available", "Seed set to")


def _reduced_main_job(tmp_path: Path) -> Path:
    """The shipped main job (its batches, steps and sampler), stopped after its first 2 curated rounds, with
    round 0 cut to a quarter of its epochs: a few seconds of training, still a faithful run."""
    overlay = {
        "trainer": {"default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning_curate.loop.RetrainingLoop",
                                   "init_args": {"rounds": 2, "epochs_per_round": 64, "initial_epochs": 40,
                                                 "learner_noise": 0.6}},
                                  {"class_path": "lightning_curate.loop.RoundProgressBar"},
                                  {"class_path": "lightning_curate.loop.RoundCheckpoint",
                                   "init_args": {"dirpath": str(tmp_path / "run" / "checkpoints")}}]},
    }
    path = tmp_path / "reduced.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def test_the_main_job_prints_no_warning_and_no_third_party_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "LIGHTNING_CURATE_DEBUG")}
    proc = subprocess.run([sys.executable, "-m", "lightning_curate", "fit", "-c", str(REPO / "configs" / "mog8.yaml"),
                           "-c", str(_reduced_main_job(tmp_path))],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "Curated retraining: per-round summary" in proc.stdout  # the summary is there...
    lines = [line for chunk in output.splitlines() for line in chunk.split("\r") if line.strip()]
    flagged = [line for line in lines if WARNING_LINE.match(line) or any(n in line for n in NOISE)]
    assert flagged == []  # ...and nothing a user can do nothing about
    assert "as far per round as the ideal learner predicts" not in output  # no fidelity warning either
    # The schedule set max_epochs before Lightning could default it: the config records it.
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 40 + 2 * 64
