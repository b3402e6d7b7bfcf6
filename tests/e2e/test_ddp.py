"""Distributed rounds: DDP on CPU (gloo) through the console script, and rank splitting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from run_configs import read_rows, tiny_config, write_config

from lightning_curate.loop.curation_module import CurationModule
from lightning_curate.models.flow_matching import FlowMatching
from lightning_curate.models.mlp import MLPVelocity
from lightning_curate.rewards.geometric import ClippedDistanceReward
from lightning_curate.store.rounds import RoundStore


def test_ddp_two_processes_on_cpu_write_one_consistent_round_per_round(tmp_path):
    run = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(run, rounds=2, num_slots=1100))
    cmd = [sys.executable, "-m", "lightning_curate", "fit", "-c", str(cfg), "--trainer.accelerator=cpu",
           "--trainer.strategy=ddp", "--trainer.devices=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A hang (e.g. a missed barrier) must fail the test, not stall CI.
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = RoundStore(run / "rounds")
    assert store.rounds() == [0, 1, 2]
    for t in store.rounds():
        record = store.read(t)
        # Every slot curated exactly once across the two ranks, in slot order.
        assert torch.equal(record.tensors["slot"], torch.arange(1100))
        assert record.manifest["world_size"] == 2
        assert {name.split("_")[1] for name in record.manifest["parts"] if name.startswith("part_")} == {"000", "001"}
        assert "preview_000.pt" in record.manifest["parts"]  # the preview slots sit in block 0, on rank 0
    rows = read_rows(run)
    assert [int(r["round"]) for r in rows] == [0, 1, 2]
    assert int(rows[1]["n_synthetic"]) == 1100


def test_a_round_split_over_ranks_equals_the_single_process_round():
    torch.manual_seed(0)
    module = CurationModule(FlowMatching(MLPVelocity(2, 32, 2), [2], steps=4, ema_decay=0.0),
                            ClippedDistanceReward(dataset="mog8", targets=[0]), num_slots=1300,
                            num_candidates=3, preview_size=700, chunk_size=600)
    whole = module.curate_round(0, seed=5)
    rank_parts = [module.curate_round(0, seed=5, rank=r, world_size=2).tensors for r in range(2)]
    merged_slots = torch.cat([p["slot"] for p in rank_parts])
    order = torch.sort(merged_slots, stable=True).indices
    for key in ("x", "rewards", "slot"):
        assert torch.equal(torch.cat([p[key] for p in rank_parts])[order], whole.tensors[key]), key
    preview_order = torch.sort(torch.cat([p["preview_slot"] for p in rank_parts])).indices
    assert torch.equal(torch.cat([p["preview"] for p in rank_parts])[preview_order], whole.tensors["preview"])


def test_ddp_resume_after_a_crash_matches_the_uninterrupted_ddp_run(tmp_path):
    """Resume works under DDP as on one process: same rounds, same table."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    ddp = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]

    def fit(config: dict, name: str, *extra: str) -> subprocess.CompletedProcess:
        cfg = write_config(tmp_path / f"{name}.yaml", config)
        return subprocess.run([sys.executable, "-m", "lightning_curate", "fit", "-c", str(cfg), *ddp, *extra],
                              env=env, capture_output=True, text=True, timeout=420)

    ref, crash = tmp_path / "ref", tmp_path / "crash"
    assert fit(tiny_config(ref, rounds=2), "ref").returncode == 0
    crashing = tiny_config(crash, rounds=2)
    crashing["trainer"]["callbacks"].append({"class_path": "run_configs.CrashAtEpoch", "init_args": {"epoch": 6}})
    assert fit(crashing, "crash").returncode != 0
    assert RoundStore(crash / "rounds").rounds() == [0, 1]
    resumed = fit(tiny_config(crash, rounds=2), "resume", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for t in (0, 1, 2):
        assert RoundStore(crash / "rounds").read_manifest(t)["parts"] == \
            RoundStore(ref / "rounds").read_manifest(t)["parts"]
    assert read_rows(crash) == read_rows(ref)
