"""The bring-your-own examples run: from YAML (console script, modules in the working directory) and from Python.

Each YAML run is the shipped config with one round and no figures; the Python run builds the same
objects with its own Trainer, and gives the same rounds, row for row.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SCRIPT = Path(sys.executable).with_name("lightning-curate")
MODULES = ("my_generator", "my_em_learner", "my_reward", "my_data", "train_in_python")


@pytest.fixture
def workdir(tmp_path):
    """A copy of examples/ (no runs), as a user's own folder."""
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("runs", "__pycache__"))
    return work


def tiny_yaml(work: Path, name: str) -> Path:
    """The shipped ``name`` config with one round and no figures."""
    cfg = yaml.safe_load((work / name).read_text())
    loop = cfg["trainer"]["callbacks"][0]
    assert loop["class_path"] == "lightning_curate.RetrainingLoop"
    loop["init_args"].update(rounds=1, plots=False)
    path = work / f"tiny_{name}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "rounds.csv") as fh:
        return list(csv.DictReader(fh))


def run_python(work: Path, learner: str, monkeypatch) -> Path:
    monkeypatch.syspath_prepend(str(work))
    monkeypatch.chdir(work)
    for name in MODULES:  # the copy's modules, not another test's
        monkeypatch.delitem(sys.modules, name, raising=False)
    import train_in_python

    trainer, module, data = train_in_python.build(learner, work / "runs" / f"py_{learner}", rounds=1, plots=False)
    trainer.fit(module, datamodule=data)
    for name in MODULES:
        sys.modules.pop(name, None)
    return work / "runs" / f"py_{learner}"


@pytest.mark.slow
@pytest.mark.parametrize("config, learner, generator", [
    ("gradient.yaml", "gradient", "my_generator.LearnedMixture"),
    ("em.yaml", "em", "my_em_learner.GaussianMixtureEM"),
])
def test_an_example_runs_from_yaml_and_from_python_with_the_same_rounds(workdir, monkeypatch, config, learner,
                                                                         generator):
    assert SCRIPT.is_file(), "the console script is not installed (pip install -e .)"
    shipped = yaml.safe_load((workdir / config).read_text())
    assert shipped["model"]["init_args"]["generator"]["class_path"] == generator
    assert shipped["model"]["init_args"]["reward"]["class_path"] == "my_reward.NearTarget"
    assert shipped["data"]["init_args"]["source"]["class_path"] == "my_data.Blobs"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the modules come from the working directory
    proc = subprocess.run([str(SCRIPT), "fit", "-c", tiny_yaml(workdir, config).name], cwd=workdir,
                          capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_yaml = rows(workdir / shipped["trainer"]["default_root_dir"])
    assert [int(r["round"]) for r in from_yaml] == [0, 1]
    # The data source's class names are the share columns; curation moves mass to the rewarded blob (east).
    assert {"share_east", "share_north", "share_west", "share_south"} <= set(from_yaml[0])
    assert float(from_yaml[1]["share_east"]) > float(from_yaml[0]["share_east"]) + 0.1
    assert float(from_yaml[1]["reward_mean"]) > float(from_yaml[0]["reward_mean"])
    from_python = rows(run_python(workdir, learner, monkeypatch))
    for a, b in zip(from_yaml, from_python):
        for column in ("reward_mean", "curated_reward_mean", "share_east", "sw_distance"):
            assert a[column] == b[column], (column, a[column], b[column])
