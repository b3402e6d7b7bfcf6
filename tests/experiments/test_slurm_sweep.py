"""``lightning-curate-sweep --launcher submitit``: the grid as one array job, run here by submitit's
local executor (the same array, one process a task), then aggregated once every run has ended."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from lightning_curate.experiments import sweep

submitit = pytest.importorskip("submitit", reason="the slurm extra (submitit) is in the test extra")

REPO = Path(__file__).resolve().parents[2]


def _base(tmp_path: Path) -> Path:
    """configs/discrete.yaml made tiny: 1,000 slots, 1 round, no plots."""
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"].update(rounds=1, plots=False)
    cfg["model"]["init_args"].update(num_slots=1000, preview_size=500)
    cfg["data"]["init_args"]["source"]["init_args"].update(num_train=2000, num_heldout=500)
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(_base(tmp_path)), "--grid", "model.init_args.num_candidates=2,4", "--seeds", "0",
            "--out", str(tmp_path / "out"), "--no-figures", "--timeout", "300", "--launcher", "submitit", *extra]


def test_a_sweep_runs_as_one_array_through_submitits_local_executor(tmp_path, capsys):
    out = tmp_path / "out"
    assert sweep.main(_args(tmp_path, "--submitit-cluster", "local")) == 0
    printed = capsys.readouterr().out
    assert "submitted 2 runs as one local array job" in printed and "runs: 2 fresh" in printed
    _, settings, specs = sweep.configure(_args(tmp_path, "--submitit-cluster", "local"))
    assert all(sweep.run_status(s) == "finished" for s in specs)
    # Each task ran in its own submitit job and handed its result back.
    assert len(list((out / "submitit").glob("*_result.pkl"))) == 2
    # sweep.csv and fidelity.csv are written once, after every run's last round.
    last_round = max((s.run_dir / "rounds.csv").stat().st_mtime_ns for s in specs)
    for name in ("sweep.csv", "fidelity.csv"):
        assert (out / name).stat().st_mtime_ns >= last_round, name
    with open(out / "sweep.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["model.init_args.num_candidates"], r["round"]) for r in rows) == [
        ("2", "0"), ("2", "1"), ("4", "0"), ("4", "1")]
    # A second submission finds every run finished: each task skips its run, nothing is retrained.
    tables = {s.run_dir: (s.run_dir / "rounds.csv").stat().st_mtime_ns for s in specs}
    assert sweep.main(_args(tmp_path, "--submitit-cluster", "local")) == 0
    assert "runs: 2 skipped" in capsys.readouterr().out
    assert {s.run_dir: (s.run_dir / "rounds.csv").stat().st_mtime_ns for s in specs} == tables


def test_the_cluster_options_reach_submitit(tmp_path):
    _, settings, _ = sweep.configure(_args(tmp_path, "--slurm-partition", "gpu", "--slurm-time", "90",
                                           "--slurm-cpus", "4", "--slurm-gpus", "1", "--slurm-mem", "16",
                                           "--jobs", "8", "--submitit-folder", str(tmp_path / "logs")))
    options = settings["slurm"]
    assert options.folder == tmp_path / "logs" and options.cluster == "slurm"
    assert options.parameters() == {"timeout_min": 90, "name": "lightning-curate-sweep", "cpus_per_task": 4,
                                    "gpus_per_node": 1, "mem_gb": 16.0, "slurm_partition": "gpu",
                                    "slurm_array_parallelism": 8}
    _, local, _ = sweep.configure(_args(tmp_path))  # without --launcher submitit flags: defaults
    assert local["slurm"].folder == tmp_path / "out" / "submitit"
    assert local["slurm"].parameters() == {"timeout_min": 60, "name": "lightning-curate-sweep"}
    _, pool, _ = sweep.configure(_args(tmp_path)[:-2])  # the local pool stays the default
    assert "slurm" not in pool


def test_bad_cluster_options_are_one_line_errors(tmp_path, capsys):
    assert sweep.main(_args(tmp_path, "--slurm-time", "0")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--slurm-time" in err[0]
    assert sweep.main(_args(tmp_path, "--slurm-mem", "-1")) == 2
    assert "--slurm-mem must be a positive number of GB" in capsys.readouterr().err


def test_without_submitit_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    assert sweep.main(_args(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lightning-curate-sweep: error: --launcher submitit needs the submitit package: "
                   "pip install 'lightning_curate[slurm]'"]
    assert not (tmp_path / "out").exists()  # refused before anything ran or was written
