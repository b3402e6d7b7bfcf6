"""lightning_curate.utils.columns: the families build and parse the names the rows hold, and the
table's column order is the one rounds.csv has always had."""

from __future__ import annotations

import math

import pytest

from lightning_curate.utils import columns
from lightning_curate.utils.columns import CURATED_SHARE, SHARE, Col, Family, column_order, number, stderr


def test_families_round_trip_and_do_not_claim_their_neighbours():
    row = {"share_a": 0.1, "curated_share_a": 0.2, "predicted_share_a": 0.3, "predicted_curated_share_a": 0.4,
           "reward_mean": 1.0, "reward_mean_honest": 2.0, "curated_reward_mean_honest": 3.0}
    assert SHARE.names(row) == ["a"] and CURATED_SHARE.names(row) == ["a"]
    assert columns.PREDICTED_SHARE.names(row) == ["a"] and columns.PREDICTED_CURATED_SHARE.names(row) == ["a"]
    assert columns.REWARD_MEAN_OF.values(row) == {"honest": 2.0}  # not reward_mean itself
    assert columns.CURATED_REWARD_MEAN_OF.columns(row) == ["curated_reward_mean_honest"]
    for family in (f for f in vars(columns).values() if isinstance(f, Family)):
        assert family.name_of(family("x_1")) == "x_1" and family.owns(family("x"))


def test_no_two_families_share_a_prefix():
    prefixes = [f.prefix for f in vars(columns).values() if isinstance(f, Family)]
    assert len(prefixes) == len(set(prefixes))


def test_the_table_order_is_lead_then_shares_then_curated_shares_then_first_seen():
    rows = [{"round": 0, "epoch": 3, "real_fraction": 1.0, "n_real": 10, "n_synthetic": 0, "reward_mean": 0.1,
             "reward_std": 0.2, "curated_reward_mean": math.nan, "curated_reward_std": math.nan,
             "selection_entropy": 0.0, "share_b": 0.5, "curated_share_b": 0.5, "share_a": 0.5,
             "curated_share_a": 0.5, "sw_distance": 0.3, "predicted_reward_mean": 0.2, "learner_gap": 0.0},
            {"round": 1, "reward_fidelity": 0.9, "reward_fidelity_stderr": 0.1, "class_fidelity_a": 1.0}]
    assert column_order(rows) == [
        "round", "epoch", "real_fraction", "n_real", "n_synthetic", "reward_mean", "reward_std",
        "curated_reward_mean", "curated_reward_std", "selection_entropy", "sw_distance", "reward_fidelity",
        "learner_gap", "share_b", "share_a", "curated_share_b", "curated_share_a", "predicted_reward_mean",
        "reward_fidelity_stderr", "class_fidelity_a"]


@pytest.mark.parametrize("value, expected", [(1, 1.0), (0.5, 0.5), (True, math.nan), ("0.5", math.nan),
                                             (None, math.nan)])
def test_number_reads_numbers_only(value, expected):
    got = number({Col.REWARD_MEAN: value}, Col.REWARD_MEAN)
    assert got == expected or (math.isnan(got) and math.isnan(expected))
    assert math.isnan(number({}, Col.REWARD_MEAN))


def test_every_fidelity_ratio_has_its_stderr_column_name():
    assert [stderr(c) for c in columns.FIDELITY_RATIOS] == ["reward_fidelity_stderr", "gain_share_fidelity_stderr"]
