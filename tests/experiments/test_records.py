"""lightning_curate.experiments.records: the JSON record of a measurement, written atomically, read back exactly."""

from __future__ import annotations

import datetime
import json
import math
import os
import re

import pytest
import torch

import lightning_curate
from lightning_curate.experiments import records
from lightning_curate.experiments.records import RecordError, read_record, read_records, write_record

FIGURES = {"seconds": 12.345678901234567, "rounds": 10, "ok": True, "note": None, "card": "cpu",
           "per_size": {"tiny": [0.1, 2e-17, -3], "large": {"ms": 1e300}}}


def test_a_record_round_trips_exactly_with_its_provenance(tmp_path):
    path = write_record("bench_x", FIGURES, "python scripts/bench_x.py --record", tmp_path / "records",
                        device="cpu", date=datetime.date(2026, 12, 6))
    assert path == tmp_path / "records" / "bench_x.json"
    record = read_record(path)
    assert record["figures"] == FIGURES  # floats, ints, bools, None, nesting: all as written
    assert type(record["figures"]["rounds"]) is int and type(record["figures"]["per_size"]["tiny"][2]) is int
    assert record["name"] == "bench_x" and record["date"] == "2026-12-06"
    assert record["version"] == lightning_curate.__version__
    assert record["command"] == "python scripts/bench_x.py --record"
    assert record["machine"]["device"] == "cpu" and record["machine"]["torch"] == torch.__version__
    assert record["machine"]["cores"] == len(os.sched_getaffinity(0)) and record["machine"]["cpu"]
    # The file is the documented format, key for key, in that order.
    assert list(json.loads(path.read_text())) == ["name", "date", "version", "command", "machine", "figures"]
    assert list(record["machine"]) == ["platform", "cpu", "cores", "torch", "device"]
    assert read_records(tmp_path / "records") == {"bench_x": record}


def test_the_date_defaults_to_today_utc(tmp_path):
    before = datetime.datetime.now(datetime.timezone.utc).date()
    date = read_record(write_record("d", {"x": 1}, "cmd", tmp_path, device="cpu"))["date"]
    after = datetime.datetime.now(datetime.timezone.utc).date()
    assert date in {before.isoformat(), after.isoformat()}


@pytest.mark.parametrize("figures, where", [
    ({"ms": math.nan}, "figures['ms'] is nan"),
    ({"rows": [1.0, {"ms": math.inf}]}, "figures['rows'][1]['ms'] is inf"),
    ({"a": {"b": -math.inf}}, "figures['a']['b'] is -inf"),
    ({"t": torch.tensor(1.0)}, "figures['t'] is a Tensor"),
    ({"pair": (1, 2)}, "figures['pair'] is a tuple"),
    ({"by": {3: 1.0}}, "figures['by'] has the key 3 (int)"),
])
def test_figures_json_cannot_hold_exactly_are_refused_and_the_old_record_kept(tmp_path, figures, where):
    path = write_record("r", {"x": 1}, "first", tmp_path, device="cpu")
    before = path.read_bytes()
    with pytest.raises(RecordError, match=re.escape(where)):
        write_record("r", figures, "second", tmp_path, device="cpu")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary file left behind


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "a b"])
def test_a_name_that_is_not_a_file_stem_is_refused(tmp_path, name):
    with pytest.raises(RecordError, match="record name"):
        write_record(name, {"x": 1}, "cmd", tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_missing_command_or_non_dict_figures_are_refused(tmp_path):
    with pytest.raises(RecordError, match="command must be"):
        write_record("r", {"x": 1}, "  ", tmp_path)
    with pytest.raises(RecordError, match="figures must be a dict, got list"):
        write_record("r", [1.0], "cmd", tmp_path)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_the_old_record_and_no_temporary_file(tmp_path, monkeypatch):
    path = write_record("r", {"x": 1}, "first", tmp_path, device="cpu")
    before = path.read_bytes()

    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.os, "replace", broken)
    with pytest.raises(OSError, match="No space left"):
        write_record("r", {"x": 2}, "second", tmp_path, device="cpu")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_reading_names_the_bad_file(tmp_path):
    write_record("good", {"x": 1}, "cmd", tmp_path, device="cpu")
    good = json.loads((tmp_path / "good.json").read_text())
    cases = {
        "notjson": ("{", "not JSON"),
        "keys": (json.dumps({"name": "keys"}), "expected the keys"),
        "other": (json.dumps({**good, "name": "good"}), "holds the record 'good', not 'other'"),
        "date": (json.dumps({**good, "name": "date", "date": "06/12/2026"}), "is not YYYY-MM-DD"),
        "machine": (json.dumps({**good, "name": "machine", "machine": {"cpu": "x"}}), "machine must hold"),
        "cores": (json.dumps({**good, "name": "cores", "machine": {**good["machine"], "cores": "2"}}),
                  "cores must be an int"),
    }
    for stem, (text, message) in cases.items():
        path = tmp_path / "bad" / f"{stem}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        with pytest.raises(RecordError, match=message) as err:
            read_record(path)
        assert str(path) in str(err.value)
        path.unlink()
    binary = tmp_path / "bad" / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RecordError, match="not JSON"):
        read_record(binary)
    with pytest.raises(RecordError, match="no such folder"):
        read_records(tmp_path / "nowhere")


def test_records_are_read_in_name_order(tmp_path):
    for name in ("zeta", "alpha", "mid"):
        write_record(name, {"name": name}, f"make {name}", tmp_path, device="cpu")
    (tmp_path / "notes.txt").write_text("not a record")
    found = read_records(tmp_path)
    assert list(found) == ["alpha", "mid", "zeta"] and found["mid"]["figures"] == {"name": "mid"}


def test_a_cuda_device_string_becomes_the_cards_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"Card of {device}")
    assert records.machine("cuda:1")["device"] == "Card of cuda:1"
    assert records.machine()["device"] == "Card of cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert records.machine()["device"] == "cpu"
