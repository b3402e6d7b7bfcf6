"""The store checked whole before a resume trusts it; file errors name their path; settings compared."""

import json
import re
import resource
import signal
import zipfile

import pytest
import torch

from lightning_curate.store.preflight import check_checkpoint_file, check_resume, find_last_checkpoint
from lightning_curate.store.rounds import RoundStore, StoreError
from lightning_curate.store.settings import SettingsMismatch, canonical_json, diff_settings, fingerprint, parse_allowed

SETTINGS = {"num_slots": 8, "num_candidates": 4, "beta": 1.0, "num_winners": 1, "mode": "softmax",
            "real_fraction": 0.0, "policy": "replace", "generator": "g.G",
            "reward": {"class_path": "r.R", "init_args": {"gamma": 1.0}}, "seed": 0, "epochs_per_round": 2,
            "initial_epochs": 3}


def _store(tmp_path, rounds=3, settings=SETTINGS, changed=None):
    store = RoundStore(tmp_path / "run" / "rounds")
    for t in range(rounds):
        manifest = {"settings": settings, "fingerprint": fingerprint(settings)}
        if changed and t == changed[0]:
            manifest = {"settings": changed[1], "fingerprint": fingerprint(changed[1]), "settings_changed": changed[2]}
            settings = changed[1]  # the later rounds keep the new settings
        store.write(t, {"x": torch.full((4, 2), float(t))}, manifest)
    return store


def _snapshot(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_check_whole_accepts_a_good_store(tmp_path):
    assert _store(tmp_path).check_whole() == [0, 1, 2]
    assert RoundStore(tmp_path / "nothing").check_whole() == []


def test_a_missing_earlier_round_is_named(tmp_path):
    store = _store(tmp_path, rounds=4)
    import shutil

    shutil.rmtree(store.path(1))
    with pytest.raises(StoreError, match="round_001 missing from .*rounds must be contiguous from round_000"):
        store.check_whole()


def test_a_round_folder_without_manifest_is_named(tmp_path):
    store = _store(tmp_path)
    (store.path(2) / "manifest.json").unlink()
    with pytest.raises(StoreError, match="round_002 has no manifest.json"):
        store.check_whole()


@pytest.mark.parametrize("name", ["../../escape.pt", "/etc/passwd", "sub/part.pt", "..", ".hidden.pt",
                                  "part\\x.pt", "manifest.json", 7])
def test_a_hostile_part_name_is_refused_before_any_file_is_opened(tmp_path, name):
    store = _store(tmp_path, rounds=1)
    (tmp_path / "run" / "escape.pt").write_bytes(b"outside")
    path = store.path(0) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["parts"] = {name: "0" * 64} if not isinstance(name, int) else {"p.pt": 1, 7: 2}
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=f"{path}.*not a file name inside the round folder"):
        store.check_whole()
    with pytest.raises(StoreError, match="not a file name inside the round folder"):
        store.read(0)


def test_manifest_of_the_wrong_round_is_refused(tmp_path):
    store = _store(tmp_path, rounds=2)
    path = store.path(1) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["round"] = 0
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="says round 0, not 1"):
        store.check_whole()


def test_an_undeclared_settings_change_between_rounds_is_a_mixed_store(tmp_path):
    other = dict(SETTINGS, beta=3.0)
    with pytest.raises(StoreError, match=r"round 1 .*\(beta: 1.0 -> 3.0\).* mixes two runs"):
        _store(tmp_path, changed=(1, other, {})).check_whole()


def test_a_declared_settings_change_is_accepted(tmp_path):
    other = dict(SETTINGS, beta=3.0)
    assert _store(tmp_path, changed=(1, other, {"beta": [1.0, 3.0]})).check_whole() == [0, 1, 2]


def test_a_part_that_does_not_load_is_named(tmp_path):
    store = RoundStore(tmp_path / "rounds")
    store.begin(0)
    bad = store._tmp(0) / "part_000_00000.pt"
    bad.write_bytes(b"not a torch file")
    store.commit(0, {})
    with pytest.raises(StoreError, match=f"cannot load {store.path(0) / 'part_000_00000.pt'}"):
        store.read(0)


def test_a_file_size_limit_during_a_part_write_names_the_path(tmp_path):
    """EFBIG (RLIMIT_FSIZE, SIGXFSZ ignored) mid-write: the error names the part; no round appears."""
    store = RoundStore(tmp_path / "rounds")
    store.begin(0)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with pytest.raises(StoreError, match=f"could not write {store._tmp(0) / 'part_000_00000.pt'}"):
            store.write_part(0, {"x": torch.zeros(10_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert store.rounds() == []


def test_settings_fingerprint_is_canonical():
    shuffled = dict(reversed(list(SETTINGS.items())))
    assert canonical_json(shuffled) == canonical_json(SETTINGS)
    assert fingerprint(shuffled) == fingerprint(SETTINGS) != fingerprint(dict(SETTINGS, beta=1.5))
    assert len(fingerprint(SETTINGS)) == 64


def test_diff_settings_names_old_and_new():
    new = dict(SETTINGS, beta=2.0, reward={"class_path": "r.R", "init_args": {"gamma": 5.0}})
    assert diff_settings(SETTINGS, new) == {"beta": [1.0, 2.0], "reward": [SETTINGS["reward"], new["reward"]]}
    # A manifest from before settings were recorded: its top-level keys are compared.
    assert diff_settings({"beta": 1.0, "num_slots": 8}, new) == {"beta": [1.0, 2.0]}


def test_parse_allowed():
    assert parse_allowed(None) == ()
    assert parse_allowed("beta, num_candidates,beta") == ("beta", "num_candidates")
    assert parse_allowed(["reward"]) == ("reward",)
    with pytest.raises(ValueError, match="allow_changed_settings: unknown key 'bta'"):
        parse_allowed("bta")
    with pytest.raises(ValueError, match="allow_changed_settings: 'seed' cannot change within a run"):
        parse_allowed("seed")


def _checkpoint(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": torch.arange(1000)}, path)
    return path


def test_check_resume_refuses_a_fresh_run_over_stored_rounds(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(StoreError, match=r"already holds rounds \[0, 1, 2\].*--ckpt_path last"):
        check_resume(store, SETTINGS, ckpt_path=None)
    assert check_resume(RoundStore(tmp_path / "empty"), SETTINGS, ckpt_path=None) == {}


def test_last_without_a_checkpoint_gives_advice_that_does_not_point_back(tmp_path):
    store = _store(tmp_path)
    with pytest.raises(StoreError) as info:
        check_resume(store, SETTINGS, ckpt_path="last", checkpoint_dirs=[tmp_path / "run" / "checkpoints"])
    message = str(info.value)
    assert "no last*.ckpt in" in message and "start a new run in another directory" in message
    assert "Resume it with" not in message


def test_check_resume_finds_last_and_compares_settings(tmp_path):
    store = _store(tmp_path)
    ckpts = tmp_path / "run" / "checkpoints"
    _checkpoint(ckpts / "last.ckpt")
    assert find_last_checkpoint([ckpts]) == ckpts / "last.ckpt"
    assert check_resume(store, SETTINGS, ckpt_path="last", checkpoint_dirs=[ckpts]) == {}
    new = dict(SETTINGS, beta=3.0, num_candidates=8)
    with pytest.raises(SettingsMismatch, match="beta: stored 1.0, config 3.0; num_candidates: stored 4, config 8"
                                               r".*--allow_changed_settings beta,num_candidates"):
        check_resume(store, new, ckpt_path="last", checkpoint_dirs=[ckpts])
    with pytest.raises(SettingsMismatch, match="num_candidates: stored 4") as info:
        check_resume(store, new, ckpt_path="last", checkpoint_dirs=[ckpts], allowed=("beta",))
    assert "beta: stored" not in str(info.value)
    assert check_resume(store, new, ckpt_path="last", checkpoint_dirs=[ckpts], allowed=("beta", "num_candidates")) \
        == {"beta": [1.0, 3.0], "num_candidates": [4, 8]}


def test_a_truncated_checkpoint_is_named(tmp_path):
    ckpt = _checkpoint(tmp_path / "last.ckpt")
    check_checkpoint_file(ckpt)
    ckpt.write_bytes(ckpt.read_bytes()[:-300])
    with pytest.raises(StoreError, match=f"the checkpoint {ckpt} is truncated or damaged"):
        check_checkpoint_file(ckpt)
    flipped = _checkpoint(tmp_path / "b.ckpt")
    with zipfile.ZipFile(flipped) as archive:
        info = next(i for i in archive.infolist() if i.file_size > 1000)
    data = bytearray(flipped.read_bytes())
    data[info.header_offset + 100 + len(info.filename)] ^= 0xFF
    flipped.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=f"the checkpoint {flipped} is damaged"):
        check_checkpoint_file(flipped)


def test_refusals_leave_the_store_byte_identical(tmp_path):
    store = _store(tmp_path)
    before = _snapshot(tmp_path / "run")
    for kwargs in ({"ckpt_path": None}, {"ckpt_path": "last"}):
        with pytest.raises(StoreError):
            check_resume(store, SETTINGS, **kwargs)
    assert _snapshot(tmp_path / "run") == before


def test_the_training_recipe_is_part_of_the_experiment(tmp_path):
    """A resume that switches warm/scratch or the step budget is refused like any science change."""
    stored = dict(SETTINGS, init="warm", steps_per_epoch=None)
    store = _store(tmp_path, settings=stored)
    for key, value in (("init", "scratch"), ("steps_per_epoch", 64)):
        with pytest.raises(SettingsMismatch, match=key):
            check_resume(store, dict(stored, **{key: value}), ckpt_path=None, checkpoint_dirs=[],
                         checkpoint_loaded=True)
        assert diff_settings(stored, dict(stored, **{key: value})) == {key: [stored[key], value]}
    assert parse_allowed("init,steps_per_epoch") == ("init", "steps_per_epoch")


# -- a manifest checked against itself and its data (issue 25, item 9) ------------------------------
def _row_store(tmp_path, row):
    store = RoundStore(tmp_path / "rows")
    rewards = torch.tensor([0.5, 1.0, 2.0, 4.5])
    manifest = {"settings": SETTINGS, "fingerprint": fingerprint(SETTINGS), "beta": 1.0, "epoch": 3, "row": row}
    store.write(0, {"x": torch.zeros(4, 2), "slot": torch.arange(4), "rewards": rewards}, manifest)
    return store


def test_a_row_is_checked_against_the_stored_winners(tmp_path):
    good = {"round": 0, "epoch": 3, "curated_reward_mean": 2.0, "curated_reward_std": float(torch.tensor(
        [0.5, 1.0, 2.0, 4.5], dtype=torch.float64).std())}
    assert _row_store(tmp_path / "a", good).read(0).manifest["row"] == good
    for edit, message in [({"curated_reward_mean": 2.5}, "its row's curated_reward_mean is 2.5, but the stored "
                                                          "winners' rewards give 2"),
                          ({"curated_reward_std": 0.1}, "its row's curated_reward_std is 0.1"),
                          ({"round": 1}, "its row's round is 1, the round's is 0"),
                          ({"epoch": 5}, "its row's epoch is 5, the round's is 3")]:
        store = _row_store(tmp_path / str(len(message)) / next(iter(edit)), {**good, **edit})
        with pytest.raises(StoreError, match=re.escape(f"{store.path(0) / 'manifest.json'}: {message}")):
            store.read(0)
        with pytest.raises(StoreError, match=re.escape(message)):
            store.check_whole()


def test_manifest_settings_need_their_fingerprint_and_agree_with_the_top_level_keys(tmp_path):
    from lightning_curate.store.integrity import check_manifest_settings

    good = {"settings": SETTINGS, "fingerprint": fingerprint(SETTINGS), "beta": 1.0}
    assert check_manifest_settings(good, tmp_path) == []
    assert check_manifest_settings({"beta": 2.0}, tmp_path) == []  # from before settings: nothing to compare
    assert check_manifest_settings({**good, "fingerprint": None}, tmp_path) == ["its settings have no fingerprint"]
    assert check_manifest_settings({**good, "beta": 2.0}, tmp_path) == [
        "its beta (2.0) differs from its settings' (1.0)"]


def test_abort_discards_only_the_round_in_progress(tmp_path):
    store = _store(tmp_path, rounds=1)
    store.begin(1)
    store.write_part(1, {"x": torch.zeros(2, 2)})
    store.abort(1)
    store.abort(2)  # nothing in progress: nothing to do
    assert store.rounds() == [0] and not list(store.root.glob(".tmp_round_*"))
    assert store.check_whole() == [0]


def test_a_checkpoint_whose_weights_do_not_fit_the_model_is_named(tmp_path):
    from lightning_curate.store.preflight import check_checkpoint_fits

    path = tmp_path / "c.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4, 2), "b": torch.zeros(4), "buffer": torch.zeros(1)}}, path)
    check_checkpoint_fits(path, {"w": torch.zeros(4, 2), "b": torch.zeros(4)})  # buffers are not compared
    with pytest.raises(StoreError, match=re.escape(f"the checkpoint {path} does not fit the config's model (w: "
                                                   "checkpoint [4, 2], model [8, 2]; new: in the model, not in the "
                                                   "checkpoint)")):
        check_checkpoint_fits(path, {"w": torch.zeros(8, 2), "b": torch.zeros(4), "new": torch.zeros(1)})
