"""The size estimates of a round, and the refusals that name the key to change with both numbers."""

import pytest

from lightning_curate.store.capacity import (
    SOLVER_MULTIPLE,
    CapacityError,
    available_memory,
    check_capacity,
    free_disk,
    human_bytes,
    round_sizes,
)

BLOCK = 512


def _sizes(**overrides):
    args = {"num_slots": 1000, "num_candidates": 4, "num_winners": 1, "chunk_size": 512, "sample_numel": 2,
            "block": BLOCK}
    return round_sizes(**{**args, **overrides})


def test_round_sizes_count_every_stored_and_held_byte():
    sizes = _sizes(num_winners=2, preview_size=10, log_choices=3, labels=True, num_rewards=2)
    sample = 2 * 4
    disk = (2000 * (sample + 8 + 4 + 8)  # winners: sample, slot, reward, label
            + 10 * (sample + 8 + 4 * (4 * 2 + 8))  # preview: sample, slot, K rewards of 2 curators and labels
            + 3 * (4 * (sample + 4) + 2 * 8 + 8))  # logged choices: K candidates and rewards, m indices, slot
    assert sizes.disk == disk
    chunk = 2 * 512 * 4 * sample + 512 * 4 * (4 * 2 + 8) + SOLVER_MULTIPLE * 512 * 4 * sample
    assert sizes.chunk == sizes.one_block_chunk == chunk  # one block of 512 slots per chunk
    assert sizes.data == 2000 * sample


def test_an_accumulating_pool_holds_the_winners_of_every_round():
    assert _sizes(pool_rounds=10).data == 10 * _sizes().data == 10 * 1000 * 2 * 4


def test_a_chunk_is_whole_blocks_and_at_most_a_ranks_slots():
    assert _sizes(chunk_size=1).chunk == _sizes(chunk_size=512).chunk  # at least one block
    assert _sizes(chunk_size=600).chunk == _sizes(chunk_size=1024).chunk  # rounded up to blocks, capped at N
    big = _sizes(num_slots=10_000, chunk_size=10_000)
    assert big.chunk > _sizes(num_slots=10_000, chunk_size=10_000, world_size=4).chunk > big.one_block_chunk


def test_a_run_that_fits_passes():
    check_capacity(_sizes(), rounds_left=11, run_dir="r", chunk_size=512, block=BLOCK, disk_free=10**9,
                   host_memory=10**9)
    check_capacity(_sizes(), rounds_left=11, run_dir="r", chunk_size=512, block=BLOCK, disk_free=None,
                   host_memory=None)  # unknown: not checked


def test_the_disk_refusal_names_num_slots_and_both_numbers():
    sizes = _sizes(num_slots=10**9)  # 20 GB a round
    with pytest.raises(CapacityError, match=r"^num_slots: the round store needs about 60 GB on disk \(3 rounds of "
                                            r"20 GB\), but 50 GB are free in runs/x\. Lower num_slots"):
        check_capacity(sizes, rounds_left=3, run_dir="runs/x", chunk_size=512, block=BLOCK, disk_free=50 * 10**9,
                       host_memory=None)


def test_the_training_set_refusal_names_num_slots():
    with pytest.raises(CapacityError, match=r"^num_slots: a round's training set \(the winners it trains on, .*\) "
                                            r"needs about 16 GB of memory, but 8 GB is available"):
        check_capacity(_sizes(num_slots=10**9), rounds_left=1, run_dir="r", chunk_size=512, block=BLOCK,
                       disk_free=None, host_memory=8 * 10**9)


def test_the_chunk_refusals_name_num_candidates_or_chunk_size():
    huge_k = _sizes(num_candidates=10**6)
    with pytest.raises(CapacityError, match=r"^num_candidates: one curation chunk of the smallest size \(512 slots\) "
                                            r"needs about 26.6 GB of memory, but 1 GB is available"):
        check_capacity(huge_k, rounds_left=1, run_dir="r", chunk_size=512, block=BLOCK, disk_free=None,
                       host_memory=10**9)
    big_chunk = _sizes(num_slots=100_000, num_candidates=1000, chunk_size=100_000)
    with pytest.raises(CapacityError, match=r"^chunk_size: a curation chunk \(100000 slots\) needs about 2.02 GB of "
                                            r"cuda:0 memory, but 1 GB is available\. Lower chunk_size \(to "):
        check_capacity(big_chunk, rounds_left=1, run_dir="r", chunk_size=100_000, block=BLOCK, disk_free=None,
                       host_memory=10**12, device_memory=10**9, device="cuda:0")


def test_the_suggested_chunk_size_fits():
    big_chunk = _sizes(num_slots=100_000, num_candidates=1000, chunk_size=100_000)
    with pytest.raises(CapacityError) as refusal:
        check_capacity(big_chunk, rounds_left=1, run_dir="r", chunk_size=100_000, block=BLOCK, disk_free=None,
                       host_memory=10**9)
    suggested = int(str(refusal.value).split("(to ")[1].split(" ")[0])
    assert suggested % BLOCK == 0
    assert _sizes(num_slots=100_000, num_candidates=1000, chunk_size=suggested).chunk <= 10**9


def test_free_disk_and_memory_are_read(tmp_path):
    assert free_disk(tmp_path / "not" / "yet") == free_disk(tmp_path) > 0  # the nearest existing folder's
    memory = available_memory()
    assert memory is None or memory > 0


def test_human_bytes():
    assert [human_bytes(n) for n in (999, 1000, 36_000, 2.5e12)] == ["999 B", "1 kB", "36 kB", "2.5 TB"]
