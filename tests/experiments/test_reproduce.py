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


# --------------------------------------------------------------------------- #
# the field's reproductions (their rows are tested in tests/e2e/test_field_*.py)
# --------------------------------------------------------------------------- #


def test_field_runs_only_when_asked_and_names_its_record(reproduce, tmp_path, monkeypatch):
    from lightning_curate.experiments.records import read_record

    ran = []

    def fake(name):
        def claim(args, out, *rest):
            ran.append(name)
            result = reproduce.ClaimResult(name, name)
            reproduce.check(result, "x", True, "1")
            return result
        return claim

    for name in ("mog8", "discrete", "population"):
        monkeypatch.setattr(reproduce, f"claim_{name}", fake(name))
    monkeypatch.setattr(reproduce, "claim_digits", lambda args, out, name: fake(name)(args, out))
    monkeypatch.setattr(reproduce, "claim_field", lambda args, out, name: fake(name)(args, out))
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["--quick", "--out", str(tmp_path / "all")]) == 0
    assert ran == list(reproduce.CLAIMS)  # the default run: the paper's claims, not the field's
    ran.clear()
    argv = ["--only", "field", "--quick", "--out", str(tmp_path / "f"), "--record", str(tmp_path / "rec")]
    assert reproduce.main(argv) == 0
    assert ran == list(reproduce.FIELD_CLAIMS)  # `field` names all four
    claims = read_record(tmp_path / "rec" / "reproduce_quick_field.json")["figures"]["claims"]
    assert list(claims) == list(reproduce.FIELD_CLAIMS)
    assert claims["two_rewards"]["checks"] == [{"check": "x", "passed": True, "numbers": "1"}]
    ran.clear()
    argv = ["--only", "two_rewards", "--out", str(tmp_path / "one"), "--record", str(tmp_path / "rec")]
    assert reproduce.main(argv) == 0 and ran == ["two_rewards"]
    assert (tmp_path / "rec" / "reproduce_two_rewards.json").is_file()


def test_a_field_claims_rows_become_the_reports_checks(reproduce, tmp_path, monkeypatch):
    """claim_field turns a reproduction's rows into checks, INFO rows decide nothing, and --seeds reaches it."""
    import argparse

    from lightning_curate.experiments.field_common import FieldResult

    seen = {}

    def fake(out, *, quick, seeds):
        seen.update(out=out, quick=quick, seeds=seeds)
        res = FieldResult("two_rewards", "t", "the paper", "the setting", figures=[out / "f.png"])
        res.add("claim", True, "1")
        res.add("report", None, "2")
        return res

    monkeypatch.setattr(reproduce, "field_reproductions", lambda: {"two_rewards": fake})
    args = argparse.Namespace(quick=True, field_seeds=[3, 4])
    result = reproduce.claim_field(args, tmp_path, "two_rewards")
    assert seen == {"out": tmp_path, "quick": True, "seeds": [3, 4]}
    assert [(c.what, c.passed, c.numbers) for c in result.checks] == [("claim", True, "1"), ("report", None, "2")]
    assert [reproduce.verdict_of(c) for c in result.checks] == ["PASS", "INFO"]
    assert result.note == "the paper; the setting" and result.figures == [tmp_path / "f.png"]
