"""The "Collapse or Thrive?" reproduction (lightning_curate.experiments.field_collapse): its rows run on the
package's path and pass in a tiny setting, and its checks pass the claims and fail their negations."""

from __future__ import annotations

import pytest

from lightning_curate.experiments.field_collapse import (
    COT_LEARNERS,
    COT_POLICIES,
    FieldSetting,
    collapse_or_thrive,
    field_checks,
    field_run,
)
from lightning_curate.experiments.field_common import FieldResult


def tiny_setting():
    return FieldSetting(rounds=16, seeds=[0, 1, 2], n={"discrete": 8, "gaussian": 20, "kde": 20},
                                  heldout=64)


def test_field_rows_run_on_the_package_path_and_pass_in_a_tiny_setting(tmp_path):
    """The nine rows (three learners x three workflows' claims) run end to end and, at these fixed seeds, pass:
    small sample sizes make replace collapse within 16 rounds (at 12 rounds, seed noise puts
    KDE accumulate-subsample below accumulate: the order needs rounds or seeds)."""
    result = collapse_or_thrive(tmp_path, setting=tiny_setting())
    assert [c.what.split(":")[0] for c in result.rows] == [
        f"{learner}, {claim}" for learner in ("discrete", "gaussian", "kde")
        for claim in ("replace collapses", "accumulate stays stable", "accumulate-subsample degrades slowly")]
    assert all("[paper: (" in c.what for c in result.rows)
    assert [c.passed for c in result.rows] == [True] * 9, [(c.what, c.numbers) for c in result.rows]
    assert "arXiv:2410.16713" in result.paper and "K = 1" in result.setting
    assert result.figures == [tmp_path / "collapse_or_thrive.png"] and result.figures[0].stat().st_size > 0


def test_field_run_starts_from_the_real_data_and_replace_fixes_on_one_atom():
    """Round 0 fits the real atoms in exact proportions (full entropy, nothing lost); under replace with 8 samples
    a round the chain is absorbed (entropy 0) and stays there."""
    setting = FieldSetting(rounds=40, seeds=[0], n={"discrete": 8, "gaussian": 20, "kde": 20})
    run = field_run("discrete", "replace", setting, seed=0)
    assert run["degradation"][0] == 0.0 and run["variance"][0] == pytest.approx(1.0)
    fixed = run["degradation"].index(1.0)
    assert all(d == 1.0 for d in run["degradation"][fixed:])
    gaussian = field_run("gaussian", "accumulate", setting, seed=0)
    assert gaussian["degradation"][0] == 0.0  # the excess NLL is measured against round 0's model
    assert sum(d == d for d in gaussian["degradation"]) == 11  # read at 0, 4, ..., 40 (and 20): nan elsewhere


def synthetic_measurement(setting, final, half):
    """Hand-made runs: every seed's degradation is ``half[policy]`` at round T/2 and ``final[policy]`` at T."""
    def run(policy):
        degradation = [0.0] * (setting.rounds + 1)
        degradation[setting.rounds // 2], degradation[setting.rounds] = half[policy], final[policy]
        return {"degradation": degradation, "variance": [1.0] * (setting.rounds + 1)}
    return {learner: {pol: [run(pol) for _ in setting.seeds] for pol in COT_POLICIES}
            for learner in COT_LEARNERS}


def test_field_checks_pass_the_claims_and_fail_their_negations():
    setting = tiny_setting()
    holds = synthetic_measurement(setting,
                                  final={"replace": 0.9, "accumulate": 0.06, "accumulate_subsample": 0.2},
                                  half={"replace": 0.5, "accumulate": 0.05, "accumulate_subsample": 0.1})
    result = FieldResult("collapse_or_thrive", "t", "p", "s")
    field_checks(result, holds, setting)
    assert [c.passed for c in result.rows] == [True] * 9
    # replace does not collapse (0.2 < 0.25 and < 0.5), accumulate keeps rising (+0.3 > 0.05),
    # subsampling degrades faster than replace: every claim must FAIL.
    broken = synthetic_measurement(setting,
                                   final={"replace": 0.2, "accumulate": 0.4, "accumulate_subsample": 0.3},
                                   half={"replace": 0.1, "accumulate": 0.1, "accumulate_subsample": 0.1})
    result = FieldResult("collapse_or_thrive", "t", "p", "s")
    field_checks(result, broken, setting)
    assert [c.passed for c in result.rows] == [False] * 9
    assert result.rows[1].numbers.startswith("rise 0.300;")
    # on the bound: a rise of exactly stable_rise passes, subsample equal to accumulate passes, equal to replace fails
    edge = synthetic_measurement(setting,
                                 final={"replace": 0.5, "accumulate": 0.15, "accumulate_subsample": 0.5},
                                 half={"replace": 0.0, "accumulate": 0.1, "accumulate_subsample": 0.0})
    result = FieldResult("collapse_or_thrive", "t", "p", "s")
    field_checks(result, edge, setting)
    assert [c.passed for c in result.rows[:3]] == [True, True, False]
