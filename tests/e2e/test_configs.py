"""Composed configs: a base per experiment plus small overlays (several ``-c``).

Each composition must print (``--print_config``) exactly the full config it
replaced; those full configs are kept, as they were, in ``expected_configs/``.
``--print_config`` runs in-process through ``lightning_curate.cli.main``: it
parses and validates the whole config but instantiates nothing.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import sys
from pathlib import Path

import pytest
import yaml

from lightning_curate.cli import main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
EXPECTED = Path(__file__).resolve().parent / "expected_configs"

# The experiment a composition runs -> the config files, in order, relative to configs/.
COMPOSITIONS = {
    "mog8_real": ["mog8.yaml", "overlays/mog8_real.yaml"],
    "moons": ["mog8.yaml", "overlays/moons.yaml"],
    "mog8_gaussian": ["mog8.yaml", "overlays/mog8_gaussian.yaml"],
    "mog8_kde": ["mog8.yaml", "overlays/mog8_kde.yaml"],
    "mog8_correction": ["mog8.yaml", "overlays/mog8_correction.yaml"],
    "digits_real": ["digits.yaml", "overlays/digits_real.yaml"],
    "digits_confidence": ["digits.yaml", "overlays/digits_confidence.yaml"],
    "digits_confidence_real": ["digits.yaml", "overlays/digits_confidence.yaml",
                               "overlays/digits_confidence_real.yaml"],
    "discrete_real": ["discrete.yaml", "overlays/discrete_real.yaml"],
    "discrete_adversarial": ["discrete.yaml", "overlays/discrete_adversarial.yaml"],
    "mog8_adversarial": ["mog8.yaml", "overlays/mog8_adversarial.yaml"],
    "digits_adversarial": ["digits.yaml", "overlays/digits_adversarial.yaml"],
    "cifar10_torchcfm": ["cifar10.yaml", "overlays/cifar10_torchcfm.yaml"],
}
BASES = ["mog8.yaml", "digits.yaml", "discrete.yaml", "cifar10.yaml"]


def print_config(paths: list[Path]) -> dict:
    """The full config ``lightning-curate fit -c A -c B ... --print_config`` prints, parsed."""
    return yaml.safe_load(_printed(tuple(str(p) for p in paths)))


@functools.lru_cache(maxsize=None)
def _printed(paths: tuple[str, ...]) -> str:
    args = ["fit"]
    for path in paths:
        args += ["-c", path]
    buf = io.StringIO()
    argv, sys.argv = sys.argv, ["lightning-curate"]  # as from the console script, not pytest's argv
    try:
        with contextlib.redirect_stdout(buf):
            main([*args, "--print_config"])
    except SystemExit as exc:  # jsonargparse exits after printing
        assert not exc.code, f"--print_config of {paths} exited with {exc.code}"
    finally:
        sys.argv = argv
    text = buf.getvalue()
    assert "model:" in text and "trainer:" in text, text[:500]
    return text


def composed(name: str) -> dict:
    return print_config([CONFIGS / f for f in COMPOSITIONS[name]])


@pytest.mark.parametrize("name", sorted(COMPOSITIONS))
def test_composition_equals_the_full_config_it_replaces(name):
    expected = print_config([EXPECTED / f"{name}.yaml"])
    got = composed(name)
    assert got == expected
    # The comparison is not vacuous: the overlay changed something of its base.
    assert got != print_config([CONFIGS / COMPOSITIONS[name][0]])


def test_expected_configs_are_the_replaced_files():
    """The test data are standalone full configs, one per composition, and nothing else."""
    assert sorted(p.stem for p in EXPECTED.glob("*.yaml")) == sorted(COMPOSITIONS)
    for name in COMPOSITIONS:
        raw = yaml.safe_load((EXPECTED / f"{name}.yaml").read_text())
        assert {"trainer", "model", "data"} <= set(raw), name
        assert raw["trainer"]["default_root_dir"] == f"runs/{name}", name
        # The replaced files are gone from configs/, so nothing can drift back.
        assert not (CONFIGS / f"{name}.yaml").exists(), name


def test_every_run_directory_is_its_own():
    """Composed runs never share a run directory with their base or with each other."""
    dirs = {name: composed(name)["trainer"]["default_root_dir"] for name in COMPOSITIONS}
    for base in BASES:
        dirs[base] = print_config([CONFIGS / base])["trainer"]["default_root_dir"]
    assert len(set(dirs.values())) == len(dirs), dirs
    # Interpolation follows the overlay: the logger and checkpoints move with the run.
    config = composed("mog8_real")
    assert config["trainer"]["logger"]["init_args"]["save_dir"] == "runs/mog8_real"
    checkpoint = next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("RoundCheckpoint"))
    assert checkpoint["init_args"]["dirpath"] == "runs/mog8_real/checkpoints"


def test_overlays_say_how_to_run_them():
    """Every overlay's ``# Run:`` line is its composition, so the comment can be copied."""
    overlays = {p.relative_to(CONFIGS).as_posix() for p in (CONFIGS / "overlays").glob("*.yaml")}
    assert overlays == {f for files in COMPOSITIONS.values() for f in files[1:]}
    for name, files in COMPOSITIONS.items():
        text = (CONFIGS / files[-1]).read_text()
        runs = re.findall(r"^# Run: (.+)$", text, flags=re.M)
        expected = "lightning-curate fit " + " ".join(f"-c configs/{f}" for f in files)
        assert runs == [expected], (name, runs)


def test_overlays_are_small():
    """An overlay holds what differs and nothing else (no copied trainer or model). The one exception
    is the callbacks list, restated whole when the round schedule differs (a YAML overlay replaces a
    list, it cannot patch one element): then it is the base's list with only the schedule (and the
    learner's measured refit jitter, which the schedule changes) changed."""
    base_of = {files[-1]: files[0] for files in COMPOSITIONS.values()}
    for path in (CONFIGS / "overlays").glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        base = CONFIGS / base_of[path.relative_to(CONFIGS).as_posix()]
        base_callbacks = yaml.safe_load(base.read_text())["trainer"]["callbacks"]
        assert set(raw["trainer"]) <= {"default_root_dir", "callbacks"}, path.name
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert len(lines) <= 12 + (7 if "callbacks" in raw["trainer"] else 0), (path.name, len(lines))
        if "callbacks" in raw["trainer"]:
            ours = raw["trainer"]["callbacks"]
            assert [c["class_path"] for c in ours] == [c["class_path"] for c in base_callbacks], path.name
            schedule = ("epochs_per_round", "initial_epochs", "rounds", "learner_noise")
            for mine, base in zip(ours, base_callbacks):
                mine_args, base_args = mine.get("init_args", {}), base.get("init_args", {})
                assert {k: v for k, v in mine_args.items() if k not in schedule} == \
                    {k: v for k, v in base_args.items() if k not in schedule}, path.name


@pytest.mark.parametrize("name", [*BASES, "digits_classifier.yaml", "digits_judge.yaml",
                                  "cifar10_classifier.yaml", "cifar10_judge.yaml"])
def test_every_shipped_base_config_is_valid(name):
    assert (CONFIGS / name).is_file()
    print_config([CONFIGS / name])


def test_no_reference_to_a_replaced_config():
    """Nothing in the project still points at a config file that became an overlay."""
    # configs/NAME.yaml or a bare NAME.yaml, but not overlays/NAME.yaml.
    pattern = re.compile(r"(?<![\w/])(?:configs/)?(%s)\.yaml" % "|".join(COMPOSITIONS))
    skip = {Path(__file__).resolve()}
    roots = [REPO / d for d in ("lightning_curate", "kernels", "scripts", "tests", "configs", "docs")]
    files = [REPO / "README.md", REPO / "Makefile"]
    for root in roots:
        files += [p for p in root.rglob("*") if p.suffix in {".py", ".yaml", ".md", ".sbatch", ".txt"}]
    stale = []
    for path in files:
        if not path.is_file() or path.resolve() in skip or EXPECTED in path.resolve().parents:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                stale.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not stale, "\n".join(stale)


def documented_fit_commands() -> set[tuple[str, ...]]:
    """The ``-c`` lists of every ``lightning-curate fit`` command the README and the configs' comments give."""
    texts = [(REPO / "README.md").read_text(), *(p.read_text() for p in CONFIGS.rglob("*.yaml"))]
    found = set()
    for text in texts:
        # "cd DIR && lightning-curate fit -c X": X lives in DIR (a user's own module beside it).
        for match in re.finditer(r"(?:cd\s+(\S+)\s+&&\s+)?lightning-curate fit((?:\s+-c\s+\S+)+)", text):
            folder = f"{match.group(1)}/" if match.group(1) else ""
            found.add(tuple(folder + f for f in re.findall(r"-c\s+([^\s`]+)", match.group(2))))
    return found


def test_every_documented_fit_command_parses():
    """Each config chain a user is told to run is a valid, complete config."""
    commands = documented_fit_commands()
    assert ("configs/mog8.yaml", "configs/overlays/mog8_real.yaml") in commands
    assert len(commands) >= 10, commands
    for files in sorted(commands):
        paths = [REPO / f for f in files]
        missing = [f for f, p in zip(files, paths) if not p.is_file()]
        assert not missing, f"{files}: no such config {missing}"
        if files[0].startswith("examples/"):
            continue  # its classes import from examples/ only: tests/byo/test_examples.py runs it there
        print_config(paths)
