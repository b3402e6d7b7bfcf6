"""RoundStore: atomic, checksummed, append-only storage of each round's curated data."""

import hashlib
import json

import pytest
import torch

from lightning_curate.store import rounds as store_mod
from lightning_curate.store.rounds import RoundStore, StoreError


def _tensors(seed: int = 0, n: int = 5):
    gen = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(n, 2, generator=gen),
        "rewards": torch.randn(n, generator=gen),
        "labels": torch.randint(0, 8, (n,), generator=gen),
    }


def _dir_snapshot(path):
    """Names and bytes of every file under ``path`` (to prove a folder was not touched)."""
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_round_trip_tensors_and_manifest(tmp_path):
    store = RoundStore(tmp_path / "rounds")
    tensors = _tensors(1, n=7)
    path = store.write(3, tensors, {"beta": 2.5, "K": 4, "mean": torch.tensor(0.25)})
    assert path == tmp_path / "rounds" / "round_003"
    assert store.has(3) and not store.has(2)

    got = store.read(3)
    assert set(got.tensors) == {"x", "rewards", "labels"}
    for key, value in tensors.items():
        assert torch.equal(got.tensors[key], value)
        assert got.tensors[key].dtype == value.dtype

    manifest = got.manifest
    assert manifest["round"] == 3
    assert manifest["beta"] == 2.5 and manifest["K"] == 4
    assert manifest["mean"] == 0.25  # a tensor is written as its value
    assert manifest["sizes"] == {"x": [7, 2], "rewards": [7], "labels": [7]}
    expected_sha = hashlib.sha256((path / store_mod.SINGLE_PART).read_bytes()).hexdigest()
    assert manifest["parts"] == {store_mod.SINGLE_PART: expected_sha}
    # The manifest on disk is plain JSON with the same content.
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert store.read_manifest(3) == manifest


def test_parts_from_ranks_and_chunks_read_back_in_slot_order(tmp_path):
    """A round written as parts (2 ranks x 2 chunks) reads as if one process wrote it."""
    store = RoundStore(tmp_path / "rounds")
    x = torch.arange(24, dtype=torch.float32).view(12, 2)
    slot = torch.arange(12)
    store.root.mkdir()
    store.begin(0)
    for rank, chunk, rows in ((1, 0, [2, 3, 6, 7]), (0, 0, [0, 1, 4, 5]), (0, 1, [8, 9]), (1, 1, [10, 11])):
        idx = torch.tensor(rows)
        store.write_part(0, {"x": x[idx], "slot": slot[idx], "preview": x[idx[:1]], "preview_slot": slot[idx[:1]]},
                         rank=rank, chunk=chunk)
    store.commit(0, {"note": "parts"})
    got = store.read(0)
    assert torch.equal(got.tensors["x"], x) and torch.equal(got.tensors["slot"], slot)
    assert torch.equal(got.tensors["preview_slot"], torch.tensor([0, 2, 8, 10]))
    assert len(got.manifest["parts"]) == 4


def test_manifest_cannot_override_round_sha_or_sizes(tmp_path):
    store = RoundStore(tmp_path)
    store.write(1, _tensors(), {"round": 99, "parts": {store_mod.SINGLE_PART: "bogus"}, "sizes": {}})
    manifest = store.read(1).manifest  # would raise if the bogus checksum were kept
    assert manifest["round"] == 1
    assert manifest["parts"][store_mod.SINGLE_PART] != "bogus"
    assert manifest["sizes"]["x"] == [5, 2]


def test_rounds_lists_complete_rounds_in_order(tmp_path):
    store = RoundStore(tmp_path / "rounds")
    assert store.rounds() == []  # root does not exist yet
    for idx in (10, 2, 0, 5):
        store.write(idx, _tensors(idx), {})
    # Not rounds: a folder without a manifest, a stray file, an odd name, a temp folder.
    (store.root / "round_007").mkdir()
    (store.root / "round_008.txt").write_text("x")
    (store.root / "round_abc").mkdir()
    (store.root / "round_abc" / "manifest.json").write_text("{}")
    tmp = store.root / ".tmp_round_011_123"
    tmp.mkdir()
    (tmp / "manifest.json").write_text("{}")
    assert store.rounds() == [0, 2, 5, 10]


def test_writing_an_existing_round_raises_and_leaves_it_untouched(tmp_path):
    store = RoundStore(tmp_path)
    original = _tensors(0)
    store.write(2, original, {"tag": "first"})
    before = _dir_snapshot(store.path(2))
    with pytest.raises(StoreError, match="already exists"):
        store.write(2, _tensors(1), {"tag": "second"})
    assert _dir_snapshot(store.path(2)) == before
    got = store.read(2)
    assert got.manifest["tag"] == "first"
    assert torch.equal(got.tensors["x"], original["x"])
    assert not list(tmp_path.glob(".tmp_round_*"))


def test_modified_samples_fail_the_checksum(tmp_path):
    store = RoundStore(tmp_path)
    store.write(0, _tensors(0), {})
    # Replace the samples with a valid file of other tensors: only the checksum can tell.
    torch.save({k: v.contiguous() for k, v in _tensors(1).items()}, store.path(0) / store_mod.SINGLE_PART)
    with pytest.raises(StoreError, match="checksum"):
        store.read(0)


def test_flipped_byte_fails_the_checksum(tmp_path):
    store = RoundStore(tmp_path)
    store.write(0, _tensors(0), {})
    samples = store.path(0) / store_mod.SINGLE_PART
    data = bytearray(samples.read_bytes())
    data[-20] ^= 0xFF
    samples.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="checksum"):
        store.read(0)


def test_missing_samples_raises(tmp_path):
    store = RoundStore(tmp_path)
    store.write(4, _tensors(), {})
    (store.path(4) / store_mod.SINGLE_PART).unlink()
    with pytest.raises(StoreError, match="missing"):
        store.read(4)


def test_invalid_manifest_json_raises(tmp_path):
    store = RoundStore(tmp_path)
    store.write(4, _tensors(), {})
    (store.path(4) / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read(4)
    with pytest.raises(StoreError, match="not valid JSON"):
        store.read_manifest(4)


def test_reading_an_absent_round_raises(tmp_path):
    store = RoundStore(tmp_path)
    store.write(0, _tensors(), {})
    with pytest.raises(StoreError, match="round 1 is not in the store"):
        store.read(1)


def test_leftover_tmp_folder_is_not_a_round_and_is_cleaned(tmp_path):
    store = RoundStore(tmp_path)
    store.write(0, _tensors(0), {})
    store.write(1, _tensors(1), {})
    complete = {i: _dir_snapshot(store.path(i)) for i in (0, 1)}
    # A crash mid-write of round 2: the temp folder holds a samples file (and even a manifest).
    leftover = tmp_path / ".tmp_round_002_4242"
    leftover.mkdir()
    torch.save({"x": torch.zeros(3, 2)}, leftover / store_mod.SINGLE_PART)
    (leftover / "manifest.json").write_text("{}")
    assert store.rounds() == [0, 1]
    assert not store.has(2)

    removed = store.clean_partial()
    assert removed == [leftover]
    assert not leftover.exists()
    assert store.rounds() == [0, 1]
    assert {i: _dir_snapshot(store.path(i)) for i in (0, 1)} == complete
    assert store.clean_partial() == []
    # The round can now be written for real.
    store.write(2, _tensors(2), {})
    assert store.rounds() == [0, 1, 2]


def test_clean_partial_on_missing_root(tmp_path):
    assert RoundStore(tmp_path / "nowhere").clean_partial() == []


def test_crash_during_write_leaves_no_round(tmp_path, monkeypatch):
    store = RoundStore(tmp_path)
    store.write(0, _tensors(0), {})
    seen_tmp = []

    def exploding_save(obj, path, *args, **kwargs):
        seen_tmp.append(path.parent)
        assert path.parent.is_dir()  # the temp folder exists when the crash happens
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.torch, "save", exploding_save)
    with pytest.raises(StoreError, match=r"could not write .*\.tmp_round_001/part_000_00000\.pt: disk full"):
        store.write(1, _tensors(1), {})
    assert seen_tmp and seen_tmp[0].name.startswith(".tmp_round_001")
    assert not store.path(1).exists()
    assert not store.has(1)
    assert store.rounds() == [0]
    monkeypatch.undo()

    assert store.clean_partial() == seen_tmp
    store.write(1, _tensors(1), {})  # a retry after the crash succeeds
    assert store.rounds() == [0, 1]
