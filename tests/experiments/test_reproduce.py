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
# the field: "Collapse or Thrive?" rows
# --------------------------------------------------------------------------- #


def tiny_setting(reproduce):
    return reproduce.FieldSetting(rounds=16, seeds=[0, 1, 2], n={"discrete": 8, "gaussian": 20, "kde": 20},
                                  heldout=64)


def test_field_rows_run_on_the_package_path_and_pass_in_a_tiny_setting(reproduce, tmp_path):
    """The nine rows (three learners x three workflows' claims) run end to end and, at these fixed seeds, pass:
    small sample sizes make replace collapse within 16 rounds (at 12 rounds, seed noise puts
    KDE accumulate-subsample below accumulate: the order needs rounds or seeds)."""
    import argparse

    result = reproduce.claim_field(argparse.Namespace(), tmp_path, tiny_setting(reproduce))
    assert [c.what.split(":")[0] for c in result.checks] == [
        f"{learner}, {claim}" for learner in ("discrete", "gaussian", "kde")
        for claim in ("replace collapses", "accumulate stays stable", "accumulate-subsample degrades slowly")]
    assert all("[paper: (" in c.what for c in result.checks)
    assert [c.passed for c in result.checks] == [True] * 9, [(c.what, c.numbers) for c in result.checks]
    assert "arXiv:2410.16713" in result.note
    assert result.figures == [tmp_path / "collapse_or_thrive.png"] and result.figures[0].stat().st_size > 0


def test_field_run_starts_from_the_real_data_and_replace_fixes_on_one_atom(reproduce):
    """Round 0 fits the real atoms in exact proportions (full entropy, nothing lost); under replace with 8 samples
    a round the chain is absorbed (entropy 0) and stays there."""
    setting = reproduce.FieldSetting(rounds=40, seeds=[0], n={"discrete": 8, "gaussian": 20, "kde": 20})
    run = reproduce.field_run("discrete", "replace", setting, seed=0)
    assert run["degradation"][0] == 0.0 and run["variance"][0] == pytest.approx(1.0)
    fixed = run["degradation"].index(1.0)
    assert all(d == 1.0 for d in run["degradation"][fixed:])
    gaussian = reproduce.field_run("gaussian", "accumulate", setting, seed=0)
    assert gaussian["degradation"][0] == 0.0  # the excess NLL is measured against round 0's model
    assert sum(d == d for d in gaussian["degradation"]) == 11  # read at 0, 4, ..., 40 (and 20): nan elsewhere


def synthetic_measurement(reproduce, setting, final, half):
    """Hand-made runs: every seed's degradation is ``half[policy]`` at round T/2 and ``final[policy]`` at T."""
    def run(policy):
        degradation = [0.0] * (setting.rounds + 1)
        degradation[setting.rounds // 2], degradation[setting.rounds] = half[policy], final[policy]
        return {"degradation": degradation, "variance": [1.0] * (setting.rounds + 1)}
    return {learner: {pol: [run(pol) for _ in setting.seeds] for pol in reproduce.COT_POLICIES}
            for learner in reproduce.COT_LEARNERS}


def test_field_checks_pass_the_claims_and_fail_their_negations(reproduce):
    setting = tiny_setting(reproduce)
    holds = synthetic_measurement(reproduce, setting,
                                  final={"replace": 0.9, "accumulate": 0.06, "accumulate_subsample": 0.2},
                                  half={"replace": 0.5, "accumulate": 0.05, "accumulate_subsample": 0.1})
    result = reproduce.ClaimResult("field", "t")
    reproduce.field_checks(result, holds, setting)
    assert [c.passed for c in result.checks] == [True] * 9
    # replace does not collapse (0.2 < 0.25 and < 0.5), accumulate keeps rising (+0.3 > 0.05),
    # subsampling degrades faster than replace: every claim must FAIL.
    broken = synthetic_measurement(reproduce, setting,
                                   final={"replace": 0.2, "accumulate": 0.4, "accumulate_subsample": 0.3},
                                   half={"replace": 0.1, "accumulate": 0.1, "accumulate_subsample": 0.1})
    result = reproduce.ClaimResult("field", "t")
    reproduce.field_checks(result, broken, setting)
    assert [c.passed for c in result.checks] == [False] * 9
    assert result.checks[1].numbers.startswith("rise 0.300;")
    # on the bound: a rise of exactly stable_rise passes, subsample equal to accumulate passes, equal to replace fails
    edge = synthetic_measurement(reproduce, setting,
                                 final={"replace": 0.5, "accumulate": 0.15, "accumulate_subsample": 0.5},
                                 half={"replace": 0.0, "accumulate": 0.1, "accumulate_subsample": 0.0})
    result = reproduce.ClaimResult("field", "t")
    reproduce.field_checks(result, edge, setting)
    assert [c.passed for c in result.checks[:3]] == [True, True, False]


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

    for name in ("mog8", "discrete", "population", "field"):
        monkeypatch.setattr(reproduce, f"claim_{name}", fake(name))
    monkeypatch.setattr(reproduce, "claim_digits", lambda args, out, name: fake(name)(args, out))
    monkeypatch.chdir(tmp_path)
    assert reproduce.main(["--quick", "--out", str(tmp_path / "all")]) == 0
    assert ran == list(reproduce.CLAIMS)  # the default run: the paper's claims, not the field's
    ran.clear()
    argv = ["--only", "field", "--quick", "--out", str(tmp_path / "f"), "--record", str(tmp_path / "rec")]
    assert reproduce.main(argv) == 0
    assert ran == ["field"]
    assert read_record(tmp_path / "rec" / "reproduce_quick_field.json")["figures"]["claims"]["field"]["checks"] == [
        {"check": "x", "passed": True, "numbers": "1"}]
