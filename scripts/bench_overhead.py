#!/usr/bin/env python
"""What lightning_curate costs over a bare PyTorch loop doing the same work.

For each size it writes two programs into a temporary folder and runs each in
its own process, alternating, ``--repeats`` times each (default 5), with one
torch thread; the fastest run of each program (least CPU time: the one the
shared machine disturbed least) is compared, and every run's CPU time printed:

* ``bare_loop.py``: a plain PyTorch script. 8 Gaussians on a ring, the same
  MLP velocity network (sinusoidal time embedding, SiLU layers), flow matching
  with AdamW and an EMA of the weights, pre-training epochs on the real data,
  then rounds: ``num_slots * K`` candidates by the config's ODE steps (Euler or RK4) from the EMA net
  (2,048 at a time, which on a CPU is faster than all at once),
  the clipped-distance reward and nearest-centre mode labels, Bradley-Terry
  curation by Gumbel-max, the winners saved with ``torch.save``, and
  ``epochs_per_round`` epochs on the winners, the EMA restarted from the live
  weights at each round's start (``ema_reset: round``). Every epoch shuffles and walks
  the whole set in batches, so it takes as many optimizer steps as the package.
* ``package.yaml``: ``configs/mog8.yaml`` with the same sizes, run through
  ``lightning_curate.cli.main`` (what ``lightning-curate fit`` runs), with its
  progress bar, CSV logger and checkpoints (one at each round's end) as
  configured; only the per-round plots are off (the bare loop draws none).

Both time their own work from after the imports (``seconds``, and the
process CPU time ``cpu_seconds``, steadier than wall time on a shared
machine), and each process's wall time is printed too. Phases: ``train`` (the training epochs),
``generate``, ``reward``, ``curate``, ``store`` (the package's from its round
manifests' ``timings``) and, for the package only, ``round_metrics`` (the
rest of each round: commit, sample distance, theory columns, ``rounds.csv``),
``checkpoint`` (``Trainer.save_checkpoint``), ``startup`` (config parsing and
setup until training starts) and ``other`` (the rest: the trainer's own
per-step and per-epoch work, logging, the progress bar, the summary). It prints a table per
size and, with ``--json``, one JSON line with every number.

``--whole`` times the whole processes instead, as a user times the command: the bare
loop's ``python bare_loop.py`` against ``python -m lightning_curate fit -c package.yaml``
(what the ``lightning-curate`` console script runs) with everything the shipped config does
(startup, per-round metrics, the figures, checkpoints; no timer callback). Each process's
wall time and CPU time (user + system, of the child) are measured from outside, over
``--pairs`` alternating pairs (default 3; the first pair runs the bare loop first, the next
the package first, and so on), and the median of the pairs' wall ratios is reported, with
the median wall and CPU of each program.

Sizes: ``main`` is ``configs/mog8.yaml`` as shipped (2,000 slots, 8 rk4
steps, batch 256, 8,000 real points, 40 + 10 x 64 epochs; ``--sizes main8``
runs its earlier setting, 24 Euler steps and 10 x 8 epochs); ``large`` is the
10,000-slot job of the performance issue (20 steps, batch 512, 20,000 real
points, 37 + 10 x 20 epochs). ``tiny`` is a few-second smoke size for tests.

Examples::

    python scripts/bench_overhead.py                 # main and large
    python scripts/bench_overhead.py --sizes tiny --json
    python scripts/bench_overhead.py --sizes main --record   # docs/experiments/records/bench_overhead_main.json
    python scripts/bench_overhead.py --whole --sizes large --record   # records/bench_overhead_whole_large.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Optional

import yaml

from lightning_curate.experiments.records import DEFAULT_FOLDER, write_record

REPO = Path(__file__).resolve().parents[1]
MAIN_CONFIG = REPO / "configs" / "mog8.yaml"
PHASES = ("train", "generate", "reward", "curate", "store", "round_metrics", "checkpoint", "startup", "other")

__all__ = ["SIZES", "bare_loop_source", "format_whole", "main", "package_config", "run_size", "run_whole"]

# The work of each size: what both programs do.
SIZES = {
    # The main job of 0.2.0 (batches of 256, one pass an epoch); today's draws 8 batches of 1,024 an epoch.
    "main": dict(num_slots=2000, num_candidates=4, solver="rk4", steps=8, batch_size=256, num_train=8000,
                 initial_epochs=40, epochs_per_round=64, rounds=10),
    "large": dict(num_slots=10000, num_candidates=4, solver="euler", steps=20, batch_size=512, num_train=20000,
                  initial_epochs=37, epochs_per_round=20, rounds=10),
    "main8": dict(num_slots=2000, num_candidates=4, solver="euler", steps=24, batch_size=256, num_train=8000,
                  initial_epochs=40, epochs_per_round=8, rounds=10),
    "tiny": dict(num_slots=256, num_candidates=4, solver="euler", steps=4, batch_size=128, num_train=512,
                 initial_epochs=2, epochs_per_round=1, rounds=2),
}

BARE_LOOP = '''
"""A bare PyTorch loop: curated self-consuming retraining of flow matching on 8 Gaussians."""
import json, math, sys, tempfile, time
import torch
from torch import nn

work = json.loads(sys.argv[1])
torch.set_num_threads(work["threads"])
torch.manual_seed(0)
N, K, STEPS, BS = work["num_slots"], work["num_candidates"], work["steps"], work["batch_size"]
BETA, DECAY, LR, CHUNK = 1.0, 0.99, 0.002, 2048
angles = torch.arange(8) * (2 * math.pi / 8)
centers = 4.0 * torch.stack([angles.cos(), angles.sin()], 1)
targets = centers[[0, 1]]
real = centers[torch.arange(work["num_train"]) % 8] + 0.3 * torch.randn(work["num_train"], 2)


class Velocity(nn.Module):
    def __init__(self, hidden=128, depth=3, time_dim=32):
        super().__init__()
        half = time_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half))
        layers, width = [], 2 + time_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 2))

    def forward(self, x, t):
        a = (t * 1000.0)[:, None] * self.freqs[None]
        return self.net(torch.cat([x, a.sin(), a.cos()], 1))


net = Velocity()
ema = Velocity().requires_grad_(False)
ema.load_state_dict(net.state_dict())
opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
live_p, ema_p = list(net.parameters()), list(ema.parameters())
times = dict.fromkeys(("train", "generate", "reward", "curate", "store"), 0.0)
cpu_times = dict(times)


class Phase:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        times[self.name] += time.perf_counter() - self.start
        cpu_times[self.name] += time.process_time() - self.start_cpu
out_dir = tempfile.mkdtemp()


def ode_step(x, t, h):
    """One step of the config's solver: Euler, or classic RK4 (4 network evaluations a step, the work of
    torchdiffeq's rk4, which takes the 3/8 rule)."""
    def v(y, s):
        return ema(y, torch.full((y.shape[0],), s))
    if work["solver"] == "euler":
        return x + h * v(x, t)
    assert work["solver"] == "rk4", work["solver"]
    k1 = v(x, t)
    k2 = v(x + h / 2 * k1, t + h / 2)
    k3 = v(x + h / 2 * k2, t + h / 2)
    k4 = v(x + h * k3, t + h)
    return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def train(data, epochs, restart_ema=False):
  with Phase("train"):
    if restart_ema:  # the config's ema_reset: round: the average restarts from the live weights
        torch._foreach_copy_(ema_p, live_p)
    for _ in range(epochs):
        perm = torch.randperm(data.shape[0])
        for i in range(0, data.shape[0], BS):
            x1 = data[perm[i:i + BS]]
            x0 = torch.randn_like(x1)
            t = torch.rand(x1.shape[0])
            xt = (1 - t[:, None]) * x0 + t[:, None] * x1
            loss = ((net(xt, t) - (x1 - x0)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema_p, live_p, 1 - DECAY)


begin, begin_cpu = time.perf_counter(), time.process_time()
train(real, work["initial_epochs"])
rows = []
for rnd in range(work["rounds"] + 1):
    with torch.no_grad():
        with Phase("generate"):
            x = torch.randn(N * K, 2)
            for c in range(0, N * K, CHUNK):  # cache-sized chunks: faster than all at once
                xc = x[c:c + CHUNK]
                for i in range(STEPS):
                    xc = ode_step(xc, i / STEPS, 1 / STEPS)
                x[c:c + CHUNK] = xc
        with Phase("reward"):
            r = -(torch.cdist(x, targets).min(1).values - 0.5).clamp_min(0)
            labels = torch.cdist(x, centers).argmin(1)
            shares = torch.bincount(labels, minlength=8) / labels.numel()
        with Phase("curate"):
            gumbel = -torch.empty(N, K).exponential_().log()
            pick = (BETA * r.view(N, K) + gumbel).argmax(1)
            winners = x.view(N, K, 2)[torch.arange(N), pick]
        with Phase("store"):
            torch.save({"x": winners, "rewards": r.view(N, K)[torch.arange(N), pick]}, f"{out_dir}/round_{rnd}.pt")
    rows.append({"round": rnd, "reward_mean": float(r.mean()), "share_mode0": float(shares[0])})
    if rnd < work["rounds"]:
        train(winners, work["epochs_per_round"], restart_ema=True)
seconds, cpu = time.perf_counter() - begin, time.process_time() - begin_cpu
times["other"] = seconds - sum(times.values())
cpu_times["other"] = cpu - sum(cpu_times.values())
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "phases": times, "cpu_phases": cpu_times, "rows": rows}))
'''

TIMER = '''
"""Times the package's phases from outside (wall and CPU), by wrapping the methods that do them."""
import time
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback
from lightning_curate.data.blending import BlendingDataModule
from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.loop.curation_module import CurationModule
from lightning_curate.models.flow_matching import FlowMatching
from lightning_curate.store.rounds import RoundStore

KEYS = ("train", "generate", "reward", "curate", "store", "round", "checkpoint", "startup")
SECONDS, CPU = dict.fromkeys(KEYS, 0.0), dict.fromkeys(KEYS, 0.0)
STARTED = [time.perf_counter(), time.process_time()]


def _timed(key, fn):
    def wrapper(*args, **kwargs):
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - start
            CPU[key] += time.process_time() - start_cpu
    return wrapper


for cls, name, key in ((FlowMatching, "sample", "generate"), (CurationModule, "score", "reward"),
                       (BlendingDataModule, "label", "reward"), (CurationModule, "_curate_blocks", "curate"),
                       (RoundStore, "write_part", "store"), (RetrainingLoop, "_curate", "round"),
                       (Trainer, "save_checkpoint", "checkpoint")):
    setattr(cls, name, _timed(key, getattr(cls, name)))


class EpochTimer(Callback):
    """The first callback: its epoch end runs before the round's curation and the checkpoint."""

    def on_train_start(self, trainer, pl_module):
        SECONDS["startup"] = time.perf_counter() - STARTED[0]
        CPU["startup"] = time.process_time() - STARTED[1]

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer, pl_module):
        SECONDS["train"] += time.perf_counter() - self._start[0]
        CPU["train"] += time.process_time() - self._start[1]
'''

PACKAGE_RUNNER = '''
import json, sys, time
from pathlib import Path
import bench_timer
from lightning_curate.cli import main

cfg = sys.argv[1]
start, start_cpu = time.perf_counter(), time.process_time()
bench_timer.STARTED[:] = [start, start_cpu]
main(["fit", "-c", cfg])
seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu


def phases(timed, total):
    out = {k: timed[k] for k in ("train", "generate", "reward", "curate", "store")}
    # The rest of each round: commit, sample distance, theory columns, rounds.csv.
    out["round_metrics"] = timed["round"] - sum(out[k] for k in ("generate", "reward", "curate", "store"))
    out["checkpoint"], out["startup"] = timed["checkpoint"], timed["startup"]
    out["other"] = total - sum(out.values())
    return out


print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "phases": phases(bench_timer.SECONDS, seconds),
                  "cpu_phases": phases(bench_timer.CPU, cpu)}))
'''


def bare_loop_source() -> str:
    """The bare PyTorch program, as written to ``bare_loop.py``."""
    return textwrap.dedent(BARE_LOOP).lstrip()


def package_config(work: dict, root: Path, threads: int, whole: bool = False) -> dict:
    """``configs/mog8.yaml`` with the sizes of ``work`` and its run in ``root``.

    By default the per-round plots are off and the phase timer is the first callback; ``whole``: the
    config as shipped (its plots, no timer), for the whole-process comparison.
    """
    cfg = copy.deepcopy(yaml.safe_load(MAIN_CONFIG.read_text()))
    cfg["torch_num_threads"] = threads
    trainer = cfg["trainer"]
    trainer["default_root_dir"] = str(root)
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("RetrainingLoop"):
            callback["init_args"].update(rounds=work["rounds"], epochs_per_round=work["epochs_per_round"],
                                         initial_epochs=work["initial_epochs"])
            if not whole:
                callback["init_args"]["plots"] = False
    if not whole:
        trainer["callbacks"].insert(0, {"class_path": "bench_timer.EpochTimer"})
    model = cfg["model"]["init_args"]
    model.update(num_slots=work["num_slots"], num_candidates=work["num_candidates"])
    model["generator"]["init_args"].update(solver=work["solver"], steps=work["steps"])
    data = cfg["data"]["init_args"]
    data["batch_size"] = work["batch_size"]
    data["steps_per_epoch"] = None  # one pass over the training set an epoch, as the bare loop takes
    data["source"]["init_args"]["num_train"] = work["num_train"]
    return cfg


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float) -> tuple[dict, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def run_size(name: str, threads: int = 1, timeout: float = 1800, repeats: int = 5) -> dict:
    """Run the bare loop, then the package, on size ``name``, ``repeats`` times alternating; the
    fastest run of each (least CPU time: the least disturbed on a shared machine) and the ratios."""
    work = {**SIZES[name], "threads": threads}
    bares, packages = [], []
    with tempfile.TemporaryDirectory(prefix=f"bench_overhead_{name}_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "bare_loop.py").write_text(bare_loop_source())
        (tmp / "bench_timer.py").write_text(textwrap.dedent(TIMER).lstrip())
        (tmp / "run_package.py").write_text(textwrap.dedent(PACKAGE_RUNNER).lstrip())
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(tmp), str(REPO), os.environ.get("PYTHONPATH", "")])}
        for repeat in range(repeats):
            root = tmp / f"run{repeat}"
            (tmp / "package.yaml").write_text(yaml.safe_dump(package_config(work, root, threads), sort_keys=False))
            bare, bare_wall = _run([sys.executable, "bare_loop.py", json.dumps(work)], tmp, env, timeout)
            bares.append({**bare, "wall": bare_wall})
            package, package_wall = _run([sys.executable, "run_package.py", "package.yaml"], tmp, env, timeout)
            packages.append({**package, "wall": package_wall})
    bare = min(bares, key=lambda run: run["cpu_seconds"])
    package = min(packages, key=lambda run: run["cpu_seconds"])
    return {
        "size": name, "work": work, "optimizer_steps": _optimizer_steps(work), "repeats": repeats,
        "bare": bare, "package": package,
        "ratio": package["seconds"] / bare["seconds"], "ratio_wall": package["wall"] / bare["wall"],
        "ratio_cpu": package["cpu_seconds"] / bare["cpu_seconds"],
        "cpu_seconds_of_each_run": {"bare": [r["cpu_seconds"] for r in bares],
                                    "package": [r["cpu_seconds"] for r in packages]},
    }


def _run_whole(cmd: list[str], cwd: Path, env: dict, timeout: float) -> dict:
    """One whole process: its wall time and CPU time (user + system), measured from outside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}


WHOLE_PACKAGE_COMMAND = ["-m", "lightning_curate", "fit", "-c", "package.yaml"]


def run_whole(name: str, threads: int = 1, timeout: float = 1800, pairs: int = 3) -> dict:
    """The whole bare-loop process against the whole ``lightning-curate fit`` process on size ``name``.

    ``pairs`` alternating pairs (bare first, then package first, ...); each pair's wall and CPU
    ratios, and their medians: the figure a user timing both commands would see.
    """
    work = {**SIZES[name], "threads": threads}
    runs: dict[str, list[dict]] = {"bare": [], "package": []}
    with tempfile.TemporaryDirectory(prefix=f"bench_overhead_whole_{name}_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "bare_loop.py").write_text(bare_loop_source())
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        commands = {"bare": [sys.executable, "bare_loop.py", json.dumps(work)],
                    "package": [sys.executable, *WHOLE_PACKAGE_COMMAND]}
        for pair in range(pairs):
            root = tmp / f"run{pair}"
            (tmp / "package.yaml").write_text(
                yaml.safe_dump(package_config(work, root, threads, whole=True), sort_keys=False))
            order = ("bare", "package") if pair % 2 == 0 else ("package", "bare")
            for program in order:
                runs[program].append(_run_whole(commands[program], tmp, env, timeout))
            if not (root / "rounds.csv").is_file():
                raise RuntimeError(f"the package run of pair {pair} left no rounds.csv in {root}")
    ratios = [p["wall"] / b["wall"] for b, p in zip(runs["bare"], runs["package"])]
    cpu_ratios = [p["cpu"] / b["cpu"] for b, p in zip(runs["bare"], runs["package"])]
    median = {program: {key: statistics.median(r[key] for r in runs[program]) for key in ("wall", "cpu")}
              for program in runs}
    return {
        "size": name, "mode": "whole", "work": work, "optimizer_steps": _optimizer_steps(work), "pairs": pairs,
        "package_command": "python " + shlex.join(WHOLE_PACKAGE_COMMAND), "runs": runs,
        "ratios_wall": ratios, "ratios_cpu": cpu_ratios, "median": median,
        "ratio_wall": statistics.median(ratios), "ratio_cpu": statistics.median(cpu_ratios),
    }


def format_whole(result: dict) -> str:
    """Each pair's wall and CPU seconds of both processes, and the median ratios."""
    w = result["work"]
    lines = [f"whole processes, size {result['size']}: {w['num_slots']} slots x K={w['num_candidates']}, "
             f"{w['steps']} {w['solver']} steps, batch {w['batch_size']}, {result['optimizer_steps']} optimizer "
             f"steps, {w['rounds']} rounds, {w['threads']} thread(s)",
             f"{'pair':>6} {'bare wall':>10} {'pkg wall':>9} {'ratio':>6} {'bare cpu':>9} {'pkg cpu':>8} {'ratio':>6}"]
    runs = result["runs"]
    for i, (bare, package) in enumerate(zip(runs["bare"], runs["package"])):
        lines.append(f"{i:>6} {bare['wall']:10.2f} {package['wall']:9.2f} {result['ratios_wall'][i]:6.2f} "
                     f"{bare['cpu']:9.2f} {package['cpu']:8.2f} {result['ratios_cpu'][i]:6.2f}")
    m = result["median"]
    lines.append(f"{'median':>6} {m['bare']['wall']:10.2f} {m['package']['wall']:9.2f} {result['ratio_wall']:6.2f} "
                 f"{m['bare']['cpu']:9.2f} {m['package']['cpu']:8.2f} {result['ratio_cpu']:6.2f}")
    lines.append(f"whole package / bare = {result['ratio_wall']:.2f}x wall, {result['ratio_cpu']:.2f}x CPU "
                 f"(median of {result['pairs']} alternating pairs)")
    return "\n".join(lines)


def _optimizer_steps(work: dict) -> int:
    per_epoch = lambda n: -(-n // work["batch_size"])  # noqa: E731
    return (work["initial_epochs"] * per_epoch(work["num_train"])
            + work["rounds"] * work["epochs_per_round"] * per_epoch(work["num_slots"]))


def format_result(result: dict) -> str:
    """A table: wall and CPU seconds per phase for both programs, and the ratios."""
    w = result["work"]
    bare, package = result["bare"], result["package"]
    lines = [f"size {result['size']}: {w['num_slots']} slots x K={w['num_candidates']}, "
             f"{w['steps']} {w['solver']} steps, "
             f"batch {w['batch_size']}, {result['optimizer_steps']} optimizer steps, {w['rounds']} rounds, "
             f"{w['threads']} thread(s)",
             f"{'phase':>13} {'bare wall':>10} {'pkg wall':>9} {'bare cpu':>9} {'pkg cpu':>8} {'cpu ratio':>9}"]
    for phase in PHASES + ("total",):
        if phase == "total":
            row = [bare["seconds"], package["seconds"], bare["cpu_seconds"], package["cpu_seconds"]]
        else:
            row = [bare["phases"].get(phase, 0.0), package["phases"].get(phase, 0.0),
                   bare["cpu_phases"].get(phase, 0.0), package["cpu_phases"].get(phase, 0.0)]
        ratio = f"{row[3] / row[2]:9.2f}" if row[2] > 1e-2 else f"{'-':>9}"
        lines.append(f"{phase:>13} {row[0]:10.2f} {row[1]:9.2f} {row[2]:9.2f} {row[3]:8.2f} {ratio}")
    lines.append(f"{'process wall':>13} {bare['wall']:10.2f} {package['wall']:9.2f}   (imports included)")
    runs = result.get("cpu_seconds_of_each_run")
    if runs and result.get("repeats", 1) > 1:
        each = "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in runs[k]) for k in ("bare", "package"))
        lines.append(f"fastest of {result['repeats']} alternating runs each (CPU s: {each})")
    lines.append(f"package / bare = {result['ratio']:.2f}x wall, {result['ratio_cpu']:.2f}x CPU")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    """Run the sizes, print a table each (and ``--json``); with ``--record``, one JSON record per size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["main", "large"], choices=sorted(SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both programs")
    parser.add_argument("--repeats", type=int, default=5,
                        help="runs of each program, alternating; the fastest of each is compared (default 5)")
    parser.add_argument("--whole", action="store_true",
                        help="time the whole processes as shipped (plots, startup and all), not the phases")
    parser.add_argument("--pairs", type=int, default=3,
                        help="with --whole: alternating pairs of runs; the median ratio is reported (default 3)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line with every number")
    parser.add_argument("--record", nargs="?", type=Path, const=REPO / DEFAULT_FOLDER, default=None,
                        metavar="FOLDER", help=f"also write each size's figures as a JSON record, "
                                               f"bench_overhead_<size>.json (with --whole "
                                               f"bench_overhead_whole_<size>.json; default folder {DEFAULT_FOLDER})")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.pairs < 1:
        parser.error(f"--pairs must be >= 1, got {args.pairs}")
    results = []
    for name in args.sizes:
        if args.whole:
            result = run_whole(name, threads=args.threads, pairs=args.pairs)
            print(format_whole(result), flush=True)
        else:
            result = run_size(name, threads=args.threads, repeats=args.repeats)
            print(format_result(result), flush=True)
        results.append(result)
        if args.record is not None:
            stem = f"bench_overhead_whole_{name}" if args.whole else f"bench_overhead_{name}"
            path = write_record(stem, result,
                                shlex.join(["python", "scripts/bench_overhead.py", *argv]), args.record, device="cpu")
            print(f"record: {path}", flush=True)
        print(flush=True)
    if args.json:
        print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
