"""Fault injection on a tiny run: every fault ends in an honest exit code and a message naming the problem,
and the stored rounds are byte-identical to what they were before the fault (or absent).

Cheap refusals run ``main`` in-process; kills, signals, two concurrent runs and resource limits run it
in a forked child (the imports are done once, so the file stays within a couple of minutes; the console
script itself is run by tests/e2e/test_cli.py). ``run_configs.GatedReward`` holds a child at a chosen
point so that nothing depends on timing.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_configs import read_rows, store_digest, tiny_config, tree_digest, write_config

from lightning_curate.cli import main
from lightning_curate.store.lock import LOCK_NAME
from lightning_curate.store.rounds import RoundStore
from lightning_curate.store.settings import fingerprint

TESTS = Path(__file__).resolve().parents[1]
REWARD = {"class_path": "run_configs.GatedReward", "init_args": {"dataset": "mog8", "targets": [0, 1], "radius": 0.5}}


def _config(tmp_path: Path, run: Path, name: str = "cfg.yaml", *, rounds: int = 1, **overrides) -> Path:
    cfg = tiny_config(run, rounds=rounds, reward=overrides.pop("reward", REWARD), **overrides)
    return write_config(tmp_path / name, cfg)


def _main(capsys, *args) -> tuple[int, str]:
    try:
        main(["fit", *map(str, args)])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


class _Child:
    """``lightning-curate fit ARGS`` in a forked child: its own PID, signals, limits and exit status."""

    def __init__(self, tmp_path: Path, args, name: str, env=None, setup=None):
        self.err = tmp_path / f"{name}.err"
        self.returncode = None
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                sys.stdout = open(os.devnull, "w")
                sys.stderr = open(self.err, "w", buffering=1)
                os.dup2(sys.stderr.fileno(), 2)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.environ.update(env or {})
                if setup is not None:
                    setup()
                try:
                    main(["fit", *map(str, args)])
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.time() + timeout
        while self.poll() is None:
            if time.time() > deadline:
                raise TimeoutError(f"the run {self.pid} did not end within {timeout} s")
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _wait_for(path: Path, proc: _Child, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {path} appeared"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _finish(proc: _Child, timeout: float = 150) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _same_rounds(run: Path, reference: Path) -> bool:
    """The same rounds, tensor for tensor (however many parts each was written in)."""
    mine, theirs = RoundStore(run / "rounds"), RoundStore(reference / "rounds")
    if mine.rounds() != theirs.rounds():
        return False
    for t in mine.rounds():
        a, b = mine.read(t).tensors, theirs.read(t).tensors
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished 1-round run: the rounds every faulty run must end with (or keep untouched)."""
    tmp = tmp_path_factory.mktemp("reference")
    run = tmp / "run"
    main(["fit", "-c", str(_config(tmp, run))])
    return run


@pytest.fixture
def finished(reference, tmp_path):
    """A copy of the finished reference run, to break."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


# -- resumes that change the science settings ------------------------------------------------------
@pytest.mark.parametrize("section, key, value, old", [
    ("model", "num_slots", 500, 600), ("model", "num_candidates", 3, 4), ("model", "beta", 3.0, 1.0),
    ("model", "num_winners", 2, 1), ("model", "mode", "argmax", "softmax"), ("data", "real_fraction", 0.5, 0.0),
    ("data", "policy", "accumulate_subsample", "replace"), ("reward", "radius", 0.7, None),
    ("loop", "seed", 1, 0),
])
def test_resume_with_a_changed_science_setting_is_refused(finished, tmp_path, capsys, section, key, value, old):
    cfg = tiny_config(finished, rounds=2, reward=json.loads(json.dumps(REWARD)))
    target = {"model": cfg["model"]["init_args"], "data": cfg["data"]["init_args"],
              "reward": cfg["model"]["init_args"]["reward"]["init_args"],
              "loop": cfg["trainer"]["callbacks"][0]["init_args"]}[section]
    target[key] = value
    before = tree_digest(finished)
    code, err = _main(capsys, "-c", write_config(tmp_path / "changed.yaml", cfg), "--ckpt_path", "last")
    assert code == 2
    name = "reward" if section == "reward" else key
    assert f"{name}: stored " in err and "Traceback" not in err
    if old is not None:
        assert f"{key}: stored {old!r}, config {value!r}" in err
    if key == "seed":
        assert "--allow_changed_settings" not in err  # the seed can never change within a run
    else:
        assert f"--allow_changed_settings {name}" in err
    assert tree_digest(finished) == before


def test_an_allowed_change_is_made_and_recorded_in_the_next_round(finished, tmp_path, capsys):
    before = store_digest(finished)
    cfg = _config(tmp_path, finished, rounds=2, beta=3.0)
    code, err = _main(capsys, "-c", cfg, "--ckpt_path", "last", "--allow_changed_settings", "beta")
    assert code == 0, err
    after = store_digest(finished)
    assert {k: after[k] for k in before} == before
    manifests = [json.loads((finished / "rounds" / f"round_{t:03d}" / "manifest.json").read_text())
                 for t in range(3)]
    assert [m["settings"]["beta"] for m in manifests] == [1.0, 1.0, 3.0]
    assert "settings_changed" not in manifests[1] and manifests[2]["settings_changed"] == {"beta": [1.0, 3.0]}
    assert manifests[0]["fingerprint"] == manifests[1]["fingerprint"] != manifests[2]["fingerprint"]


# -- resumes that change the recipe (issue 25, item 1) ----------------------------------------------
@pytest.mark.parametrize("section, key, value, shown", [
    ("generator", "ema_decay", 0.5, "generator.ema_decay: stored 0.9, config 0.5"),
    ("generator", "solver", "midpoint", "generator.solver: stored 'euler', config 'midpoint'"),
    ("generator", "steps", 4, "generator.steps: stored 8, config 4"),
    ("data", "batch_size", 64, "batch_size: stored 128, config 64"),
    ("model", "lr", 0.01, "lr: stored 0.003, config 0.01"),
    ("model", "weight_decay", 0.1, "weight_decay: stored 0.0, config 0.1"),
    ("source", "name", "moons", "source.name: stored 'mog8', config 'moons'"),
])
def test_resume_with_a_changed_recipe_setting_is_refused(finished, tmp_path, capsys, section, key, value, shown):
    cfg = tiny_config(finished, rounds=2, reward=json.loads(json.dumps(REWARD)))
    target = {"generator": cfg["model"]["init_args"]["generator"]["init_args"], "model": cfg["model"]["init_args"],
              "data": cfg["data"]["init_args"], "source": cfg["data"]["init_args"]["source"]["init_args"]}[section]
    target[key] = value
    before = tree_digest(finished)
    code, err = _main(capsys, "-c", write_config(tmp_path / "changed.yaml", cfg), "--ckpt_path", "last")
    assert code == 2 and shown in err and "Traceback" not in err, err[-2000:]
    assert "--allow_changed_settings " + shown.split(":")[0] in err
    assert tree_digest(finished) == before


def test_an_allowed_lr_change_is_applied_to_the_restored_optimizer(finished, tmp_path, capsys):
    cfg = _config(tmp_path, finished, rounds=2, lr=0.01)
    code, err = _main(capsys, "-c", cfg, "--ckpt_path", "last", "--allow_changed_settings", "lr")
    assert code == 0, err
    manifest = json.loads((finished / "rounds" / "round_002" / "manifest.json").read_text())
    assert manifest["settings_changed"] == {"lr": [0.003, 0.01]} and manifest["settings"]["lr"] == 0.01
    state = torch.load(finished / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert sorted(p.name for p in (finished / "checkpoints").glob("last*")) == ["last.ckpt"]  # item 15
    assert {g["lr"] for g in state["optimizer_states"][0]["param_groups"]} == {0.01}  # not the checkpoint's 0.003


# -- a checkpoint from another run (issue 25, item 2) -----------------------------------------------
def _foreign_checkpoint(run: Path, tmp_path: Path) -> Path:
    """``run``'s last checkpoint as another run (another id, another reward radius and beta) made it."""
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    loop = state["callbacks"]["RetrainingLoop"]
    loop["run_id"] = "0" * 32
    loop["settings"] = dict(loop["settings"], beta=3.0)
    loop["fingerprint"] = fingerprint(loop["settings"])
    path = tmp_path / "other.ckpt"
    torch.save(state, path)
    return path


def test_a_checkpoint_from_another_run_is_refused_naming_both(finished, tmp_path, capsys):
    other = _foreign_checkpoint(finished, tmp_path)
    ours = json.loads((finished / "rounds" / "round_001" / "manifest.json").read_text())["run_id"]
    before = tree_digest(finished)
    code, err = _main(capsys, "-c", _config(tmp_path, finished, rounds=2), "--ckpt_path", other)
    assert code == 2, err[-2000:]
    assert f"the checkpoint {other} was made by another run: run {'0' * 32}" in err
    assert f"are run {ours}'s" in err and "beta: checkpoint 3.0, this run 1.0" in err
    assert tree_digest(finished) == before


def test_a_checkpoint_into_a_fresh_directory_is_refused_before_anything_is_written(finished, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    ckpt = finished / "checkpoints" / "last.ckpt"
    code, err = _main(capsys, "-c", _config(tmp_path, fresh, rounds=2), "--ckpt_path", ckpt)
    assert code == 2 and f"the checkpoint {ckpt} belongs to run" in err and "holds no rounds" in err, err[-2000:]
    assert not fresh.exists() or sorted(p.name for p in fresh.iterdir()) == []


# -- a damaged or hostile store, a damaged checkpoint ----------------------------------------------
def _break_manifest(run: Path, edit) -> Path:
    path = run / "rounds" / "round_001" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    return path


def _hostile(run):
    (run / "secret.pt").write_bytes(b"outside the round")
    _break_manifest(run, lambda m: m["parts"].update({"../../secret.pt": "0" * 64}))
    return "'../../secret.pt', which is not a file name inside the round folder"


def _missing_round(run):
    shutil.rmtree(run / "rounds" / "round_000")
    return "round_000 missing from"


def _missing_part(run):
    (run / "rounds" / "round_001" / "part_000_00000.pt").unlink()
    return f"{run / 'rounds' / 'round_001' / 'part_000_00000.pt'} is missing"


def _bad_json(run):
    path = run / "rounds" / "round_001" / "manifest.json"
    path.write_text(path.read_text()[:-40])
    return f"the manifest {path} is not valid JSON"


def _flipped_part(run):
    path = run / "rounds" / "round_000" / "preview_000.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"checksum mismatch for {path}"


def _truncated_checkpoint(run):
    path = run / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:5000])
    return f"the checkpoint {path} is truncated or damaged"


def _stale_fingerprint(run):
    path = _break_manifest(run, lambda m: m["settings"].update(beta=1.5))  # settings edited, fingerprint not
    return f"{path}: its settings do not match its fingerprint"


def _no_checkpoint(run):
    shutil.rmtree(run / "checkpoints")
    return "--ckpt_path last: there is no last*.ckpt in"


def _no_fingerprint(run):  # issue 25, item 9: settings edited and their fingerprint dropped
    path = _break_manifest(run, lambda m: (m["settings"].update(beta=1.5), m.pop("fingerprint")))
    return f"{path}: its settings have no fingerprint"


def _top_level_edit(run):  # the manifest's own beta edited, its settings not
    path = _break_manifest(run, lambda m: m.update(beta=1.5))
    return f"{path}: its beta (1.5) differs from its settings' (1.0)"


def _edited_row(run):  # the row rounds.csv is rebuilt from, edited
    path = _break_manifest(run, lambda m: m["row"].update(curated_reward_mean=0.99))
    return f"{path}: its row's curated_reward_mean is 0.99, but the stored winners' rewards give"


def _edit_checkpoint(run, edit) -> Path:
    path = run / "checkpoints" / "last.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state["callbacks"]["RetrainingLoop"])
    torch.save(state, path)
    return path


def _checkpoint_settings_edited(run):
    path = _edit_checkpoint(run, lambda loop: loop["settings"].update(beta=3.0))
    return f"the checkpoint {path}: its settings do not match its fingerprint"


def _checkpoint_without_run_id(run):  # saved before run ids: nothing shows it is this run's
    path = _edit_checkpoint(run, lambda loop: loop.pop("run_id"))
    return f"the checkpoint {path} carries no run id"


@pytest.mark.parametrize("fault", [_hostile, _missing_round, _missing_part, _bad_json, _flipped_part,
                                   _truncated_checkpoint, _no_checkpoint, _stale_fingerprint, _no_fingerprint,
                                   _top_level_edit, _edited_row, _checkpoint_settings_edited,
                                   _checkpoint_without_run_id])
def test_a_damaged_run_is_refused_naming_the_file(finished, tmp_path, capsys, fault):
    message = fault(finished)
    before = tree_digest(finished)
    code, err = _main(capsys, "-c", _config(tmp_path, finished, rounds=2), "--ckpt_path", "last")
    assert code == 2 and message in err, err
    assert "Resume it with" not in err and "Traceback" not in err
    assert tree_digest(finished) == before


def test_a_run_from_before_run_ids_resumes_with_a_warning(finished, reference, tmp_path, capsys):
    """Neither its checkpoint nor its rounds carry a run id: accepted, said so, the settings still compared."""
    ckpt = _edit_checkpoint(finished, lambda loop: loop.pop("run_id"))
    for t in (0, 1):
        _break_manifest_of(finished, t, lambda m: m.pop("run_id"))
    with pytest.warns(UserWarning, match=f"the checkpoint {ckpt} and the rounds in .* carry no run id"):
        code, err = _main(capsys, "-c", _config(tmp_path, finished), "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    assert read_rows(finished) == read_rows(reference)
    code, err = _main(capsys, "-c", _config(tmp_path, finished, beta=2.0), "--ckpt_path", "last")
    assert code == 2 and "beta: stored 1.0, config 2.0" in err


def _break_manifest_of(run: Path, t: int, edit) -> None:
    path = run / "rounds" / f"round_{t:03d}" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def test_a_resume_of_a_finished_run_rebuilds_lost_rows_of_rounds_csv(finished, reference, tmp_path, capsys):
    table = finished / "rounds.csv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:2]))  # round 1's row lost
    assert len(read_rows(finished)) == 1
    code, err = _main(capsys, "-c", _config(tmp_path, finished), "--ckpt_path", "last")
    assert code == 0, err[-2000:]
    assert read_rows(finished) == read_rows(reference)


def test_an_explicit_truncated_checkpoint_is_named(finished, tmp_path, capsys):
    path = finished / "checkpoints" / "last.ckpt"
    path.write_bytes(path.read_bytes()[:5000])
    before = tree_digest(finished)
    code, err = _main(capsys, "-c", _config(tmp_path, finished, rounds=2), "--ckpt_path", path)
    assert code == 2 and f"the checkpoint {path} is truncated or damaged" in err
    assert tree_digest(finished) == before


def test_triton_without_cuda_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, err = _main(capsys, "-c", _config(tmp_path, tmp_path / "run", backend="triton"))
    assert code == 2 and "backend: 'triton' cannot run here" in err
    assert not (tmp_path / "run").exists()


# -- a diverging generator, an absurd beta (issue 25, items 11 and 10) --------------------------------
def test_a_diverging_generator_is_named_at_its_first_nan_loss(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _main(capsys, "-c", _config(tmp_path, run, lr=1e12))
    assert code == 1, err[-2000:]
    assert "the generator (FlowMatching) diverged: its training loss was nan at step" in err
    assert "lr=1000000000000.0" in err and "non-finite rewards" not in err
    assert RoundStore(run / "rounds").rounds() == []


def test_a_beta_beyond_float32_softmax_is_refused_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _main(capsys, "-c", _config(tmp_path, run, beta=1e10))
    assert code == 1 and "beta: 1e+10 times the rewards' spread" in err and "mode: argmax" in err, err[-2000:]
    assert "out of bounds" not in err and RoundStore(run / "rounds").rounds() == []


# -- kill -9, SIGTERM, SIGINT ---------------------------------------------------------------------
# -- absurd sizes (issue 25, item 6) -------------------------------------------------------------------
def _machine(monkeypatch, *, disk: int, memory: int) -> None:
    """A machine with ``disk`` bytes free and ``memory`` bytes available, and a curation that must never start."""
    monkeypatch.setattr("lightning_curate.loop.sizing.free_disk", lambda path: disk)
    monkeypatch.setattr("lightning_curate.loop.sizing.available_memory", lambda: memory)

    def never(*args, **kwargs):
        raise AssertionError("the curation started")

    monkeypatch.setattr("lightning_curate.loop.curation_module.CurationModule.curate_round", never)


@pytest.mark.parametrize("overrides, message", [
    ({"num_slots": 10**10},
     "num_slots: the round store needs about 560 GB on disk (2 rounds of 280 GB), but 50 GB are free in {run}"),
    ({"num_candidates": 10**6},
     "num_candidates: one curation chunk of the smallest size (512 slots) needs about 30.7 GB of memory, but 8 GB"),
    ({"num_slots": 100_000, "num_candidates": 4000, "chunk_size": 100_000},
     "chunk_size: a curation chunk (100000 slots) needs about 11.3 GB of memory, but 8 GB is available. Lower "
     "chunk_size (to 33280 or less)"),
])
def test_a_size_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, capsys, monkeypatch, overrides, message):
    _machine(monkeypatch, disk=50 * 10**9, memory=8 * 10**9)
    run = tmp_path / "run"
    code, err = _main(capsys, "-c", _config(tmp_path, run, **overrides))
    assert code == 2 and message.format(run=run) in err, err[-2000:]
    assert not run.exists()  # refused before the logger, the config save, the store: the lock came and went


def test_without_the_cli_the_loop_refuses_the_size_at_setup(tmp_path, monkeypatch):
    import lightning as L

    from lightning_curate.data import BlendingDataModule, Toy2D
    from lightning_curate.loop import CurationModule, RetrainingLoop
    from lightning_curate.models import FlowMatching, MLPVelocity
    from lightning_curate.rewards import ClippedDistanceReward
    from lightning_curate.store.capacity import CapacityError

    _machine(monkeypatch, disk=50 * 10**9, memory=8 * 10**9)
    generator = FlowMatching(MLPVelocity(dim=2, hidden=16, depth=1), data_shape=[2], steps=2)
    module = CurationModule(generator, ClippedDistanceReward(dataset="mog8", targets=[0, 1]), num_slots=10**10)
    data = BlendingDataModule(Toy2D(name="mog8", num_train=256, num_heldout=64), batch_size=64)
    trainer = L.Trainer(default_root_dir=tmp_path / "run", callbacks=[RetrainingLoop(rounds=1)], accelerator="cpu",
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(CapacityError, match=r"^num_slots: the round store needs about 560 GB on disk"):
        trainer.fit(module, data)
    assert not (tmp_path / "run").exists()  # refused before the lock, the store, any sample


@pytest.mark.parametrize("how, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_during_a_long_curation_stops_it_and_stores_no_half_round(tmp_path, how, code):
    """Held in round 0's second chunk (of 2): SIGTERM stops the curation after that chunk (before: the whole
    round was curated first), SIGINT at once; the round in progress is discarded whole, and the run exits
    with the resume command."""
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    first_part = run / "rounds" / ".tmp_round_000" / "part_000_00000.pt"
    cfg = _config(tmp_path, run, chunk_size=1)  # one block of 512 slots per chunk: 2 chunks of 600 slots
    proc = _Child(tmp_path, ["-c", cfg], "run", env={"LC_TEST_GATE": str(gate), "LC_TEST_GATE_AFTER": str(first_part)})
    _wait_for(Path(str(gate) + ".reached"), proc)
    proc.send_signal(getattr(signal, how))
    gate.unlink()
    assert _finish(proc) == code
    err = (tmp_path / "run.err").read_text()
    assert f"{how}: the run stopped before round 0 finished" in err and "--ckpt_path last" in err
    assert sorted(p.name for p in (run / "rounds").iterdir()) == []  # no round, no half round
    assert not (run / LOCK_NAME).exists()


# -- a start that fails after the checks writes nothing (issue 25, item 7) ----------------------------
def _bad_reward(monkeypatch, cfg):
    import run_configs

    forward = run_configs.GatedReward.forward
    monkeypatch.setattr(run_configs.GatedReward, "forward", lambda self, x: forward(self, x)[:, None])
    return "returned shape [8, 1]; expected one reward per sample, shape [8]"


def _other_architecture(monkeypatch, cfg):
    cfg["model"]["init_args"]["generator"]["init_args"]["velocity"]["init_args"]["hidden"] = 32
    return "does not fit the config's model (generator.velocity.net.0.weight: checkpoint [64, 34], model [32, 34]"


def _unfit_size(monkeypatch, cfg):
    _machine(monkeypatch, disk=1000, memory=8 * 10**9)  # round 2 needs 36 kB
    return "num_slots: the round store needs about 36 kB on disk (1 round of 36 kB), but 1 kB are free"


@pytest.mark.parametrize("fault", [_bad_reward, _other_architecture, _unfit_size])
def test_a_failing_resume_leaves_config_and_metrics_byte_identical(finished, tmp_path, capsys, monkeypatch, fault):
    cfg = tiny_config(finished, rounds=2, reward=json.loads(json.dumps(REWARD)))
    message = fault(monkeypatch, cfg)
    before = tree_digest(finished)
    assert {"config.yaml", "metrics.csv"} <= set(before)
    code, err = _main(capsys, "-c", write_config(tmp_path / "resume.yaml", cfg), "--ckpt_path", "last")
    assert code == 2 and message in err and "Traceback" not in err, err[-2000:]
    assert tree_digest(finished) == before


def test_kill_9_mid_write_of_a_round_then_resume(reference, tmp_path, capsys):
    """Killed between two parts of round 0: no round appears; the resume discards the partial folder."""
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    first_part = run / "rounds" / ".tmp_round_000" / "part_000_00000.pt"
    cfg = _config(tmp_path, run, chunk_size=128)  # 5 parts per round; the chunk size never changes a round
    proc = _Child(tmp_path, ["-c", cfg], "run", env={"LC_TEST_GATE": str(gate), "LC_TEST_GATE_AFTER": str(first_part)})
    _wait_for(Path(str(gate) + ".reached"), proc)
    proc.kill()
    _finish(proc)
    assert first_part.is_file() and not (run / "rounds" / "round_000").exists()
    code, err = _main(capsys, "-c", cfg, "--ckpt_path", "last")
    assert code == 0, err
    assert _same_rounds(run, reference) and read_rows(run) == read_rows(reference)
    assert not (run / "rounds" / ".tmp_round_000").exists()


def test_kill_9_between_round_0_training_and_its_curation_then_resume(reference, tmp_path, capsys):
    """Killed as round 0's curation starts: no round and no checkpoint yet (RoundCheckpoint saves at
    round ends), a stale lock; the resume takes the lock over (its holder is dead), starts over and
    ends with the reference rounds."""
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    cfg = _config(tmp_path, run)
    proc = _Child(tmp_path, ["-c", cfg], "run", env={"LC_TEST_GATE": str(gate)})
    _wait_for(Path(str(gate) + ".reached"), proc)  # round 0's training is over, its curation is starting
    proc.kill()
    _finish(proc)
    assert (run / LOCK_NAME).is_file() and not (run / "checkpoints").exists()
    assert not (run / "rounds").exists() or RoundStore(run / "rounds").rounds() == []
    code, err = _main(capsys, "-c", cfg, "--ckpt_path", "last")
    assert code == 0, err
    assert store_digest(run) == store_digest(reference) and read_rows(run) == read_rows(reference)
    assert not (run / LOCK_NAME).exists()


# kill -9 right after a round's commit: tests/e2e/test_cli.py::test_kill_9_mid_run_then_resume_matches_uninterrupted
@pytest.mark.parametrize("how, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_run_stopped_after_a_round_keeps_it_and_resumes(reference, tmp_path, capsys, how, code):
    """The signal comes while the run is held at its first reward call after round 0's commit, so
    it always lands before round 1 ends (an ungated signal raced the end of this tiny run)."""
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    cfg = _config(tmp_path, run)
    after = run / "rounds" / "round_000" / "manifest.json"
    proc = _Child(tmp_path, ["-c", cfg], "run", env={"LC_TEST_GATE": str(gate), "LC_TEST_GATE_AFTER": str(after)})
    _wait_for(Path(str(gate) + ".reached"), proc)
    proc.send_signal(getattr(signal, how))
    gate.unlink()
    assert _finish(proc) == code
    err = (tmp_path / "run.err").read_text()
    assert f"{how}: the run stopped after round 0 of 1" in err
    assert f"lightning-curate fit -c {cfg} --ckpt_path last" in err
    assert not (run / LOCK_NAME).exists()
    assert store_digest(run)["round_000"] == store_digest(reference)["round_000"]
    if how == "SIGINT":
        return  # resumes like SIGTERM: one resume of a signal-stopped run is enough for the suite
    code, err = _main(capsys, "-c", cfg, "--ckpt_path", "last")
    assert code == 0, err
    assert store_digest(run) == store_digest(reference) and read_rows(run) == read_rows(reference)


def test_sigterm_before_training_releases_the_lock_and_exits_143(tmp_path):
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    proc = _Child(tmp_path, ["-c", _config(tmp_path, run)], "run", env={"LC_TEST_INIT_GATE": str(gate)})
    _wait_for(Path(str(gate) + ".reached"), proc)  # building the reward: the lock is taken, fit not started
    assert (run / LOCK_NAME).is_file()
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc) == 143
    assert "SIGTERM: the run stopped before round 0 finished" in (tmp_path / "run.err").read_text()
    assert not run.exists()  # the lock was the only thing written, and it is gone


# -- two runs, one directory ------------------------------------------------------------------------
def test_a_second_run_on_a_busy_directory_is_refused_naming_the_holder(reference, tmp_path):
    run = tmp_path / "run"
    gate = tmp_path / "gate"
    gate.touch()
    first = _Child(tmp_path, ["-c", _config(tmp_path, run)], "first", env={"LC_TEST_GATE": str(gate)})
    _wait_for(Path(str(gate) + ".reached"), first)  # the first run is curating round 0
    config_before = (run / "config.yaml").read_bytes()
    second = _Child(tmp_path, ["-c", _config(tmp_path, run, "beta3.yaml", beta=3.0)], "second")
    assert _finish(second) == 2
    err = (tmp_path / "second.err").read_text()
    assert f"the run directory {run} is in use by another run: PID {first.pid} on host" in err
    assert (run / "config.yaml").read_bytes() == config_before
    gate.unlink()
    assert _finish(first) == 0, (tmp_path / "first.err").read_text()[-2000:]
    assert store_digest(run) == store_digest(reference)
    for t in (0, 1):
        assert json.loads((run / "rounds" / f"round_{t:03d}" / "manifest.json").read_text())["beta"] == 1.0


# -- a mid-epoch checkpoint (issue 25, item 8) -------------------------------------------------------
def test_a_checkpoint_from_mid_epoch_or_before_a_rounds_curation_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_config(run, rounds=0, reward=REWARD)  # round 0 only: 3 epochs of 4 batches
    cfg["trainer"]["callbacks"].append({"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(run / "steps"), "every_n_train_steps": 2, "save_top_k": -1, "save_last": False}})
    code, err = _main(capsys, "-c", write_config(tmp_path / "steps.yaml", cfg))
    assert code == 0, err[-2000:]
    before = tree_digest(run)
    resume = _config(tmp_path, run, "resume.yaml", rounds=1)
    for step, why in [(2, "mid-epoch (epoch 0, after 2 of 4 batches)"),
                      (12, "after round 0's training but before its curation")]:
        ckpt = run / "steps" / f"epoch={(step - 1) // 4}-step={step}.ckpt"
        code, err = _main(capsys, "-c", resume, "--ckpt_path", ckpt)
        assert code == 2 and f"the checkpoint {ckpt} was saved {why}" in err, err[-2000:]
    assert tree_digest(run) == before


# -- two runs, one checkpoint folder (issue 25, items 3 and 15) ---------------------------------------
def test_a_checkpoint_folder_outside_the_run_is_locked_too(tmp_path, capsys):
    from lightning_curate.store.lock import RunLock

    shared = tmp_path / "shared_checkpoints"
    ready = tmp_path / "ready"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - another live run holding the shared folder
        try:
            RunLock(shared).acquire()
            ready.touch()
            time.sleep(60)
        finally:
            os._exit(0)
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.01)
        run = tmp_path / "run"
        cfg = tiny_config(run, rounds=1, reward=REWARD)
        cfg["trainer"]["callbacks"][1]["init_args"]["dirpath"] = str(shared)
        code, err = _main(capsys, "-c", write_config(tmp_path / "cfg.yaml", cfg))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert code == 2, err[-2000:]
    assert f"the checkpoint folder {shared} is in use by another run: PID {pid}" in err
    assert not run.exists()  # refused before the config, the logger or the store wrote anything


def test_the_last_checkpoint_is_the_latest_rounds_not_the_newest_file(finished):
    from lightning_curate.experiments import load_run
    from lightning_curate.store.preflight import find_last_checkpoint

    folder = finished / "checkpoints"
    good = folder / "last-v1.ckpt"  # what an older version wrote beside a moved run's stale last.ckpt
    shutil.copy(folder / "last.ckpt", good)
    os.utime(good, (1, 1))
    state = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    state["callbacks"]["RetrainingLoop"]["finished_rounds"] = [0]
    torch.save(state, folder / "last.ckpt")  # stale (round 0), newest by mtime, the plain name
    assert find_last_checkpoint([folder]) == good  # what --ckpt_path last checks and resumes from
    assert load_run(finished, trusted_classes=["run_configs.GatedReward"]).checkpoint == good


# -- the filesystem refuses -------------------------------------------------------------------------
def _fsize_limit():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, resource.RLIM_INFINITY))


def test_a_file_size_limit_names_the_part_and_stores_no_round(tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config(run, rounds=1, reward=REWARD)
    cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"][:1]  # no checkpoints: the part is the big write
    cfg["trainer"]["enable_checkpointing"] = False
    proc = _Child(tmp_path, ["-c", write_config(tmp_path / "cfg.yaml", cfg)], "run", setup=_fsize_limit)
    assert _finish(proc) == 1
    err = (tmp_path / "run.err").read_text()
    assert f"error: could not write {run / 'rounds' / '.tmp_round_000' / 'part_000_00000.pt'}" in err
    assert not (run / "rounds" / "round_000").exists() and not (run / LOCK_NAME).exists()


def _fsize_limit_for_checkpoints():
    """Round 0's part (about 11 kB) fits, its checkpoint (about 100 kB) does not."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))


@pytest.mark.parametrize("plots", [False, True])
def test_a_file_size_limit_on_a_checkpoint_or_a_figure_names_it(tmp_path, plots):
    run = tmp_path / "run"
    cfg = tiny_config(run, rounds=1, reward=REWARD)
    cfg["trainer"]["callbacks"][0]["init_args"]["plots"] = plots
    if plots:  # a short run draws its figures once, at its end: without checkpoints the figure is the big write
        cfg["trainer"]["callbacks"] = cfg["trainer"]["callbacks"][:1]
        cfg["trainer"]["enable_checkpointing"] = False
    proc = _Child(tmp_path, ["-c", write_config(tmp_path / "cfg.yaml", cfg)], "run",
                  setup=_fsize_limit_for_checkpoints)
    assert _finish(proc) == 1
    err = (tmp_path / "run.err").read_text()
    written = run / "round_metrics" if plots else run / "checkpoints"  # the figure goes through a temp file
    assert f"error: could not write {written}" in err and "File too large" in err, err[-2000:]
    assert "Traceback" not in err
    # The checkpoint is saved after the round's commit: round 0 is whole, nothing after it. The figures
    # are drawn at the run's end, after every round was stored whole.
    assert RoundStore(run / "rounds").rounds() == ([0, 1] if plots else [0]) and not (run / LOCK_NAME).exists()
    if not plots:  # written atomically beside its name: no truncated checkpoint, no temp file left (item 16)
        assert sorted((run / "checkpoints").iterdir()) == []


class _FullDisk:
    """A file that takes 1000 bytes, then reports a full disk."""

    def __init__(self, real):
        self.real = real

    def write(self, data):
        self.real.write(b"x" * 1000)
        raise OSError(28, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_full_disk_at_a_checkpoint_keeps_the_old_one_whole(finished, monkeypatch):
    from lightning_curate.loop.checkpoint import AtomicCheckpointIO

    last = finished / "checkpoints" / "last.ckpt"
    before = tree_digest(finished)
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space left on device") as err:
        AtomicCheckpointIO().save_checkpoint({"epoch": 9}, last)
    assert err.value.filename == str(last)
    assert tree_digest(finished) == before  # the old last.ckpt whole, no temp file beside it


def test_a_full_disk_at_rounds_csv_names_it_and_leaves_no_temp_file(finished, monkeypatch):
    import csv

    from lightning_curate.utils.table import write_csv

    table = finished / "rounds.csv"
    before = tree_digest(finished)
    def full(self, rows):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(csv.DictWriter, "writerows", full)
    with pytest.raises(OSError, match="No space left on device") as err:
        write_csv(table, ["round"], [{"round": 0}])
    assert err.value.filename == str(table)
    assert tree_digest(finished) == before  # rounds.csv as it was, no rounds.csv.tmp left


def _read_only(path: Path):
    """A child-side setup that makes ``path`` read-only for the child alone."""
    def setup():
        if os.geteuid() != 0:
            for p in [path, *path.rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
            return
        # root ignores permissions: a read-only bind mount in a private mount namespace of the child.
        libc = ctypes.CDLL(None, use_errno=True)
        steps = [["mount", "--make-rprivate", "/"], ["mount", "--bind", str(path), str(path)],
                 ["mount", "-o", "remount,ro,bind", str(path), str(path)]]
        if libc.unshare(0x00020000) != 0 or any(  # CLONE_NEWNS
                subprocess.run(step, capture_output=True).returncode for step in steps):
            os._exit(77)
    return setup


def test_a_read_only_run_directory_is_refused(finished, tmp_path):
    cfg = _config(tmp_path, finished, rounds=2)
    before = tree_digest(finished)
    try:
        code = _finish(_Child(tmp_path, ["-c", cfg, "--ckpt_path", "last"], "run", setup=_read_only(finished)))
    finally:
        for path in [finished, *finished.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    if code == 77:
        pytest.skip("root without mount namespaces: cannot make a directory read-only")
    err = (tmp_path / "run.err").read_text()
    assert code == 2, err[-2000:]
    assert f"error: cannot lock the run directory {finished}" in err and "Read-only file system" in err
    assert tree_digest(finished) == before


# -- no code from any file ---------------------------------------------------------------------------
# Each planted class would create MARKER if it ran; the refusal must come before any import of it.
def _planted(marker: Path) -> list[dict]:
    return [{"class_path": "os.system", "init_args": {"command": f"touch {marker}"}},
            {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}},
            # A class the package merely imports from elsewhere is not the package's class.
            {"class_path": "lightning_curate.experiments.runner.ThreadPoolExecutor", "init_args": {}}]


def _choice_log_run(tmp_path: Path, reward_spec: dict) -> Path:
    from lightning_curate.data.toy2d import make_2d
    from lightning_curate.ops import kchoice

    run = tmp_path / "logged"
    x, _ = make_2d("mog8", 400 * 4, seed=3)
    cands = x.reshape(400, 4, 2)
    index = kchoice(-cands.norm(dim=2), 1.0, seed=0).index[:, None]
    RoundStore(run / "rounds").write(0, {"x": cands[:, 0], "choice_candidates": cands, "choice_index": index,
                                         "choice_slot": torch.arange(400)}, {"beta": 1.0})
    (run / "config.yaml").write_text(json.dumps({"model": {"init_args": {"reward": reward_spec}}}))
    return run


@pytest.mark.parametrize("which", [0, 1, 2])
def test_the_reward_command_builds_no_class_its_run_config_names(tmp_path, capsys, which):
    from lightning_curate.preference.cli import run as fit_reward

    marker = tmp_path / "PWNED"
    run = _choice_log_run(tmp_path, _planted(marker)[which])
    out = tmp_path / "reward.pt"
    with pytest.raises(SystemExit) as exit_:
        fit_reward(["--round-dir", str(run / "rounds"), "--out", str(out), "--max-epochs", "1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert str(run / "config.yaml") in err and "refusing to build" in err
    assert not marker.exists() and not out.exists()


def test_the_reward_command_builds_a_class_the_user_trusts_by_name(tmp_path, capsys):
    from lightning_curate.preference.cli import run as fit_reward

    spec = {"class_path": "run_configs.GatedReward", "init_args": {"dataset": "mog8", "targets": [0], "radius": 0.5}}
    run = _choice_log_run(tmp_path, spec)
    args = ["--round-dir", str(run / "rounds"), "--out", str(tmp_path / "r.pt"), "--max-epochs", "2"]
    with pytest.raises(SystemExit):
        fit_reward(args)  # a test module's class: not the package's, not trusted
    assert "run_configs.GatedReward" in capsys.readouterr().err
    report = fit_reward(args + ["--trusted-classes", "run_configs.GatedReward"])
    assert "spearman" in report  # the true reward was built and scored


@pytest.mark.parametrize("which", [0, 1, 2])
def test_load_run_builds_no_class_its_config_names(finished, tmp_path, which):
    import yaml

    from lightning_curate.experiments import load_run
    from lightning_curate.utils.trust import UntrustedClassError

    marker = tmp_path / "PWNED"
    config = yaml.safe_load((finished / "config.yaml").read_text())
    config["model"]["init_args"]["reward"] = _planted(marker)[which]
    (finished / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UntrustedClassError, match="refusing to build"):
        load_run(finished, trusted_classes=["run_configs.GatedReward"])
    # A bare dotted name where a class goes is a class path too.
    config["model"]["init_args"]["reward"] = "os.system"
    (finished / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UntrustedClassError, match="'os.system'"):
        load_run(finished)
    assert not marker.exists()


def test_load_run_needs_the_users_own_classes_named(finished):
    from lightning_curate.experiments import load_run
    from lightning_curate.utils.trust import UntrustedClassError

    with pytest.raises(UntrustedClassError, match="run_configs.GatedReward"):
        load_run(finished)  # the run's reward is a test module's class
    assert load_run(finished, trusted_classes=["run_configs.GatedReward"]).module is not None


# -- the reward command checks its logs ---------------------------------------------------------------
@pytest.mark.parametrize("key, value, match", [
    ("choice_index", torch.full((400, 1), 7), "indices outside 0..3"),
    ("choice_index", torch.zeros(399, 1, dtype=torch.long), "choice_index must have one row per choice_slot"),
    ("choice_index", torch.zeros(400, 1), "must be integer"),
    ("choice_slot", torch.zeros(400, dtype=torch.long), "distinct non-negative"),
    ("choice_candidates", torch.full((400, 4, 2), float("nan")), "NaN or infinite"),
    ("choice_rewards", torch.zeros(400, 3), r"finite floating point \[400, 4\]"),
])
def test_the_reward_command_refuses_forged_logs(tmp_path, capsys, key, value, match):
    from lightning_curate.preference.cli import run as fit_reward

    run = _choice_log_run(tmp_path, {})
    store = RoundStore(run / "rounds")
    record = store.read(0)
    tensors = dict(record.tensors, **{key: value})
    shutil.rmtree(run / "rounds")
    RoundStore(run / "rounds").write(0, tensors, record.manifest)  # consistent, re-recorded checksums
    with pytest.raises(SystemExit):
        fit_reward(["--round-dir", str(run / "rounds"), "--out", str(tmp_path / "r.pt"), "--no-config-reward"])
    assert __import__("re").search(match, capsys.readouterr().err)


# -- a sweep never moves a live run --------------------------------------------------------------------
def test_a_sweep_never_moves_a_live_locked_run_aside(tmp_path):
    from lightning_curate.experiments.runner import move_aside
    from lightning_curate.store.lock import RunLock, RunLockError

    run = tmp_path / "point"
    (run / "rounds" / "round_000").mkdir(parents=True)  # stored rounds, no checkpoint: "stale" to a sweep
    before = tree_digest(run)
    live = RunLock(run).acquire()  # a live run (this process) holds it
    try:
        with pytest.raises(RunLockError, match="in use by another run"):
            move_aside(run)
        assert (run / LOCK_NAME).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["point"]
    finally:
        live.release()
    assert tree_digest(run) == before
    aside = move_aside(run)  # its holder is gone: moved, lock file and all, and nothing left locked
    assert not run.exists() and aside.is_dir() and not (aside / LOCK_NAME).exists()
    assert (aside / "rounds" / "round_000").is_dir()


def test_a_lock_lost_to_a_takeover_is_never_refreshed(tmp_path):
    from lightning_curate.store.lock import RunLock

    lock = RunLock(tmp_path / "run", heartbeat_s=0.05).acquire()
    try:
        (tmp_path / "run" / LOCK_NAME).write_text(json.dumps({"pid": 1, "token": "other"}))  # a takeover
        old = time.time() - 1000
        os.utime(tmp_path / "run" / LOCK_NAME, (old, old))
        time.sleep(0.5)
        assert lock.lost and not lock.still_ours()
        assert (tmp_path / "run" / LOCK_NAME).stat().st_mtime == pytest.approx(old, abs=1)
    finally:
        lock.release()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["token"] == "other"  # not ours: kept


# -- a planted temporary-round link ------------------------------------------------------------------
def test_a_planted_tmp_round_link_is_removed_itself_and_the_round_is_written(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    store = RoundStore(tmp_path / "run" / "rounds")
    store.root.mkdir(parents=True)
    (store.root / ".tmp_round_000").symlink_to(outside, target_is_directory=True)
    (store.root / ".tmp_round_001").symlink_to(outside / "precious.txt")
    assert len(store.clean_partial()) == 2  # the links go, not what they point at
    assert (outside / "precious.txt").read_text() == "keep me"
    (store.root / ".tmp_round_000").symlink_to(outside, target_is_directory=True)
    store.write(0, {"x": torch.zeros(3, 2), "slot": torch.arange(3)}, {"beta": 1.0})
    assert store.rounds() == [0] and not (store.root / ".tmp_round_000").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["precious.txt"]
