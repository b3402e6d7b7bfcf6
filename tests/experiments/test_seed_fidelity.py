"""Fidelity over a sweep's seeds: exact arithmetic on hand-made sweep rows."""

import csv
import math

import pytest

from lightning_curate.experiments.seed_fidelity import (
    FIDELITY_KEYS,
    SeedFidelity,
    fidelity_over_seeds,
    format_fidelity_over_seeds,
    write_fidelity_over_seeds,
)


def _rows(point, ratios_by_seed, stderr=0.05, key="reward_fidelity"):
    """``ratios_by_seed[s][t - 1]``: seed s's ratio in round t (None: no ratio, within noise)."""
    rows = []
    for seed, ratios in enumerate(ratios_by_seed):
        rows.append({"point": point, "seed": str(seed), "round": "0", key: ""})  # round 0: never a ratio
        for t, ratio in enumerate(ratios, start=1):
            cell = "" if ratio is None else str(ratio)
            rows.append({"point": point, "seed": str(seed), "round": str(t), key: cell,
                         f"{key}_stderr": "" if ratio is None else str(stderr)})
    return rows


def test_the_mean_over_seeds_takes_the_seeds_spread_as_its_error():
    rows = _rows("p", [[0.8, 1.4], [0.9, 1.2], [1.0, None]], stderr=0.01)
    first, second = fidelity_over_seeds(rows)["p"]
    assert (first.round, first.n, first.seeds) == (1, 3, 3)
    assert first.mean == pytest.approx(0.9)
    assert first.stderr == pytest.approx(0.1 / math.sqrt(3))  # sd of 0.8, 0.9, 1.0 is 0.1, above the model's
    assert first.verdict == "in"
    assert (second.n, second.seeds) == (2, 3)  # seed 2 had no ratio in round 2: left out, not taken as 1
    assert second.mean == pytest.approx(1.3)
    assert second.stderr == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    assert second.verdict == "near"  # 0.15 above the band: 1.5 standard errors


def test_seeds_that_spread_more_than_modelled_are_judged_with_student_t():
    # 0.5, 0.6, 0.7 with a modelled error of 0.01 each: the spread (0.0577) is the error, 2 degrees of freedom.
    (f,) = fidelity_over_seeds(_rows("p", [[0.5], [0.6], [0.7]], stderr=0.01))["p"]
    assert f.stderr == pytest.approx(0.1 / math.sqrt(3))
    assert f.z == pytest.approx(4.5265, abs=1e-4)  # t(2) at the confidence of 2 normal standard errors
    assert f.verdict == "near"  # 0.25 below: 4.33 standard errors, inside 4.53 (with z = 2 it would be out)
    (g,) = fidelity_over_seeds(_rows("p", [[0.5], [0.6], [0.7], [0.5], [0.6], [0.7]], stderr=0.01))["p"]
    assert g.z == pytest.approx(2.6486, abs=1e-4) and g.verdict == "out"  # six seeds: 5 degrees of freedom


def test_seeds_that_agree_by_chance_keep_the_runs_own_error_as_a_floor():
    rows = _rows("p", [[1.25], [1.25], [1.25]], stderr=0.3)
    (only,) = fidelity_over_seeds(rows)["p"]
    assert only.stderr == pytest.approx(0.3 / math.sqrt(3))  # spread 0: the modelled floor
    assert only.z == 2.0 and only.verdict == "near"  # 0.10 above the band, 0.58 standard errors
    far = fidelity_over_seeds(_rows("p", [[0.6], [0.6], [0.62]], stderr=0.02))["p"][0]
    assert far.verdict == "out"  # measurably below: 0.24 under the band, floor 0.0115


def test_one_seed_keeps_its_own_error_and_no_seed_gives_no_mean():
    rows = _rows("p", [[0.7, None], [None, None]], stderr=0.1)
    one, none = fidelity_over_seeds(rows)["p"]
    assert (one.n, one.mean, one.stderr, one.verdict) == (1, 0.7, 0.1, "near")
    assert (none.n, none.seeds, none.verdict) == (0, 2, "-") and math.isnan(none.mean)
    assert format_fidelity_over_seeds([one, none]) == "1: 0.70+-0.10 near (1/2), 2: - (0/2)"


def test_rows_without_errors_leave_the_spread_or_an_unknown():
    rows = [r for r in _rows("p", [[0.6], [0.62]]) if not r.get("round") == "0"]
    for r in rows:
        del r["reward_fidelity_stderr"]
    (two,) = fidelity_over_seeds(rows)["p"]
    assert two.stderr == pytest.approx(0.01) and two.verdict == "out"  # 0.24 below, t(1) z = 13.97: 0.14
    (one,) = fidelity_over_seeds(rows[:1])["p"]
    assert math.isnan(one.stderr) and one.verdict == "?"


def test_points_and_keys_are_kept_apart(tmp_path):
    rows = _rows("a", [[1.0], [1.0]]) + _rows("b", [[0.5], [0.5]])
    rows += _rows("a", [[0.9], [0.9]], key="gain_share_fidelity")  # b has no share ratio: no rows for it
    table = fidelity_over_seeds(rows)
    assert [f.mean for f in table["a"]] == [1.0] and [f.mean for f in table["b"]] == [0.5]
    assert fidelity_over_seeds(rows, "gain_share_fidelity")["a"][0].mean == pytest.approx(0.9)
    path = write_fidelity_over_seeds({k: fidelity_over_seeds(rows, k) for k in FIDELITY_KEYS}, tmp_path)
    written = list(csv.DictReader(open(path)))
    assert [(r["point"], r["key"], r["round"], r["n"], r["verdict"]) for r in written] == [
        ("a", "reward_fidelity", "1", "2", "in"), ("b", "reward_fidelity", "1", "2", "out"),
        ("a", "gain_share_fidelity", "1", "2", "in")]
    assert isinstance(table["a"][0], SeedFidelity)
    assert table["a"][0].seeds == 2  # distinct seeds, not rows


def test_nothing_to_write_writes_no_file(tmp_path):
    rows = _rows("p", [[None], [None]])
    assert write_fidelity_over_seeds({k: fidelity_over_seeds(rows, k) for k in FIDELITY_KEYS}, tmp_path) is None
    assert not (tmp_path / "fidelity.csv").exists()
