"""What the diagnostics share: the progress bar (on a terminal only) and errors as one line, not a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lightning_curate.diagnostics.cli import main as diagnose
from lightning_curate.diagnostics.common import DiagnosticError, progress


def test_the_bar_draws_on_stderr_when_enabled_and_stays_off_a_pipe_by_default(capsys):
    with progress(2, "refits", "refit", enabled=True) as bar:
        bar.update(2)
    err = capsys.readouterr().err
    assert "refits:" in err and "0/2" in err and "refit/s" in err  # drawn at the start; cleared at the end
    with progress(2, "refits", "refit") as bar:  # pytest's captured stderr is not a terminal
        assert bar.disable
        bar.update(2)
    assert capsys.readouterr().err == ""


def test_a_diagnostic_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    assert diagnose(["solver", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: run directory {tmp_path}: no config.yaml (is it a lightning-curate run?)\n"
    monkeypatch.setenv("LIGHTNING_CURATE_DEBUG", "1")
    with pytest.raises(DiagnosticError, match="no config.yaml"):
        diagnose(["solver", str(tmp_path)])


def test_every_diagnostic_has_help_and_an_unknown_one_is_a_usage_error(capsys):
    for name in ("jitter", "budget", "solver"):
        with pytest.raises(SystemExit) as err:
            diagnose([name, "--help"])
        assert err.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: lightning-curate diagnose {name}") and "``" not in out
    with pytest.raises(SystemExit) as err:
        diagnose(["nonsense"])
    assert err.value.code == 2 and "invalid choice: 'nonsense'" in capsys.readouterr().err


def test_the_subpackage_ships_with_the_package():
    """A regular (non-editable) install takes only the packages pyproject.toml lists."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    packages = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M)
    assert packages and '"lightning_curate.diagnostics"' in packages.group(1)
    assert 'lightning-curate = "lightning_curate.cli:main"' in text  # the console script that dispatches diagnose
