"""scripts/reproduce.py: it imports the package's sweep API, and its checks read the aggregated rows right."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_script", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def rows_of(point, rewards):
    return [{"point": point, "seed": 0, "round": t, "reward_mean": r} for t, r in enumerate(rewards)]


def test_reward_check_passes_fails_and_counts_rounds(reproduce):
    result = reproduce.ClaimResult("x", "title")
    assert reproduce.check_reward_rises(result, rows_of("a", [0.0, 0.5, 1.0]), "a", 2, "rho=0: ") == [0, 1, 2]
    assert reproduce.check_reward_rises(result, rows_of("a", [1.0, 0.5, 0.0]), "a", 2) == [0, 1, 2]
    assert reproduce.check_reward_rises(result, rows_of("a", [0.0, 1.0]), "a", 2) is None
    assert [(c.what, c.passed, c.numbers) for c in result.checks] == [
        ("rho=0: the reward rises (round 0 -> 2)", True, "0.000 -> 1.000"),
        ("the reward rises (round 0 -> 2)", False, "1.000 -> 0.000"),
        ("every round ran", False, "2/3 rounds"),
    ]


def test_unknown_claim_is_a_usage_error(reproduce, capsys):
    with pytest.raises(SystemExit) as exc:
        reproduce.main(["--only", "nonsense"])
    assert exc.value.code == 2
    assert "unknown claim(s) ['nonsense']" in capsys.readouterr().err


def test_record_writes_every_checks_verdict_and_the_command(reproduce, tmp_path, monkeypatch):
    from lightning_curate.experiments.records import read_record

    def fake_claim(args, out):
        result = reproduce.ClaimResult("discrete", "The exact learner")
        reproduce.check(result, "the reward rises", True, "0.1 -> 0.9")
        result.checks.append(reproduce.Check("discrete", "configs present", None, "SKIPPED"))
        result.command = "lightning-curate-sweep --config configs/discrete.yaml"
        return result

    monkeypatch.setattr(reproduce, "claim_discrete", fake_claim)
    monkeypatch.chdir(tmp_path)  # main moves to the repository; this puts the test's folder back after
    argv = ["--only", "discrete", "--quick", "--out", str(tmp_path / "out"), "--record", str(tmp_path / "rec")]
    assert reproduce.main(argv) == 0
    record = read_record(tmp_path / "rec" / "reproduce_quick_discrete.json")
    assert record["command"] == "python scripts/reproduce.py " + " ".join(argv)
    figures = record["figures"]
    assert figures["quick"] is True and figures["seeds"] == [0]
    assert figures["claims"]["discrete"]["checks"] == [
        {"check": "the reward rises", "passed": True, "numbers": "0.1 -> 0.9"},
        {"check": "configs present", "passed": None, "numbers": "SKIPPED"}]
    assert figures["claims"]["discrete"]["command"] == "lightning-curate-sweep --config configs/discrete.yaml"
    assert (tmp_path / "out" / "REPORT.md").is_file()
