"""The same recipe on two processes as on one: grouped optimizer steps under DDP (CPU, gloo).

``steps_per_batch > 1`` under DDP takes one ``manual_backward`` (one gradient all-reduce) per
optimizer step, and ``batch_size`` is the global batch split over the ranks, so a two-process run
takes the one-process run's optimizer steps on the same samples. Training noise differs (each
rank draws its own), so the results are compared within their sampling errors by the package's
fidelity rule.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.loop.verdicts import BAND_Z, band_verdict
from lightning_curate.utils.columns import Col, stderr

TESTS = Path(__file__).parents[1]
DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]


def _fit(tmp_path: Path, name: str, *extra: str) -> Path:
    run = tmp_path / name
    cfg = tiny_config(run, rounds=2, steps_per_batch=3)
    del cfg["trainer"]["limit_train_batches"]  # it would count groups: compare whole epochs
    cfg["trainer"]["callbacks"].append({"class_path": "run_configs.RecordBatches"})
    path = write_config(tmp_path / f"{name}.yaml", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    # A hang (a missed all-reduce) must fail the test, not stall CI.
    proc = subprocess.run([sys.executable, "-m", "lightning_curate", "fit", "-c", str(path), *extra],
                          env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_grouped_steps_on_two_processes_keep_the_one_process_recipe(tmp_path):
    one, two = _fit(tmp_path, "one"), _fit(tmp_path, "two", *DDP)
    # The schedule: rounds, epochs, optimizer steps.
    steps = [torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
             for run in (one, two)]
    assert steps == [3 * 16 + 2 * 2 * 5] * 2  # 2,000 real rows then 600 curated, batches of 128
    rows_one, rows_two = read_rows(one), read_rows(two)
    for key in ("round", "epoch", "n_real", "n_synthetic", "real_fraction"):
        assert [r[key] for r in rows_one] == [r[key] for r in rows_two], key
    # Samples per step: each step's global batch is the one-process batch, split over the ranks.
    single = torch.load(one / "batches_rank0.pt")
    ranks = [torch.load(two / f"batches_rank{r}.pt") for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == steps[0]
    for (epoch, x), (e0, x0), (e1, x1) in zip(single, *ranks):
        assert epoch == e0 == e1 and x0.shape[0] == x1.shape[0] and x.shape[0] == x0.shape[0] + x1.shape[0]
        if epoch < 3:  # round 0 trains on the same real rows: the very same samples per step
            assert torch.equal(_sorted_rows(x), _sorted_rows(torch.cat([x0, x1])))
    assert rows_one[0][Col.TRAINING_SET_REWARD_MEAN] == rows_two[0][Col.TRAINING_SET_REWARD_MEAN]
    # Results: each round's fidelity agrees within the two runs' sampling errors, with the same verdict.
    for a, b in zip(rows_one[1:], rows_two[1:]):
        fa, fb = float(a[Col.REWARD_FIDELITY]), float(b[Col.REWARD_FIDELITY])
        sa, sb = float(a[stderr(Col.REWARD_FIDELITY)]), float(b[stderr(Col.REWARD_FIDELITY)])
        assert math.isfinite(fa) and math.isfinite(fb)
        assert abs(fa - fb) <= BAND_Z * math.hypot(sa, sb), (a["round"], fa, fb)
        assert band_verdict(fa, sa) == band_verdict(fb, sb)


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in lexicographic order (a batch as a multiset of samples)."""
    order = torch.argsort(x[:, 1], stable=True)
    return x[order][torch.argsort(x[order][:, 0], stable=True)]
