"""The sweep runner: grid specs, config merging, and a 2x2 grid of tiny runs through the console script,
resumed and skipped, then aggregated into one table and figures."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
import yaml

from lightning_curate.cli import main as cli_main
from lightning_curate.experiments import runner, sweep
from lightning_curate.experiments.sweep import SweepError, parse_grid_spec, parse_seeds, plan_sweep, run_sweep, set_key

REPO = Path(__file__).resolve().parents[2]


def tiny_base(rounds: int = 2) -> dict:
    """configs/discrete.yaml made tiny: 1,000 slots, 2 rounds, no plots."""
    cfg = yaml.safe_load((REPO / "configs" / "discrete.yaml").read_text())
    cfg["trainer"]["callbacks"][0]["init_args"].update(rounds=rounds, plots=False)
    cfg["model"]["init_args"].update(num_slots=1000, preview_size=500)
    cfg["data"]["init_args"]["source"]["init_args"].update(num_train=2000, num_heldout=500)
    return cfg


# --------------------------------------------------------------------------- #
# specs
# --------------------------------------------------------------------------- #


def test_grid_specs():
    assert parse_grid_spec("data.init_args.real_fraction=0,0.5") == ("data.init_args.real_fraction", [0, 0.5])
    assert parse_grid_spec("model.reward.init_args.rewards=[1, 0],[0, 1]") == (
        "model.reward.init_args.rewards", [[1, 0], [0, 1]])
    assert parse_grid_spec("model.mode=softmax,argmax")[1] == ["softmax", "argmax"]
    for bad, match in (("real_fraction", "KEY=VALUE1"), ("a.b=", "empty value"), ("a.b=1,,2", "empty value"),
                       ("=1,2", "bad key"), ("a..b=1", "bad key"), ("a.b=1,1", "twice")):
        with pytest.raises(SweepError, match=match):
            parse_grid_spec(bad)
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("3-5") == [3, 4, 5] and parse_seeds([7]) == [7]
    for bad in ("0,x", "1,1", "", "5-3", [0.5]):
        with pytest.raises(SweepError):
            parse_seeds(bad)


def test_keys_resolve_with_shorthands():
    cfg = tiny_base()
    set_key(cfg, "data.init_args.real_fraction", 0.5)
    set_key(cfg, "model.num_candidates", 2)  # init_args may be left out
    set_key(cfg, "model.chunk_size", 1024)  # an argument the base leaves at its default
    set_key(cfg, "loop.rounds", 7)  # the RetrainingLoop callback
    set_key(cfg, "trainer.callbacks.1.init_args.save_top_k", 0)  # list index
    assert cfg["data"]["init_args"]["real_fraction"] == 0.5
    assert cfg["model"]["init_args"]["num_candidates"] == 2 and cfg["model"]["init_args"]["chunk_size"] == 1024
    assert cfg["trainer"]["callbacks"][0]["init_args"]["rounds"] == 7
    assert cfg["trainer"]["callbacks"][1]["init_args"]["save_top_k"] == 0
    with pytest.raises(SweepError, match="no section 'dta'"):
        set_key(cfg, "dta.real_fraction", 1)
    with pytest.raises(SweepError, match="out of range"):
        set_key(cfg, "trainer.callbacks.9.init_args.x", 1)
    with pytest.raises(SweepError, match="is a list"):
        set_key(cfg, "trainer.callbacks.first.x", 1)


def test_plan_merges_values_and_seeds_and_isolates_directories(tmp_path):
    base = tiny_base()
    base["trainer"]["callbacks"][1]["init_args"]["dirpath"] = "checkpoints"  # a fixed path would be shared
    specs = plan_sweep(base, {"data.real_fraction": [0, 0.5], "model.num_candidates": [2, 4]}, [0, 1],
                       tmp_path / "out", fixed={"loop.rounds": 3})
    assert len(specs) == 8 and len({s.run_dir for s in specs}) == 8
    spec = specs[-1]
    assert spec.point == "real_fraction=0.5__num_candidates=4" and spec.seed == 1 and spec.rounds == 3
    assert spec.run_dir == (tmp_path / "out" / spec.point / "seed=1").absolute()
    cfg = spec.config
    assert cfg["seed_everything"] == 1 and cfg["data"]["init_args"]["seed"] == 1
    assert cfg["trainer"]["callbacks"][0]["init_args"]["seed"] == 1
    assert cfg["trainer"]["default_root_dir"] == str(spec.run_dir)
    assert cfg["trainer"]["callbacks"][1]["init_args"]["dirpath"] == str(spec.run_dir / "checkpoints")
    assert base["trainer"]["callbacks"][0]["init_args"]["seed"] == 0  # the base is left alone
    no_loop = tiny_base()
    no_loop["trainer"]["callbacks"] = no_loop["trainer"]["callbacks"][1:]
    with pytest.raises(SweepError, match="RetrainingLoop"):
        plan_sweep(no_loop, {}, [0], tmp_path)


def test_console_errors_are_clear(tmp_path, capsys):
    assert sweep.main(["--grid", "data.real_fraction=0,0.5"]) == 2
    assert "no base config" in capsys.readouterr().err
    assert sweep.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_base()))
    assert sweep.main(["--config", str(base), "--grid", "real_fraction"]) == 2
    assert "expected KEY=VALUE1,VALUE2" in capsys.readouterr().err
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text(yaml.safe_dump({"base": str(base), "grid": {"data.real_fraction": 0.5}}))
    assert sweep.main([str(bad_file)]) == 2
    assert "must list its values" in capsys.readouterr().err
    not_yaml = tmp_path / "not_yaml.yaml"
    not_yaml.write_text("base: [unclosed\n")
    assert sweep.main([str(not_yaml)]) == 2
    assert f"sweep file {str(not_yaml)!r} is not valid YAML" in capsys.readouterr().err
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- 1\n- 2\n")
    assert sweep.main(["--config", str(a_list)]) == 2
    assert f"base config {str(a_list)!r} must be a YAML mapping (a LightningCLI config)" in capsys.readouterr().err
    assert sweep.main(["--config", str(base), "--set", "loop.rounds"]) == 2
    assert "bad --set 'loop.rounds': expected KEY=VALUE" in capsys.readouterr().err
    assert sweep.main(["--config", str(base), "--jobs", "0"]) == 2
    assert "--jobs must be an int >= 1, got 0" in capsys.readouterr().err


def test_a_failing_run_is_reported(tmp_path):
    specs = plan_sweep(tiny_base(), {}, [0], tmp_path / "out")
    lines = []
    (result,) = run_sweep(specs, python="/bin/false", say=lines.append)
    assert result.status == "failed" and result.returncode == 1
    assert any("FAILED" in line and "sweep.log" in line for line in lines)


# --------------------------------------------------------------------------- #
# a real sweep
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_two_by_two_sweep_resumes_skips_and_aggregates(tmp_path, monkeypatch):
    base_cfg = tiny_base(rounds=2)
    grid = {"data.init_args.real_fraction": [0, 0.5], "model.init_args.num_candidates": [2, 4]}
    out = tmp_path / "sweep"
    specs = plan_sweep(base_cfg, grid, [0], out)
    assert len(specs) == 4

    # One point was interrupted: it finished round 0 and round 1 only (in-process, like a crash).
    partial = specs[3]
    cfg = yaml.safe_load(yaml.safe_dump(partial.config))
    cfg["trainer"]["callbacks"][0]["init_args"]["rounds"] = 1
    partial.run_dir.mkdir(parents=True)
    (tmp_path / "partial.yaml").write_text(yaml.safe_dump(cfg))
    cli_main(["fit", "-c", str(tmp_path / "partial.yaml")])
    assert sweep.run_status(partial) == "resumable"
    first_round = (partial.run_dir / "rounds" / "round_000" / "manifest.json").stat().st_mtime_ns

    launched = []
    real_popen = subprocess.Popen

    def counting_popen(cmd, *args, **kwargs):
        launched.append(cmd)
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", counting_popen)
    lines = []
    results = run_sweep(specs, jobs=2, timeout=300, say=lines.append)
    assert [r.status for r in results] == ["fresh", "fresh", "fresh", "resumed"], "\n".join(lines)
    assert len(launched) == 4
    resumed_cmd = next(c for c in launched if str(partial.run_dir) in " ".join(c))
    assert resumed_cmd[-2:] == ["--ckpt_path", "last"] and resumed_cmd[1:4] == ["-m", "lightning_curate", "fit"]
    assert any("resuming from" in line for line in lines)
    assert (partial.run_dir / "rounds" / "round_000" / "manifest.json").stat().st_mtime_ns == first_round
    for spec in specs:
        assert sweep.run_status(spec) == "finished"
        assert (spec.run_dir / "sweep_config.yaml").is_file()

    # Run again: every point is finished, nothing is launched, nothing is rewritten.
    tables = {s.run_dir: (s.run_dir / "rounds.csv").stat().st_mtime_ns for s in specs}
    launched.clear()
    again = run_sweep(specs, jobs=2, say=lines.append)
    assert [r.status for r in again] == ["skipped"] * 4 and launched == []
    assert {s.run_dir: (s.run_dir / "rounds.csv").stat().st_mtime_ns for s in specs} == tables

    # The aggregate: one row per point x seed x round, and a figure per metric.
    table, figures = sweep.finish(specs, out, metrics=["reward_mean", "share_class0"], say=lines.append)
    with open(table) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 3
    assert list(rows[0])[:5] == ["point", "data.init_args.real_fraction", "model.init_args.num_candidates",
                                 "seed", "round"]
    assert {(r["data.init_args.real_fraction"], r["model.init_args.num_candidates"]) for r in rows} == {
        ("0", "2"), ("0", "4"), ("0.5", "2"), ("0.5", "4")}
    for r in rows:
        if r["round"] != "0":
            assert float(r["real_fraction"]) == float(r["data.init_args.real_fraction"])
    # More candidates, more curation: class 0 gains more with K = 4 than with K = 2.
    final = {(r["data.init_args.real_fraction"], r["model.init_args.num_candidates"]): float(r["share_class0"])
             for r in rows if r["round"] == "2"}
    assert final[("0", "4")] > final[("0", "2")] > 0.1
    assert sorted(p.name for p in figures) == ["reward_mean.png", "share_class0.png"]
    for p in figures:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The learner's fidelity over seeds: printed per point and written beside sweep.csv, matching the rows.
    assert any(line.startswith("reward fidelity over seeds") for line in lines)
    with open(out / "fidelity.csv") as fh:
        fidelity = list(csv.DictReader(fh))
    for r in rows:
        ratio = r["reward_fidelity"]
        if r["round"] != "0" and ratio not in ("", "nan"):
            (cell,) = [f for f in fidelity if f["point"] == r["point"] and f["key"] == "reward_fidelity"
                       and f["round"] == r["round"]]
            assert (cell["n"], float(cell["mean"])) == ("1", pytest.approx(float(ratio)))  # one seed: its own ratio

    # The console script reads a sweep file; --dry-run and --aggregate-only run nothing.
    sweep_file = tmp_path / "sweep.yaml"
    base_path = tmp_path / "base.yaml"
    base_path.write_text(yaml.safe_dump(base_cfg))
    sweep_file.write_text(yaml.safe_dump({"base": str(base_path), "grid": grid, "seeds": [0], "out": str(out),
                                          "metrics": ["reward_mean"]}))
    launched.clear()
    assert sweep.main([str(sweep_file), "--dry-run"]) == 0
    assert sweep.main([str(sweep_file), "--aggregate-only"]) == 0
    assert sweep.main([str(sweep_file)]) == 0  # all finished: skipped
    assert launched == []
