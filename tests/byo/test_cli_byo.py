"""Bringing your own code to the console script: found in the working directory, blamed at fit start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from run_configs import tiny_config, tree_digest, write_config

from lightning_curate.cli import main

SCRIPT = Path(sys.executable).with_name("lightning-curate")

EXTRA_AXIS = '''
import torch
from torch import nn
from lightning_curate import Generator


class ExtraAxis(Generator):
    """Samples [n, 1, 2] where data_shape says [n, 2]."""

    def __init__(self):
        super().__init__()
        self.data_shape = (2,)
        self.mean = nn.Parameter(torch.zeros(2))

    def loss(self, x):
        return ((x - self.mean) ** 2).sum(1).mean()

    def sample(self, n, *, generator=None, device=None):
        return torch.randn(n, 1, 2, generator=generator).to(device or "cpu")
'''


def test_a_wrong_shape_from_a_generator_in_the_working_directory_is_named_and_nothing_is_written(tmp_path):
    """Issue 23: a generator returning [n, 1, 2] used to be reported as the reward's fault, after round 0's
    training. The console script imports it from the working directory, and the fit-start check names it."""
    assert SCRIPT.is_file(), "the console script is not installed (pip install -e .)"
    (tmp_path / "mygen.py").write_text(EXTRA_AXIS)
    run = tmp_path / "run"
    cfg = tiny_config(run, rounds=1)
    cfg["model"]["init_args"]["generator"] = {"class_path": "mygen.ExtraAxis"}
    write_config(tmp_path / "cfg.yaml", cfg)
    run.mkdir()
    (run / "config.yaml").write_text("an earlier run's config\n")
    (run / "rounds.csv").write_text("round\n")
    before = tree_digest(run)
    proc = subprocess.run([str(SCRIPT), "fit", "-c", "cfg.yaml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last == ("error: generator ExtraAxis: sample(8, generator=..., device='cpu') returned shape [8, 1, 2]; "
                    "expected [8, 2] ([n, *data_shape] with data_shape (2,))")
    assert "Traceback" not in proc.stderr and "reward" not in proc.stderr
    assert tree_digest(run) == before  # config.yaml and rounds.csv untouched, nothing added (the lock is gone)


def test_an_unknown_class_path_is_one_line_without_the_usage(tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path / "run", rounds=1)
    cfg["model"]["init_args"]["generator"] = {"class_path": "nowhere_to_be_found.MyGenerator"}
    monkeypatch.setattr(sys, "path", list(sys.path))  # main() adds the working directory
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: model.generator: cannot use class_path 'nowhere_to_be_found.MyGenerator': No module "
                   "named 'nowhere_to_be_found' (a class of your own must be importable: run from the folder that "
                   "holds its module, or add that folder to PYTHONPATH)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, entry, expected", [
    ("callbacks", {"class_path": "mycb.Thing"}, "error: trainer.callbacks: cannot use class_path 'mycb.Thing': No "
                                                 "module named 'mycb' (a class of your own must be importable"),
    ("source", {"class_path": "lightning_curate.data.Toy2DX"},
     "error: data.source: cannot use class_path 'lightning_curate.data.Toy2DX': module 'lightning_curate.data' has "
     "no attribute 'Toy2DX' (no class of that name in the module: check its spelling)"),
])
def test_a_bad_class_path_anywhere_is_named_by_its_key(tmp_path, monkeypatch, capsys, section, entry, expected):
    cfg = tiny_config(tmp_path / "run", rounds=1)
    if section == "callbacks":
        cfg["trainer"]["callbacks"].append(entry)
    else:
        cfg["data"]["init_args"]["source"] = entry
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(write_config(tmp_path / "cfg.yaml", cfg))])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(expected), err


def test_a_bad_option_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--no_such_option", "1"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: unrecognized arguments: --no_such_option 1"]


def test_the_console_script_puts_the_working_directory_on_the_path(tmp_path, monkeypatch):
    from lightning_curate import cli

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    cli._import_from_cwd()
    assert sys.path[0] == str(tmp_path)
    cli._import_from_cwd()  # once only
    assert sys.path.count(str(tmp_path)) == 1
