"""The same recipe on two processes as on one: grouped optimizer steps under DDP (CPU, gloo).

``steps_per_batch > 1`` under DDP takes one ``manual_backward`` (one gradient all-reduce) per
optimizer step, and ``batch_size`` is the global batch split over the ranks, so a two-process run
takes the one-process run's optimizer steps on the same samples. Training noise differs (each
rank draws its own), so the results are compared within their sampling errors by the package's
fidelity rule.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from run_configs import read_rows, store_digest, tiny_config, write_config

from lightning_curate.cli import main
from lightning_curate.data.blending import BlendingDataModule
from lightning_curate.data.toy2d import Toy2D
from lightning_curate.loop.verdicts import BAND_Z, band_verdict
from lightning_curate.utils.columns import Col, stderr

TESTS = Path(__file__).parents[1]
DDP = ["--trainer.accelerator=cpu", "--trainer.strategy=ddp", "--trainer.devices=2"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
if sys.platform == "linux":
    ENV.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on the loopback only


def _config(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """The main job's reduced config with grouped steps (3 a batch), recording every step's batch."""
    run = tmp_path / name
    cfg = tiny_config(run, rounds=2, steps_per_batch=3)
    del cfg["trainer"]["limit_train_batches"]  # it would count groups: compare whole epochs
    cfg["trainer"]["callbacks"].append({"class_path": "run_configs.RecordBatches"})
    return run, write_config(tmp_path / f"{name}.yaml", cfg)


def _fit(tmp_path: Path, name: str, *extra: str) -> Path:
    run, path = _config(tmp_path, name)
    # A hang (a missed all-reduce) must fail the test, not stall CI.
    proc = subprocess.run([sys.executable, "-m", "lightning_curate", "fit", "-c", str(path), *extra],
                          env=ENV, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The reduced config on one process and on two (DDP, gloo)."""
    tmp_path = tmp_path_factory.mktemp("ddp_schedule")
    return _fit(tmp_path, "one"), _fit(tmp_path, "two", *DDP)


def _untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "time" not in k and "seconds" not in k} for r in rows]


def test_grouped_steps_on_two_processes_keep_the_one_process_recipe(runs):
    one, two = runs
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


REPO = TESTS.parent
# Every shipped run that groups optimizer steps: the main job and the overlays on it.
GROUPED = [["mog8.yaml"], ["mog8.yaml", "overlays/mog8_real.yaml"], ["mog8.yaml", "overlays/moons.yaml"],
           ["mog8.yaml", "overlays/mog8_adversarial.yaml"]]


def test_every_grouped_config_composes_for_two_processes():
    """The composition and validation path of each shipped grouped-step run with the DDP flags: it parses,
    groups steps, and its global batch splits evenly over two ranks (the one check DDP adds)."""
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml") if "steps_per_batch" in p.read_text()) \
        == ["mog8.yaml"]  # a new grouped base belongs in GROUPED
    for files in GROUPED:
        args = [a for f in files for a in ("-c", str(REPO / "configs" / f))]
        buf = io.StringIO()
        argv, sys.argv = sys.argv, ["lightning-curate"]
        try:
            with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as exit_info:
                main(["fit", *args, *DDP, "--print_config"])
        finally:
            sys.argv = argv
        assert not exit_info.value.code, files
        config = yaml.safe_load(buf.getvalue())
        assert config["trainer"]["strategy"] == "ddp" and str(config["trainer"]["devices"]) == "2", files
        assert config["model"]["init_args"]["steps_per_batch"] > 1, files
        data = config["data"]["init_args"]
        source = Toy2D(**data["source"]["init_args"])
        rank_batch = BlendingDataModule(source, batch_size=data["batch_size"]).rank_batch_size(2)
        assert 2 * rank_batch == data["batch_size"], files


def test_the_main_job_starts_on_two_processes_as_shipped(tmp_path):
    """configs/mog8.yaml itself (grouped steps of 8) on two processes, cut to one epoch a round."""
    overlay = {
        "trainer": {
            "default_root_dir": str(tmp_path / "run"), "limit_train_batches": 1, "enable_progress_bar": False,
            "callbacks": [
                {"class_path": "lightning_curate.loop.RetrainingLoop",
                 "init_args": {"rounds": 1, "epochs_per_round": 1, "initial_epochs": 1, "seed": 0}},
                {"class_path": "lightning_curate.loop.RoundCheckpoint",
                 "init_args": {"dirpath": "${....default_root_dir}/checkpoints", "save_last": True}}],
        },
        "model": {"init_args": {"num_slots": 256}},
        "data": {"init_args": {"source": {"init_args": {"num_train": 2048, "num_heldout": 512}}}},
    }
    small = write_config(tmp_path / "small.yaml", overlay)
    proc = subprocess.run([sys.executable, "-m", "lightning_curate", "fit", "-c", str(REPO / "configs" / "mog8.yaml"),
                           "-c", str(small), *DDP], env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # Each epoch draws 8 global batches of 1,024 (steps_per_epoch), one group of 8 optimizer steps, and
    # limit_train_batches keeps one group: 8 steps in round 0, 8 in round 1.
    assert ckpt["global_step"] == 8 + 8
    assert [int(r["round"]) for r in read_rows(tmp_path / "run")] == [0, 1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_torchrun_nodes_give_the_two_process_rounds(runs, tmp_path):
    """The README's torchrun recipe: two launchers ("nodes") of one process each, rendezvous over c10d on
    127.0.0.1, give the two-process DDP run's rounds, bit for bit (same seeds, same ranks' shards)."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed beside this Python (it ships with torch)")
    run, path = _config(tmp_path, "torchrun")
    port = _free_port()
    cmd = [torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
           "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "lc-test", "--local-addr", "127.0.0.1",
           "-m", "lightning_curate", "fit", "-c", str(path), "--trainer.accelerator=cpu",
           "--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=1"]
    launchers = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(2)]
    try:
        outputs = [launcher.communicate(timeout=420)[0] for launcher in launchers]
    finally:  # a hung rendezvous fails the test, never CI
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    two = runs[1]
    assert _untimed(read_rows(run)) == _untimed(read_rows(two))
    assert store_digest(run) == store_digest(two)  # every round's curated parts, byte for byte
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    reference = torch.load(two / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == reference["global_step"]
    assert all(torch.equal(ckpt["state_dict"][k], reference["state_dict"][k]) for k in reference["state_dict"])
