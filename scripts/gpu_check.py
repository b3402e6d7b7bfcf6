#!/usr/bin/env python
"""The GPU half of lightning_curate, checked on a CUDA machine in one command.

    python scripts/gpu_check.py --out runs/gpu_check

Five steps, each timed; every figure is recorded with the card's name:

1. tests: ``tests/ops/test_kchoice_cuda.py`` with the Triton kernels compiled
   (``TRITON_INTERPRET=0``): large-N law checks against the exact oracle,
   fp16/bf16/fp64 rewards, exact log-probs and argmax, tile independence, gather.
2. roofline: ``scripts/bench_kchoice.py --roofline only`` (bytes per call, GB/s,
   % of the card's peak, beside softmax + multinomial and Gumbel-argmax).
3. runs: two short rounds of ``configs/digits.yaml`` (its classifiers trained
   first, into the output folder) and of a CIFAR-shaped run (random 3x32x32
   images through ``TensorImages``; nothing downloads), on CUDA with bf16
   autocast and ``compile: true``, through ``lightning_curate.cli.main``: round 1
   runs, then a resume (``--ckpt_path last``) extends it to round 2; checks
   rounds.csv (rows 0, 1, 2, finite rewards) and records peak GPU memory. The
   digits run's class-0 share per round is compared with the CPU run's.
4. fidelity: ``configs/digits.yaml`` whole (all its rounds, its own epochs) on
   CUDA, once in float32 and once with bf16 autocast and ``compile: true``: each
   round's reward and rewarded-set share fidelity against the ideal learner's
   prediction and the mean learner gap, beside the CPU run's row (its record:
   docs/experiments/2026-11-27-digits-devices.md). Each
   run's ``rounds.csv`` and ``round_metrics.png`` are copied to ``--out``.
5. summary: ``gpu_check.json`` and ``gpu_check.md`` in ``--out``.

Exit status 0 when every check passed, 1 when one failed, 2 when there is no
CUDA device (the script refuses to run rather than skip). Performance targets
(>= 70% of peak bandwidth, >= 5x multinomial, the digits trajectory, every
fidelity ratio within 0.85-1.15) are reported as PASS/FAIL in the summary without
changing the exit status (NEAR for fidelity: a ratio outside the band by at most two of its
standard errors). Steps 1-3 took about 7.5 minutes on one H100
(2026-11-26; figures in docs/experiments/2026-11-26-h100.md); ``--skip`` leaves steps out.

``--quick`` is the kernel's acceptance as one prepared command within 5 minutes:
steps 1 and 2 only, the roofline at its two target shapes (``bench_kchoice.py
--roofline quick``: >= 70% of peak bandwidth at 1e6 x 16 and 1e7 x 4, at least
as fast as ``torch.compile``d Gumbel-argmax), each step under a time limit::

    python scripts/gpu_check.py --quick --out runs/gpu_quick
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, TypedDict

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
# class-0 share (judge) per round of configs/digits.yaml on the CPU (docs/experiments/2026-11-26-h100.md).
DIGITS_CPU_SHARE0 = (0.105, 0.297, 0.719)
DIGITS_SHARE_TOLERANCE = 0.10
# reward fidelity per round of configs/digits.yaml on the CPU (docs/experiments/2026-11-27-digits-devices.md;
# "-": within noise).
DIGITS_CPU_FIDELITY = "0.89, 0.97, 0.96, 1.06, -, -"
# The digits runs' reward classifier and judge, trained into --out/checkpoints unless --classifiers gives them.
# Each is its .ckpt and the net file beside it, which is what the run reads.
CLASSIFIER_FILES = tuple(f"{name}.ckpt{tail}" for name in ("digits_classifier", "digits_judge")
                         for tail in ("", ".net.safetensors"))
# How the fidelity step runs the generator: (compile, autocast dtype).
FIDELITY_VARIANTS: dict[str, tuple[bool, str | None]] = {"fp32": (False, None), "bf16": (True, "bfloat16")}

# A parsed YAML run config: nested mappings whose schema LightningCLI owns, so its values stay Any.
Config = dict[str, Any]
# One row of a run's rounds.csv, as csv.DictReader reads it (every cell a string).
RoundRow = dict[str, str]


class Target(TypedDict):
    """A performance target's verdict, as bench_kchoice.py writes them: PASS, FAIL, NEAR or SKIP."""

    name: str
    status: str
    detail: str


class FidelitySummary(TypedDict):
    """A finished run's fidelity row: the ratios as the table shows them, and as numbers for the verdicts."""

    reward_fidelity: str
    gain_share_fidelity: str
    ratios: list[float]
    verdicts: list[str]
    mean_gap: float
    mean_gap_stderr: float


class FidelityRun(FidelitySummary):
    """One fidelity run in gpu_check.json: its wall time beside its fidelity row."""

    seconds: float


class StepResult(TypedDict, total=False):
    """One step's entry in gpu_check.json; each step fills its own keys, ``main`` the last two."""

    ok: bool
    problems: list[str]
    error: str  # the step raised, or (roofline) the benchmark failed
    # tests
    passed: int
    tests: int
    failures: int
    errors: int
    skipped: int
    log: str
    tail: list[str]
    # roofline: bench_kchoice.py's JSON, passed through unread (so its rows stay Any)
    rows: list[dict[str, Any]]
    targets: list[Target]
    peak_gbps: float | None
    peak_source: str
    table: str
    # digits, cifar_like
    run_dir: str
    first_s: float
    after_first: list[int]
    resume_s: float
    peak_gib: list[float]
    reward_mean: list[float]
    share_0: list[float]
    # fidelity
    runs: dict[str, FidelityRun]
    # every step (main)
    seconds: float
    device_name: str


class Summary(TypedDict):
    """gpu_check.json: where and how the check ran, each step's result and the targets' verdicts."""

    device_name: str
    command: str
    date: str
    torch: str
    triton: str
    cuda: str | None
    steps: dict[str, StepResult]
    targets: list[Target]
    classifiers: str


def fail_without_cuda() -> None:
    """Exit 2 on a machine without CUDA: a GPU check that skipped would read as passed."""
    import torch

    if not torch.cuda.is_available():
        sys.stderr.write("gpu_check: FAILED: no CUDA device here (torch.cuda.is_available() is False; torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda}). This script checks the GPU "
                         "half of lightning_curate and needs a CUDA machine; it does not skip.\n")
        raise SystemExit(2)


# --------------------------------------------------------------------------- configs

def _load(name: str) -> Config:
    import yaml

    return yaml.safe_load((CONFIGS / name).read_text())


def _write(path: Path, config: Config) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _callback(config: Config, suffix: str) -> Config:
    return next(c for c in config["trainer"]["callbacks"] if c["class_path"].endswith(suffix))


def classifier_config(name: str, ckpt_dir: Path, run_dir: Path, accelerator: str, max_epochs: int) -> Config:
    """A shipped classifier config writing its checkpoint into ``ckpt_dir``."""
    cfg = _load(name)
    cfg["trainer"].update({"accelerator": accelerator, "default_root_dir": str(run_dir), "max_epochs": max_epochs,
                           "enable_progress_bar": False})
    _callback(cfg, "ModelCheckpoint")["init_args"]["dirpath"] = str(ckpt_dir)
    return cfg


def run_config(cfg: Config, run_dir: Path, *, rounds: int, accelerator: str, precision: str, compile_: bool,
               autocast: str | None, trainer_overrides: Config | None = None) -> Config:
    """A retraining config on ``accelerator`` with ``rounds`` rounds, writing into ``run_dir``."""
    cfg = copy.deepcopy(cfg)
    trainer = cfg["trainer"]
    trainer.update({"accelerator": accelerator, "devices": 1, "precision": precision,
                    "default_root_dir": str(run_dir), "enable_progress_bar": False,
                    "enable_model_summary": False, **(trainer_overrides or {})})
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("RoundProgressBar")]
    _callback(cfg, "RetrainingLoop")["init_args"]["rounds"] = rounds
    cfg["model"]["init_args"]["generator"]["init_args"].update({"compile": compile_, "autocast": autocast})
    cfg.pop("torch_num_threads", None)
    return cfg


def digits_config(out: Path, rounds: int, accelerator: str = "gpu", compile_: bool = True,
                  autocast: str | None = "bfloat16", classifier_epochs: int | None = None) -> Config:
    """configs/digits.yaml (its epochs and sizes) with its classifiers trained into ``out/checkpoints``."""
    ckpt = out / "checkpoints"
    cfg = _load("digits.yaml")
    for key, name in (("reward", "digits_classifier"), ("judge", "digits_judge")):
        ccfg = _load(f"{name}.yaml")
        epochs = classifier_epochs or ccfg["trainer"]["max_epochs"]
        path = _write(out / "configs" / f"{name}.yaml",
                      classifier_config(f"{name}.yaml", ckpt, out / "runs" / name, accelerator, epochs))
        target = (cfg["model"]["init_args"]["reward"] if key == "reward"
                  else cfg["data"]["init_args"]["source"]["init_args"]["judge"])
        target["init_args"].update({"checkpoint": str(ckpt / f"{name}.ckpt"), "train_config": str(path)})
    return run_config(cfg, out / "runs" / "digits", rounds=rounds, accelerator=accelerator, precision="32-true",
                      compile_=compile_, autocast=autocast)


def fidelity_config(out: Path, variant: str, accelerator: str = "gpu", seed: int = 0) -> Config:
    """configs/digits.yaml as shipped (all its rounds), run in ``variant`` (FIDELITY_VARIANTS) into its own folder.

    ``seed`` replaces the config's three seeds (``seed_everything``, the loop's and the held-out
    split's); 0 is the shipped run and keeps the folder name ``digits_<variant>``.
    """
    if variant not in FIDELITY_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(FIDELITY_VARIANTS)}, got {variant!r}")
    compile_, autocast = FIDELITY_VARIANTS[variant]
    rounds = _callback(_load("digits.yaml"), "RetrainingLoop")["init_args"]["rounds"]
    cfg = digits_config(out, rounds, accelerator=accelerator, compile_=compile_, autocast=autocast)
    cfg["seed_everything"] = seed
    _callback(cfg, "RetrainingLoop")["init_args"]["seed"] = seed
    cfg["data"]["init_args"]["source"]["init_args"]["seed"] = seed
    cfg["trainer"]["default_root_dir"] = str(out / "runs" / run_name(variant, seed))
    return cfg


def run_name(variant: str, seed: int) -> str:
    """The run's folder name; seed 0 keeps the shipped run's name so its records still match."""
    return f"digits_{variant}" if seed == 0 else f"digits_{variant}_seed{seed}"


def write_cifar_like(path: Path, n: int = 2048, seed: int = 0) -> Path:
    """Random uint8 images [n, 3, 32, 32] saved as a .pt for ``TensorImages`` (nothing downloads)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images}, path)
    return path


def cifar_like_config(out: Path, rounds: int, accelerator: str = "gpu", compile_: bool = True,
                      autocast: str | None = "bfloat16", precision: str = "bf16-mixed", small: bool = False) -> Config:
    """configs/cifar10.yaml's generator on random 3x32x32 images, rewarded by an untrained SmallCNN's q_0."""
    cfg = _load("cifar10.yaml")
    data = write_cifar_like(out / "data" / "cifar_like.pt", n=256 if small else 2048)
    vel = cfg["model"]["init_args"]["generator"]["init_args"]["velocity"]["init_args"]
    if small:
        vel.update({"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "time_dim": 32, "groups": 8,
                    "attention": False})
    else:  # the paper's UNet, one residual block per level: a shorter compile
        vel.update({"num_res_blocks": 1})
    gen_args = cfg["model"]["init_args"]["generator"]["init_args"]
    gen_args.update({"steps": 4 if small else 20, "sample_batch_size": 256 if small else 2048})
    cfg["model"]["init_args"].update({
        "reward": {"class_path": "lightning_curate.rewards.ClassProbabilityReward",
                   "init_args": {"classifier": {"class_path": "lightning_curate.classifiers.SmallCNN",
                                                "init_args": {"in_channels": 3, "num_classes": 10, "width": 16,
                                                              "image_size": 32}},
                                 # An untrained CNN's q_0 varies by about 4e-5 between images (H100,
                                 # 2026-11-26): scaled up so that beta * r spreads over about 1 and the
                                 # choice is not uniform.
                                 "target_class": 0, "gamma": 20000.0}},
        "num_slots": 64 if small else 1024, "chunk_size": 256 if small else 2048, "preview_size": 64 if small else 512,
    })
    cfg["data"]["init_args"]["source"] = {"class_path": "lightning_curate.data.TensorImages",
                                          "init_args": {"path": str(data), "heldout_fraction": 0.1, "seed": 0}}
    loop = _callback(cfg, "RetrainingLoop")["init_args"]
    loop.update({"initial_epochs": 1, "epochs_per_round": 1})
    return run_config(cfg, out / "runs" / "cifar_like", rounds=rounds, accelerator=accelerator,
                      precision=precision, compile_=compile_, autocast=autocast,
                      trainer_overrides={"limit_train_batches": 2 if small else 20, "log_every_n_steps": 1})


def read_rounds(run_dir: Path) -> list[RoundRow]:
    """A run's rounds.csv as written, strings and all, so the checks see what a reader of the file sees."""
    import csv

    with open(run_dir / "rounds.csv") as fh:
        return list(csv.DictReader(fh))


def check_rounds(rows: list[RoundRow], rounds: int) -> list[str]:
    """What is wrong with a finished run's rounds.csv (empty: nothing)."""
    problems = []
    got = [int(r["round"]) for r in rows]
    if got != list(range(rounds + 1)):
        problems.append(f"rounds.csv holds rounds {got}, expected 0..{rounds}")
    for r in rows:
        value = r.get("reward_mean", "")
        if value == "" or not math.isfinite(float(value)):
            problems.append(f"round {r.get('round')}: reward_mean is {value!r}")
    return problems


# --------------------------------------------------------------------------- steps

def step_tests(out: Path, timeout: float = 1200) -> StepResult:
    """Run the CUDA tests compiled (not interpreted), since the interpreter hides register and launch bugs."""
    xml = out / "tests.xml"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           f"--junitxml={xml}", "tests/ops/test_kchoice_cuda.py"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    (out / "tests.log").write_text(proc.stdout + proc.stderr)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        if suite is not None:  # a junitxml without a testsuite leaves the counts at 0: the step fails
            counts = {k: int(suite.get(k, 0)) for k in counts}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    # One skip is expected: the subprocess re-run, which only runs under TRITON_INTERPRET=1.
    ok = proc.returncode == 0 and passed > 0 and counts["skipped"] <= 1
    return {"ok": ok, "passed": passed, "tests": counts["tests"], "failures": counts["failures"],
            "errors": counts["errors"], "skipped": counts["skipped"], "log": str(out / "tests.log"),
            "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []}


def step_roofline(out: Path, quick: bool = False, timeout: float = 1200) -> StepResult:
    """Run the benchmark in its own process, so a crashed kernel fails this step and not the whole check."""
    path = out / "roofline.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_kchoice.py"), "--roofline",
                           "quick" if quick else "only", "--device", "cuda", "--json", str(path)],
                          cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "0"}, capture_output=True, text=True,
                          timeout=timeout)
    (out / "roofline.log").write_text(proc.stdout + proc.stderr)
    print(proc.stdout, flush=True)
    if proc.returncode != 0 or not path.is_file():
        return {"ok": False, "error": proc.stderr[-3000:]}
    payload = json.loads(path.read_text())
    table = proc.stdout[proc.stdout.find("Roofline on"):proc.stdout.find("Targets")].strip()
    return {"ok": True, "rows": payload["roofline"], "targets": payload["targets"], "peak_gbps": payload["peak_gbps"],
            "peak_source": payload["peak_source"], "table": table}


def _fit(config_path: Path, *extra: str) -> None:
    from lightning_curate.cli import main

    main(["fit", "-c", str(config_path), *extra])


def step_run(name: str, cfg_round1: Config, cfg_round2: Config, out: Path) -> StepResult:
    """Round 1, then a resume (--ckpt_path last) extending the run to round 2; rounds.csv and peak memory."""
    import torch

    run_dir = Path(cfg_round1["trainer"]["default_root_dir"])
    first = _write(out / "configs" / f"{name}_1.yaml", cfg_round1)
    second = _write(out / "configs" / f"{name}_2.yaml", cfg_round2)
    result: StepResult = {"run_dir": str(run_dir)}
    peaks = []
    for label, path, extra in (("first", first, ()), ("resume", second, ("--ckpt_path", "last"))):
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        _fit(path, *extra)
        seconds = round(time.perf_counter() - t0, 1)
        peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        if label == "first":
            result["first_s"] = seconds
            result["after_first"] = [int(r["round"]) for r in read_rounds(run_dir)]
        else:
            result["resume_s"] = seconds
    rows = read_rounds(run_dir)
    problems = check_rounds(rows, 2)
    if result["after_first"] != [0, 1]:
        problems.append(f"after the first run rounds.csv held {result['after_first']}, expected [0, 1]")
    if min(peaks) <= 0:
        problems.append("no CUDA memory was allocated: the run did not use the GPU")
    result.update({"ok": not problems, "problems": problems, "peak_gib": [round(p, 2) for p in peaks],
                   "reward_mean": [float(r["reward_mean"]) for r in rows]})
    if "share_0" in rows[0]:
        result["share_0"] = [float(r["share_0"]) for r in rows]
    return result


def _float(value: str | None) -> float:
    from lightning_curate.experiments.aggregate import as_float

    return as_float(value)


def _cell(value: str) -> str:
    number = _float(value)
    return f"{number:.2f}" if math.isfinite(number) else "-"


def fidelity_summary(rows: list[RoundRow]) -> FidelitySummary:
    """A finished run's fidelity: each curated round's ratios ("-": within noise), where each stands against
    the faithful band given its own error (``band_verdict``: in / near / out), and the mean learner gap."""
    from lightning_curate.loop.fidelity import band_verdict, mean_learner_gap

    curated = [r for r in rows if int(r["round"]) >= 1]
    numeric = [{k: _float(r.get(k)) for k in ("round", "learner_gap", "learner_gap_stderr", "learner_noise")}
               for r in rows]  # rounds.csv holds strings; mean_learner_gap reads numbers
    gap, gap_se = mean_learner_gap(numeric)
    keys = ("reward_fidelity", "gain_share_fidelity")
    ratios = [_float(r.get(k)) for r in curated for k in keys if _cell(r.get(k, "")) != "-"]
    verdicts = [band_verdict(_float(r.get(k)), _float(r.get(f"{k}_stderr"))) for r in curated for k in keys
                if _cell(r.get(k, "")) != "-"]
    return {"reward_fidelity": ", ".join(_cell(r.get("reward_fidelity", "")) for r in curated),
            "gain_share_fidelity": ", ".join(_cell(r.get("gain_share_fidelity", "")) for r in curated),
            "ratios": ratios, "verdicts": verdicts, "mean_gap": gap, "mean_gap_stderr": gap_se}


def step_fidelity(out: Path, variants: tuple[str, ...] = tuple(FIDELITY_VARIANTS), accelerator: str = "gpu",
                  seeds: tuple[int, ...] = (0,)) -> StepResult:
    """Each variant's whole digits run at each seed: its fidelity row, wall time and files copied to ``out``."""
    import shutil

    runs: dict[str, FidelityRun] = {}
    result: StepResult = {"runs": runs}
    problems = []
    for seed, mode in [(seed, mode) for seed in seeds for mode in variants]:
        cfg = fidelity_config(out, mode, accelerator, seed)
        variant = run_name(mode, seed).removeprefix("digits_")  # fp32, bf16_seed1, ...
        run_dir = Path(cfg["trainer"]["default_root_dir"])
        t0 = time.perf_counter()
        try:
            _fit(_write(out / "configs" / f"digits_{variant}.yaml", cfg))
            rows = read_rounds(run_dir)
        except Exception as err:  # noqa: BLE001 - one variant's failure is recorded, the next still runs
            problems.append(f"{variant}: {type(err).__name__}: {err}")
            continue
        seconds = round(time.perf_counter() - t0, 1)
        rounds = _callback(cfg, "RetrainingLoop")["init_args"]["rounds"]
        problems += [f"{variant}: {p}" for p in check_rounds(rows, rounds)]
        for name in ("rounds.csv", "round_metrics.png"):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, out / f"digits_{variant}_{name}")
        runs[variant] = {"seconds": seconds, **fidelity_summary(rows)}
        print(f"   digits {variant}: reward fidelity {runs[variant]['reward_fidelity']} "
              f"({seconds} s)", flush=True)
    result.update({"ok": not problems, "problems": problems})
    return result


def fidelity_target(step: StepResult, dev: str) -> Target:
    """PASS: every ratio inside the band; NEAR: some outside, none by more than BAND_Z of its standard
    errors; FAIL: one further out."""
    from lightning_curate.loop.fidelity import BAND_Z, FIDELITY_BAND

    low, high = FIDELITY_BAND
    name = (f"digits fidelity (reward and rewarded-set share) within {low}-{high} in every round with a ratio "
            f"(CPU: {DIGITS_CPU_FIDELITY})")
    runs = step.get("runs", {})
    if not runs:
        return {"name": name, "status": "SKIP", "detail": "no fidelity run finished"}
    verdicts = [v for run in runs.values() for v in run["verdicts"]]
    failed = step.get("problems", [])
    status = ("FAIL" if failed or "out" in verdicts else "NEAR" if "near" in verdicts or "?" in verdicts
              else "PASS")
    detail = "; ".join(f"{variant} on {dev}: reward {run['reward_fidelity']}, share {run['gain_share_fidelity']}, "
                       f"mean gap {run['mean_gap']:+.4f} +- {run['mean_gap_stderr']:.4f}, {run['seconds']} s"
                       for variant, run in runs.items())
    tally = ", ".join(f"{verdicts.count(v)} {what}" for v, what in (
        ("in", "inside"), ("near", f"outside by at most {BAND_Z:g} standard errors"), ("out", "further out")))
    failures = f"; FAILED: {'; '.join(failed)}" if failed else ""
    return {"name": name, "status": status, "detail": f"{detail} ({len(verdicts)} ratios: {tally}){failures}"}


def digits_target(run: StepResult) -> Target:
    """Compare the card's class-0 shares with the CPU run's: the same curation must drift the same way."""
    name = (f"digits class-0 share per round within {DIGITS_SHARE_TOLERANCE:.2f} of the CPU run "
            f"{list(DIGITS_CPU_SHARE0)}")
    shares = run.get("share_0")
    if not shares:
        return {"name": name, "status": "SKIP", "detail": "no share_0 column"}
    diffs = [abs(a - b) for a, b in zip(shares, DIGITS_CPU_SHARE0)]
    return {"name": name, "status": "PASS" if max(diffs) <= DIGITS_SHARE_TOLERANCE else "FAIL",
            "detail": f"CUDA {[round(s, 3) for s in shares]}"}


# --------------------------------------------------------------------------- summary

STEPS = ("tests", "roofline", "digits", "cifar_like", "fidelity")
QUICK_SKIPS = ("digits", "cifar_like", "fidelity")  # --quick: the kernel's acceptance, no runs


def write_summary(out: Path, summary: Summary) -> None:
    """Write the JSON and a markdown digest of ``summary``; called after every step, so a cut run keeps its figures."""
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2, default=str))
    dev = summary["device_name"]
    lines = [f"# gpu_check on {dev}", "",
             f"`{summary['command']}`, {summary['date']}, torch {summary['torch']}, triton {summary['triton']}, "
             f"CUDA {summary['cuda']}; digits classifiers: {summary['classifiers']}.", "",
             "| step | result | time (s) |", "|---|---|---|"]
    for step in STEPS:
        s = summary["steps"].get(step)
        if s is None:
            lines.append(f"| {step} | not run | |")
            continue
        detail = "ok" if s.get("ok") else "FAILED: " + "; ".join(s.get("problems", []) or [s.get("error", "")])
        if step == "tests":
            detail += f" ({s.get('passed')} passed, {s.get('skipped')} skipped, {s.get('failures')} failed)"
        if step in ("digits", "cifar_like") and "peak_gib" in s:
            detail += f"; peak GPU memory {max(s['peak_gib']):.2f} GiB on {dev}"
        lines.append(f"| {step} | {detail} | {s.get('seconds', '')} |")
    roof = summary["steps"].get("roofline", {})
    if roof.get("table"):
        lines += ["", "```", roof["table"], "```"]
    lines += ["", "Targets (on " + dev + "):", ""]
    lines += [f"- {t['status']} {t['name']}: {t['detail']}" for t in summary["targets"]]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the steps in order, each one's failure recorded rather than raised, so one broken step still
    leaves the others' figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check", help="folder for the summary, logs and runs")
    p.add_argument("--skip", nargs="*", default=[], choices=STEPS,
                   help="steps to leave out")
    p.add_argument("--quick", action="store_true",
                   help="the kernel's acceptance only, within 5 minutes: the CUDA tests (at most 180 s) and the "
                        "roofline at its two target shapes (at most 120 s); no runs")
    p.add_argument("--classifiers", type=Path, default=None,
                   help="a folder holding digits_classifier.ckpt and digits_judge.ckpt with their net files (say, "
                        "the ones a CPU run trained in checkpoints/): the digits runs use them instead of "
                        "training their own on the card, so that a CPU run and the GPU runs share one reward "
                        "and one judge")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds of the fidelity step's digits runs (each replaces the config's three seeds, the "
                        "held-out split's too, unlike a sweep's seed; 0 is the shipped run)")
    p.add_argument("--variants", nargs="+", default=list(FIDELITY_VARIANTS), choices=list(FIDELITY_VARIANTS),
                   help="how the fidelity step runs the generator: fp32 (no compile) and/or bf16 (autocast, compile)")
    args = p.parse_args(argv)
    if args.classifiers is not None:
        missing = [str(args.classifiers / f) for f in CLASSIFIER_FILES if not (args.classifiers / f).is_file()]
        if missing:
            sys.stderr.write(f"gpu_check: --classifiers {args.classifiers}: no {', '.join(missing)}; expected "
                             f"the folder to hold {' and '.join(CLASSIFIER_FILES)}\n")
            return 1
    os.environ["TRITON_INTERPRET"] = "0"  # the kernels must compile, not be interpreted
    fail_without_cuda()
    import torch
    import triton

    out = Path(args.out).resolve()
    if (out / "runs").exists():
        sys.stderr.write(f"gpu_check: {out / 'runs'} exists; pass a new --out\n")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    if args.classifiers is not None:
        import shutil

        (out / "checkpoints").mkdir(exist_ok=True)
        for name in CLASSIFIER_FILES:
            shutil.copyfile(args.classifiers / name, out / "checkpoints" / name)
    dev = torch.cuda.get_device_name()
    summary: Summary = {"device_name": dev, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "triton": triton.__version__,
               "cuda": torch.version.cuda, "steps": {}, "targets": [],
               "classifiers": str(args.classifiers.resolve()) if args.classifiers else "trained on the card"}
    print(f"gpu_check on {dev} -> {out}", flush=True)
    if args.quick:
        args.skip = list(dict.fromkeys([*args.skip, *QUICK_SKIPS]))
    steps: dict[str, Callable[[], StepResult]] = {
        "tests": lambda: step_tests(out, timeout=180 if args.quick else 1200),
        "roofline": lambda: step_roofline(out, quick=args.quick, timeout=120 if args.quick else 1200),
        "digits": lambda: step_run("digits", digits_config(out, 1), digits_config(out, 2), out),
        "cifar_like": lambda: step_run("cifar_like", cifar_like_config(out, 1), cifar_like_config(out, 2), out),
        "fidelity": lambda: step_fidelity(out, tuple(dict.fromkeys(args.variants)),
                                          seeds=tuple(dict.fromkeys(args.seeds))),
    }
    for name, fn in steps.items():
        if name in args.skip:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - a failed step is recorded, the others still run
            if isinstance(err, KeyboardInterrupt):
                raise
            result = StepResult(ok=False, error=f"{type(err).__name__}: {err}")
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["device_name"] = dev
        summary["steps"][name] = result
        write_summary(out, summary)  # after every step: a run cut short still leaves its figures
        print(f"== {name}: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s "
              + ("" if result["ok"] else str(result.get("problems") or result.get("error"))), flush=True)
    summary["targets"] = list(summary["steps"].get("roofline", {}).get("targets", []))
    if "digits" in summary["steps"]:
        summary["targets"].append(digits_target(summary["steps"]["digits"]))
    if "fidelity" in summary["steps"]:
        summary["targets"].append(fidelity_target(summary["steps"]["fidelity"], dev))
    write_summary(out, summary)
    failed = [n for n, s in summary["steps"].items() if not s["ok"]]
    print(f"\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    for t in summary["targets"]:
        print(f"  {t['status']:4s}  {t['name']}: {t['detail']}")
    if failed:
        print(f"gpu_check: FAILED steps: {', '.join(failed)} (see {out})", file=sys.stderr)
        return 1
    print(f"gpu_check: all steps passed on {dev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
