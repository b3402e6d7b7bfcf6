#!/usr/bin/env python
"""Benchmark ``kchoice`` against the ways curation is usually written.

One run, side by side, in the style of Liger-Kernel's benchmark scripts:

* ``kchoice``      : ``lightning_curate.kchoice`` with ``backend="auto"`` (the torch
                     path on the CPU, the Triton kernel on CUDA); it returns the
                     index, its log-probability and the row logsumexp, and gathers
                     the winners when candidates are given.
* ``(a) multinom`` : ``torch.multinomial(torch.softmax(beta * r, -1), 1)`` plus a
                     gather of the candidates (index only, no log-probabilities).
* ``(b) loop``     : a per-slot Python loop (softmax of the slot's K rewards,
                     ``torch.multinomial``, ``.item()``, index the candidate), as
                     public reproductions of the paper curate. Only run for
                     ``N <= --loop-max-n``; ``-`` elsewhere.

Shapes: every ``N x K x D`` of ``--n``, ``--k``, ``--d`` (``D = 0``: no candidates;
``D > 0``: ``[N, K, D]`` candidates, float32 on the CPU, float16 on CUDA). Shapes
whose candidate tensor exceeds ``--mem-budget-gib`` are skipped and marked.

Timing: ``triton.testing.do_bench`` (median) on CUDA; on the CPU
``time.perf_counter`` around ``--warmup`` + ``--repeats`` calls, median.
Effective bandwidth counts rewards read + index/log_prob/logsumexp written +
gathered candidates read and written.

Memory (``--memory``; always on CUDA): the extra peak memory of one call over its
inputs, split into the outputs it returns and the rest (``work``), reported as
MiB and as a multiple of the rewards tensor's size. CUDA:
``torch.cuda.max_memory_allocated`` deltas. CPU: one fresh subprocess per shape
and method, comparing the peak RSS after allocating the inputs and after the call
(``VmHWM`` with the peak reset through /proc/self/clear_refs on Linux, since a
child's ``ru_maxrss`` there starts at its parent's peak; ``ru_maxrss`` elsewhere).

Roofline (CUDA; ``--roofline auto`` runs it first, ``only`` runs nothing else):
at 1e6 x 16, 1e7 x 4, 1e5 x 256 (one winner) and 1e6 x 16 with m = 4, float32
rewards, no candidates: the bytes one call must move (rewards read once; index,
log_prob and logsumexp written), ``kchoice``'s achieved GB/s and percent of the
card's peak DRAM bandwidth (a table of known cards by ``torch.cuda.get_device_name``;
an unknown card says so, or pass ``--peak-gbps``), beside ``softmax +
torch.multinomial``, eager Gumbel-argmax (top-m for m > 1) and ``torch.compile``d
Gumbel-argmax on the same tensors, and the kernel alone (``kchoice_triton``,
without the op's argument checks; the reward values are checked inside the kernel). Without
a GPU it says so and runs the CPU comparison. Also timed there: the compact
outputs (int32 index, no log-probabilities) and ``rewards.sum(1)``, the
streaming read the op is measured against; each method's effective bandwidth
is the bytes it must move (``method_bytes``) over its time.

Examples::

    python scripts/bench_kchoice.py --quick
    python scripts/bench_kchoice.py                         # the full grid
    python scripts/bench_kchoice.py --n 10000 1000000 --k 4 16 --memory --json out.json
    python scripts/bench_kchoice.py --device cuda           # Triton kernel, fp16 candidates
    python scripts/bench_kchoice.py --roofline only --json roofline.json   # the roofline table alone
    python scripts/bench_kchoice.py --draws --draws-ref /tmp/ref.py --record docs/experiments/records/kchoice_draws.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, Literal, Sequence, TypedDict

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(REPO))

if "--draws" in sys.argv[1:]:
    # The draws run the kernels under Triton's interpreter: set before torch (or anything) imports triton.
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from lightning_curate.ops.kchoice import KChoice, kchoice  # noqa: E402

DEFAULT_N = (10_000, 100_000, 1_000_000)
DEFAULT_K = (2, 4, 16, 256)
DEFAULT_D = (0, 64)
QUICK_N = (1_000, 2_000)
QUICK_K = (4, 16)
QUICK_D = (0, 64)
QUICK_MEMORY_SHAPES = ("2000,16,0",)
SEED = 1234
GIB = 1 << 30
MIB = 1 << 20

METHODS = ("kchoice", "multinomial", "loop")
# Each method's keys in a speed row, spelled out because a TypedDict's keys must be literals.
SPEED_KEYS: dict[str, tuple[Literal["kchoice_ms", "multinomial_ms", "loop_ms"],
                            Literal["kchoice_timing", "multinomial_timing", "loop_timing"]]] = {
    "kchoice": ("kchoice_ms", "kchoice_timing"),
    "multinomial": ("multinomial_ms", "multinomial_timing"),
    "loop": ("loop_ms", "loop_timing"),
}

# Targets: (name, N, K, D). Checked only when the shape was run.
TARGET_SPEED_A = (1_000_000, 16, 0)      # kchoice >= 2x faster than (a)
TARGET_SPEED_B = (10_000, 4, 0)          # kchoice >= 200x faster than (b)
TARGET_BANDWIDTH = (1_000_000, 16, 64)   # CUDA: >= 70% of peak DRAM bandwidth
MEMORY_MIN_REWARDS_BYTES = 8 * MIB       # below this, RSS noise dominates: not judged

# A method's timing: its median and spread in ms (min/max on the CPU, p20/p80 on CUDA).
Timing = dict[str, float]
# A comparison method: (rewards, candidates or None, beta) -> whatever it returns (its outputs).
Runner = Callable[[torch.Tensor, torch.Tensor | None, float], object]


class Target(TypedDict):
    """A target's verdict (PASS, FAIL or SKIP), as printed and written to the JSON."""

    name: str
    status: str
    detail: str


class _SpeedShape(TypedDict):
    N: int
    K: int
    D: int
    device: str
    candidate_dtype: str


class SpeedRow(_SpeedShape, total=False):
    """One shape of the comparison grid; a skipped shape holds only ``skipped``, the loop only small N."""

    skipped: str
    kchoice_ms: float
    kchoice_timing: Timing
    multinomial_ms: float
    multinomial_timing: Timing
    loop_ms: float
    loop_timing: Timing
    ratio_a: float
    ratio_b: float
    bytes: int
    gbps: float
    peak_fraction: float


class MemoryFigures(TypedDict):
    """One call's extra peak memory (``memory_row``), split so that returned outputs are not called overhead."""

    rewards_mib: float
    extra_mib: float
    outputs_mib: float
    work_mib: float
    work_over_rewards: float


class CpuMemoryFigures(MemoryFigures, total=False):
    """The CPU child's figures and how it read the peak RSS, since an unreset peak may under-count."""

    peak_reset: bool
    rss_source: str


class _MemoryShape(TypedDict):
    N: int
    K: int
    D: int
    method: str


class MemoryRow(_MemoryShape, total=False):
    """A memory table row: the shape and method, then its figures or why it was ``skipped``."""

    skipped: str
    rewards_mib: float
    extra_mib: float
    outputs_mib: float
    work_mib: float
    work_over_rewards: float
    peak_reset: bool
    rss_source: str


class RooflineRow(TypedDict):
    """One roofline shape on one card: every method's median time, bandwidths and speedups."""

    device_name: str
    N: int
    K: int
    m: int
    bytes: int
    kchoice_ms: float
    kchoice_compact_ms: float
    kernel_ms: float
    sum_ms: float
    multinomial_ms: float
    gumbel_eager_ms: float
    gumbel_compiled_ms: float
    gbps: float
    kernel_gbps: float
    kchoice_compact_gbps: float
    sum_gbps: float
    gumbel_compiled_gbps: float
    roofline_ms: float | None
    peak_fraction: float | None
    kernel_peak_fraction: float | None
    speedup_multinomial: float
    speedup_gumbel_eager: float
    speedup_gumbel_compiled: float


class _MachineBase(TypedDict):
    python: str
    platform: str
    torch: str
    cpu_count: int | None
    cpus_usable: int | None
    torch_threads: int
    cpu: str
    device: str
    triton: str | None
    device_name: str


class MachineInfo(_MachineBase, total=False):
    """Where the figures were measured, so that a JSON record can be read without the console."""

    device_memory_gib: float


class DrawsFigures(TypedDict, total=False):
    """``--draws``'s figures: the simulation always, the comparison with a reference kernel when given."""

    seed: int
    simulated_fast_log: list[dict[str, float]]
    reference: str
    interpreter_vs_reference: list[dict[str, float]]


# --------------------------------------------------------------------------- inputs

def candidate_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, where the gather's bandwidth is what is measured; float32 on the CPU, which has no fast fp16."""
    return torch.float16 if device.type == "cuda" else torch.float32


def make_inputs(n: int, k: int, d: int, device: torch.device,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards ``[N, K]`` float32 and, for ``d > 0``, candidates ``[N, K, D]``.

    Built without temporaries larger than the tensors themselves, so that the
    CPU memory measurement starts from a peak equal to the live inputs.
    """
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    rewards = torch.randn(n, k, device=device, generator=gen)
    candidates = None
    if d > 0:
        candidates = torch.empty(n, k, d, dtype=candidate_dtype(device), device=device)
        # Touch every page (untouched pages would read as the shared zero page);
        # each candidate holds its own index mod 1024 so a gather can be spot-checked.
        rows_per_chunk = max(1, (16 * MIB) // max(1, k * d * candidates.element_size()))
        ids = torch.arange(k, device=device, dtype=torch.float32)
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            col = (torch.arange(start, stop, device=device, dtype=torch.float32)[:, None] * k + ids) % 1024
            candidates[start:stop] = col[:, :, None].to(candidates.dtype)
    return rewards, candidates


# --------------------------------------------------------------------------- methods

BACKEND = "auto"  # set from --backend


def run_kchoice(rewards: torch.Tensor, candidates: torch.Tensor | None, beta: float) -> KChoice:
    """The op under test, with the backend ``--backend`` picked and a fixed seed so runs repeat."""
    return kchoice(rewards, beta, seed=SEED, candidates=candidates, backend=BACKEND)


def run_multinomial(rewards: torch.Tensor, candidates: torch.Tensor | None,
                    beta: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Baseline (a): one ``torch.multinomial`` over the softmax, then a gather."""
    index = torch.multinomial(torch.softmax(beta * rewards, -1), 1)[:, 0]
    chosen = None
    if candidates is not None:
        chosen = candidates[torch.arange(candidates.shape[0], device=candidates.device), index]
    return index, chosen


def run_loop(rewards: torch.Tensor, candidates: torch.Tensor | None, beta: float) -> torch.Tensor:
    """Baseline (b): the per-slot Python loop of public reproductions."""
    rows: list[torch.Tensor] = []  # the chosen candidates, with candidates
    picks: list[int] = []  # the chosen indices, without
    for i in range(rewards.shape[0]):
        p = torch.softmax(beta * rewards[i], -1)
        j = int(torch.multinomial(p, 1).item())
        if candidates is not None:
            rows.append(candidates[i, j])
        else:
            picks.append(j)
    if candidates is not None:
        return torch.stack(rows)
    return torch.tensor(picks)


RUNNERS: dict[str, Runner] = {"kchoice": run_kchoice, "multinomial": run_multinomial, "loop": run_loop}


def output_bytes(out: object) -> int:
    """Bytes of the tensors a method returns (they are outputs, not working memory)."""
    if isinstance(out, torch.Tensor):
        return out.untyped_storage().nbytes()
    if isinstance(out, (tuple, list)):
        return sum(output_bytes(o) for o in out)
    return 0


def check_kchoice(out: KChoice, rewards: torch.Tensor, candidates: torch.Tensor | None) -> None:
    """Cheap sanity check that the timed call did what it claims."""
    n, k = rewards.shape
    assert out.log_prob is not None, "kchoice returned no log-probabilities"
    assert out.index.shape == (n,) and out.log_prob.shape == (n,) and out.logsumexp.shape == (n,)
    rows = min(n, 64)
    assert bool(((out.index[:rows] >= 0) & (out.index[:rows] < k)).all())
    if candidates is not None:
        expect = candidates[torch.arange(rows, device=rewards.device), out.index[:rows]]
        assert out.chosen is not None, "kchoice gathered nothing although candidates were given"
        assert torch.equal(out.chosen[:rows], expect), "kchoice gathered the wrong candidates"


# --------------------------------------------------------------------------- timing

def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so that a time or a memory peak covers the whole call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(fn: Callable[[], object], repeats: int, warmup: int) -> Timing:
    """Median of ``repeats`` wall times after ``warmup`` calls: the median resists a shared machine's spikes."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def time_cuda(fn: Callable[[], object]) -> Timing:
    """``triton.testing.do_bench``: it flushes the L2 cache and times on the device, not the host."""
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80}


def kchoice_bytes(n: int, k: int, d: int, device: torch.device) -> int:
    """Bytes kchoice must move: rewards read, index (int64) + log_prob + logsumexp
    (float32) written, gathered candidates read and written."""
    cand = 2 * n * d * torch.empty((), dtype=candidate_dtype(device)).element_size() if d else 0
    return n * k * 4 + n * (8 + 4 + 4) + cand


# Peak DRAM bandwidth (GB/s, vendor figures) by a substring of torch.cuda.get_device_name;
# the first match wins, so the more specific names come first.
PEAK_GBPS = (
    ("GH200", 4000.0), ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
    ("H800", 3350.0), ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0),
    ("A100-PCIE-80GB", 1935.0), ("A100", 1555.0), ("A800", 2039.0), ("L40S", 864.0), ("L40", 864.0),
    ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0), ("T4", 320.0), ("V100", 900.0),
    ("RTX 4090", 1008.0), ("RTX 3090", 936.0), ("RTX A6000", 768.0),
)


def known_peak_gbps(device_name: str) -> float | None:
    """The peak DRAM bandwidth of a card from ``PEAK_GBPS``; ``None`` for a card not in it."""
    for key, gbps in PEAK_GBPS:
        if key.lower() in device_name.lower():
            return gbps
    return None


def peak_bandwidth(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """``(GB/s, where it came from)``: --peak-gbps, the table of known cards, or Triton's estimate."""
    if override:
        return override, "--peak-gbps"
    if device.type != "cuda":
        return None, "no GPU"
    name = torch.cuda.get_device_name(device)
    known = known_peak_gbps(name)
    if known:
        return known, f"table entry for {name}"
    try:
        from triton.testing import get_dram_gbps

        return float(get_dram_gbps(device.index if device.index is not None else torch.cuda.current_device())), \
            f"{name} is not in the table: Triton's estimate from the device's memory clock and bus width"
    except Exception:  # pragma: no cover - depends on the Triton version
        return None, f"unknown card {name}: peak bandwidth unknown (pass --peak-gbps)"


def peak_bandwidth_gbps(device: torch.device, override: float | None) -> float | None:
    """The peak alone, for callers that do not print where it came from."""
    return peak_bandwidth(device, override)[0]


# --------------------------------------------------------------------------- memory

def measure_cuda_memory(method: str, rewards: torch.Tensor, candidates: torch.Tensor | None, beta: float,
                        device: torch.device) -> MemoryFigures:
    """One call's extra allocated peak on the card; a warm-up call first, so lazy init is not counted."""
    fn = RUNNERS[method]
    fn(rewards, candidates, beta)  # compile / warm the caching allocator's code paths
    gc.collect()
    sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn(rewards, candidates, beta)
    sync(device)
    extra = torch.cuda.max_memory_allocated(device) - base
    return memory_row(extra, output_bytes(out), rewards)


def memory_row(extra: int, out_bytes: int, rewards: torch.Tensor) -> MemoryFigures:
    """Split the extra peak into returned outputs and working memory, which is what the target judges."""
    rbytes = rewards.numel() * rewards.element_size()
    work = max(0, extra - out_bytes)
    return {"rewards_mib": rbytes / MIB, "extra_mib": extra / MIB, "outputs_mib": out_bytes / MIB,
            "work_mib": work / MIB, "work_over_rewards": work / rbytes if rbytes else float("nan")}


def _peak_rss_bytes() -> tuple[int, str]:
    """This process's peak RSS in bytes, and where it was read.

    Linux: ``VmHWM`` of /proc/self/status, the peak of this process's own
    address space. ``ru_maxrss`` is not usable in a child on Linux: at exec the
    kernel folds the parent's peak RSS into it (a child of a 4 GiB benchmark
    process starts at 4 GiB), and /proc/self/clear_refs does not reset that part.
    Elsewhere: ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss if sys.platform == "darwin" else rss * 1024), "ru_maxrss"  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(spec: str) -> None:
    """Runs in a fresh process: ``method,N,K,D,beta,threads,backend`` -> one JSON line."""
    global BACKEND
    method, n_, k_, d_, beta_, threads_, BACKEND = spec.split(",")
    n, k, d, beta, threads = int(n_), int(k_), int(d_), float(beta_), int(threads_)
    if threads > 0:
        torch.set_num_threads(threads)
    device = torch.device("cpu")
    fn = RUNNERS[method]
    # Warm the code paths (lazy inits, thread pool) on a tiny input first.
    small_r, small_c = make_inputs(8, k, d, device)
    fn(small_r, small_c, beta)
    del small_r, small_c
    rewards, candidates = make_inputs(n, k, d, device)
    gc.collect()
    reset = _reset_peak_rss()  # peak := current, so "before" is the live inputs
    before, source = _peak_rss_bytes()
    out = fn(rewards, candidates, beta)
    after, _ = _peak_rss_bytes()
    row: CpuMemoryFigures = {**memory_row(after - before, output_bytes(out), rewards)}
    row["peak_reset"] = reset
    row["rss_source"] = source
    print(json.dumps(row))


def measure_cpu_memory(method: str, n: int, k: int, d: int, beta: float, threads: int) -> CpuMemoryFigures:
    """Measure in a fresh process per shape and method: one process's peak RSS never goes back down."""
    spec = f"{method},{n},{k},{d},{beta!r},{threads},{BACKEND}"
    env = dict(os.environ)
    # A fixed mmap threshold turns off glibc's dynamic one: every large buffer is
    # its own mapping, returned on free, so the peak RSS follows the peak of live
    # buffers instead of whatever freed heap happens to be resident (which made
    # the delta vary from 0 to 2x between identical runs).
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "131072")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_memory-child", spec],
                          capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory subprocess for {spec} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- roofline (CUDA)

ROOFLINE_SHAPES = ((1_000_000, 16, 1), (10_000_000, 4, 1), (100_000, 256, 1), (1_000_000, 16, 4))
ROOFLINE_BANDWIDTH_SHAPES = ((1_000_000, 16, 1), (10_000_000, 4, 1))  # target: >= 70% of peak
ROOFLINE_SPEEDUP_SHAPE = (1_000_000, 16, 1)                          # target: >= 5x softmax + multinomial


def roofline_bytes(n: int, k: int, m: int, reward_bytes: int = 4) -> int:
    """The least one kchoice call moves: rewards read once; index (int64) and
    log_prob (float32) per winner and logsumexp (float32) per row written."""
    return n * k * reward_bytes + n * m * (8 + 4) + n * 4


def _gumbel_topm(rewards: torch.Tensor, beta: float, m: int) -> torch.Tensor:
    g = -torch.log(-torch.log(torch.rand_like(rewards).clamp_(1e-20, 1.0 - 1e-7)))
    key = beta * rewards + g
    return key.argmax(dim=1) if m == 1 else torch.topk(key, m, dim=1).indices


def roofline_methods(beta: float, m: int) -> dict[str, Callable[[torch.Tensor], object]]:
    """The op and what it is measured against at ``m`` winners, each a function of the rewards alone."""
    from lightning_curate.kernels.kchoice_triton import kchoice_triton

    compiled = torch.compile(_gumbel_topm, dynamic=False)
    return {
        # The public op: one kernel, validity flag left unread (no host sync).
        "kchoice": lambda r: kchoice(r, beta, num_winners=m, seed=SEED, backend=BACKEND),
        # Compact outputs: an int32 index, no log-probabilities.
        "kchoice_compact": lambda r: kchoice(r, beta, num_winners=m, seed=SEED, backend=BACKEND,
                                             index_dtype=torch.int32, log_probs=False),
        # The kernel alone: the launcher without the op's argument checks.
        "kernel": lambda r: kchoice_triton(r, beta, num_winners=m, mode="softmax", seed=SEED),
        # The achievable streaming read of the rewards.
        "sum": lambda r: r.sum(1),
        "multinomial": lambda r: torch.multinomial(torch.softmax(beta * r, -1), m),
        "gumbel_eager": lambda r: _gumbel_topm(r, beta, m),
        "gumbel_compiled": lambda r: compiled(r, beta, m),
    }


def method_bytes(method: str, n: int, k: int, m: int) -> int:
    """Bytes each roofline method must move at the least (its effective bandwidth's numerator)."""
    if method == "sum":
        return n * k * 4 + n * 4
    if method == "kchoice_compact":
        return n * k * 4 + n * m * 4 + n * 4
    if method.startswith("gumbel") or method == "multinomial":
        return n * k * 4 + n * m * 8
    return roofline_bytes(n, k, m)


def run_roofline(device: torch.device, beta: float, peak: float | None,
                 shapes: Sequence[tuple[int, int, int]] = ROOFLINE_SHAPES) -> list[RooflineRow]:
    """One row per shape: each method's median time, kchoice's GB/s and % of peak."""
    name = torch.cuda.get_device_name(device)
    rows = []
    for n, k, m in shapes:
        gen = torch.Generator(device=device)
        gen.manual_seed(0)
        rewards = torch.randn(n, k, device=device, generator=gen)
        nbytes = roofline_bytes(n, k, m)
        ms: dict[str, float] = {}
        for method, fn in roofline_methods(beta, m).items():
            fn(rewards)  # compile / autotune / warm up outside the timing
            sync(device)

            def call(fn: Callable[[torch.Tensor], object] = fn, r: torch.Tensor = rewards) -> object:
                return fn(r)

            ms[method] = time_cuda(call)["median_ms"]

        gbps = {method: method_bytes(method, n, k, m) / (ms[method] * 1e-3) / 1e9
                for method in ("kchoice_compact", "sum", "gumbel_compiled")}
        kc_gbps = nbytes / (ms["kchoice"] * 1e-3) / 1e9
        kernel_gbps = nbytes / (ms["kernel"] * 1e-3) / 1e9
        row: RooflineRow = {
            "device_name": name, "N": n, "K": k, "m": m, "bytes": nbytes,
            "kchoice_ms": ms["kchoice"], "kchoice_compact_ms": ms["kchoice_compact"], "kernel_ms": ms["kernel"],
            "sum_ms": ms["sum"], "multinomial_ms": ms["multinomial"], "gumbel_eager_ms": ms["gumbel_eager"],
            "gumbel_compiled_ms": ms["gumbel_compiled"],
            "gbps": kc_gbps, "kernel_gbps": kernel_gbps, "kchoice_compact_gbps": gbps["kchoice_compact"],
            "sum_gbps": gbps["sum"], "gumbel_compiled_gbps": gbps["gumbel_compiled"],
            "roofline_ms": nbytes / (peak * 1e9) * 1e3 if peak else None,
            "peak_fraction": kc_gbps / peak if peak else None,
            "kernel_peak_fraction": kernel_gbps / peak if peak else None,
            "speedup_multinomial": ms["multinomial"] / ms["kchoice"],
            "speedup_gumbel_eager": ms["gumbel_eager"] / ms["kchoice"],
            "speedup_gumbel_compiled": ms["gumbel_compiled"] / ms["kchoice"],
        }
        rows.append(row)
        del rewards
        torch.cuda.empty_cache()
        print(f"  roofline N={n} K={k} m={m}: kchoice {fmt_ms(row['kchoice_ms'])} ms", file=sys.stderr, flush=True)
    return rows


def print_roofline(rows: Sequence[RooflineRow], peak: float | None, peak_source: str) -> None:
    """Print the roofline table with the peak's source, since a % of peak means nothing without it."""
    name = rows[0]["device_name"] if rows else "?"
    print(f"Roofline on {name} (float32 rewards, no candidates; kchoice = the public op, validation included; "
          "kernel = kchoice_triton alone; median of triton.testing.do_bench; "
          + (f"peak {peak:.0f} GB/s, {peak_source})" if peak else f"{peak_source})"))
    headers = ["N", "K", "m", "MB moved", "roofline us", "kchoice us", "GB/s", "% peak", "kernel us", "kernel % peak",
               "compact GB/s", "sum(1) GB/s", "softmax+multinom us", "gumbel eager us", "gumbel compiled us",
               "gumbel compiled GB/s", "x multinom", "x compiled"]
    table = [[f"{r['N']:.0e}", str(r["K"]), str(r["m"]), fmt(r["bytes"] / 1e6, ".1f"),
              fmt(None if r["roofline_ms"] is None else 1e3 * r["roofline_ms"], ".1f"),
              fmt(1e3 * r["kchoice_ms"], ".1f"), fmt(r["gbps"], ".0f"),
              fmt(None if r["peak_fraction"] is None else 100 * r["peak_fraction"], ".1f"),
              fmt(1e3 * r["kernel_ms"], ".1f"),
              fmt(None if r["kernel_peak_fraction"] is None else 100 * r["kernel_peak_fraction"], ".1f"),
              fmt(r["kchoice_compact_gbps"], ".0f"), fmt(r["sum_gbps"], ".0f"),
              fmt(1e3 * r["multinomial_ms"], ".1f"), fmt(1e3 * r["gumbel_eager_ms"], ".1f"),
              fmt(1e3 * r["gumbel_compiled_ms"], ".1f"), fmt(r["gumbel_compiled_gbps"], ".0f"),
              fmt_ratio(r["speedup_multinomial"]),
              fmt_ratio(r["speedup_gumbel_compiled"])] for r in rows]
    print_table(headers, table)
    print()


def roofline_targets(rows: Sequence[RooflineRow], peak: float | None) -> list[Target]:
    """Judge the roofline rows against the kernel's acceptance: bandwidth, compiled Gumbel, multinomial."""
    out: list[Target] = []
    by_shape = {(r["N"], r["K"], r["m"]): r for r in rows}
    for shape in ROOFLINE_BANDWIDTH_SHAPES:
        r = by_shape.get(shape)
        name = f"CUDA: kchoice >= 70% of peak DRAM bandwidth at N={shape[0]}, K={shape[1]}"
        frac = None if r is None else r["peak_fraction"]  # None exactly when the peak is unknown
        if r is None:
            out.append({"name": name, "status": "SKIP", "detail": "shape not run"})
        elif not peak or frac is None:
            out.append({"name": name, "status": "SKIP", "detail": f"{r['gbps']:.0f} GB/s; peak unknown"})
        else:
            out.append({"name": name, "status": "PASS" if frac >= 0.7 else "FAIL",
                        "detail": f"{100 * frac:.1f}% ({r['gbps']:.0f} of {peak:.0f} GB/s) "
                                  f"on {r['device_name']}"})
    for shape in ROOFLINE_BANDWIDTH_SHAPES:
        r = by_shape.get(shape)
        name = f"CUDA: kchoice at least as fast as torch.compile'd Gumbel-argmax at N={shape[0]}, K={shape[1]}"
        if r is None:
            out.append({"name": name, "status": "SKIP", "detail": "shape not run"})
        else:
            out.append({"name": name, "status": "PASS" if r["speedup_gumbel_compiled"] >= 1 else "FAIL",
                        "detail": f"{r['speedup_gumbel_compiled']:.2f}x on {r['device_name']}"})
    r = by_shape.get(ROOFLINE_SPEEDUP_SHAPE)
    n, k, _ = ROOFLINE_SPEEDUP_SHAPE
    name = f"CUDA: kchoice >= 5x softmax + torch.multinomial at N={n}, K={k}"
    if r is None:
        out.append({"name": name, "status": "SKIP", "detail": "shape not run"})
    else:
        out.append({"name": name, "status": "PASS" if r["speedup_multinomial"] >= 5 else "FAIL",
                    "detail": f"{r['speedup_multinomial']:.1f}x on {r['device_name']}"})
    return out


# --------------------------------------------------------------------------- draws (no GPU needed)

DRAWS_SHAPES = ((400_000, 4, 1), (200_000, 16, 1), (20_000, 256, 1), (50_000, 16, 3))
DRAWS_SEED = 2026


def _load_module(path: str) -> ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("kchoice_reference", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--draws-ref: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draws_vs_reference(ref_path: str, shapes: Sequence[tuple[int, int, int]] = DRAWS_SHAPES,
                       chunk: int = 10_000) -> list[dict[str, float]]:
    """Under TRITON_INTERPRET=1: rows whose winners this kernel and a reference ``kchoice_triton.py`` share.

    Softmax, beta = 1, rewards N(0, 4), a different seed per chunk of rows.
    """
    from lightning_curate.kernels.kchoice_triton import kchoice_triton

    ref = _load_module(ref_path)
    rows = []
    for n, k, m in shapes:
        gen = torch.Generator().manual_seed(k)
        same = 0
        for start in range(0, n, chunk):
            r = torch.randn(min(chunk, n - start), k, generator=gen) * 2
            new = kchoice_triton(r, 1.0, num_winners=m, mode="softmax", seed=DRAWS_SEED + start).index
            old = ref.kchoice_triton(r, 1.0, num_winners=m, mode="softmax", seed=DRAWS_SEED + start)[0]
            eq = new == old if m == 1 else (new == old).all(dim=1)
            same += int(eq.sum())
        rows.append({"N": n, "K": k, "m": m, "identical_rows": same, "fraction": same / n})
        print(f"  draws vs reference N={n} K={k} m={m}: {same} of {n} rows identical", file=sys.stderr, flush=True)
    return rows


def _approx_log2(x: torch.Tensor, gen: torch.Generator, worst: bool) -> torch.Tensor:
    """float32 log2 with CUDA's documented ``__log2f`` error: 2^-22.6 absolute on [0.5, 2], 2 ulp elsewhere."""
    y = torch.log2(x.double())
    inside = (x >= 0.5) & (x < 2)
    if worst:
        e_abs, e_rel = torch.full_like(y, 2**-22.6), torch.full_like(y, 2 * 2**-23)
    else:
        e_abs = (torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 2**-22.6
        e_rel = (torch.rand(x.shape, generator=gen, dtype=torch.float64) * 2 - 1) * 2 * 2**-23
    return torch.where(inside, y + e_abs, y * (1 + e_rel)).float()


def draws_fast_log_simulation(shapes: Sequence[tuple[int, int]] = ((1_000_000, 4), (500_000, 16), (30_000, 256)),
                              chunk: int = 20_000) -> list[dict[str, float]]:
    """Rows whose softmax winner survives ``lg2.approx``'s documented error (random and worst-case sign)
    on the kernel's own Philox stream and keys (CPU, ``lightning_curate.ops.kchoice_philox``)."""
    from lightning_curate.ops.kchoice_philox import _bits

    rows = []
    for n, k in shapes:
        gen = torch.Generator().manual_seed(k)
        same = {"random": 0, "worst": 0}
        for start in range(0, n, chunk):
            ids = torch.arange(start, min(n, start + chunk))
            s2 = torch.randn(len(ids), k, generator=gen) * 2 * 1.4426950408889634
            v = (_bits(DRAWS_SEED, ids, k) >> 8).float()
            u = torch.clamp_max(v * 2.0**-24 + 2.0**-25, 1 - 2.0**-24)
            exact = (s2 - torch.log2(-torch.log2(u))).argmax(1)
            for name in same:
                inner = (-_approx_log2(u, gen, name == "worst")).clamp_min(2.0**-24)  # the kernel's guard
                same[name] += int(((s2 - _approx_log2(inner, gen, name == "worst")).argmax(1) == exact).sum())
        rows.append({"N": n, "K": k, "m": 1, **{f"fraction_{name}": v / n for name, v in same.items()}})
        print(f"  lg2.approx simulation N={n} K={k}: {same}", file=sys.stderr, flush=True)
    return rows


def run_draws(ref_path: str | None, record: str | None) -> int:
    """Print (and with ``record`` write) the draws' figures; no timing, so it runs on any CPU."""
    figures: DrawsFigures = {"seed": DRAWS_SEED, "simulated_fast_log": draws_fast_log_simulation()}
    if ref_path:
        figures["reference"] = ref_path
        figures["interpreter_vs_reference"] = draws_vs_reference(ref_path)
    print(json.dumps(figures, indent=1))
    if record:
        from lightning_curate.kernels.kchoice_aot import write_record

        cmd = "python scripts/bench_kchoice.py --draws" + (f" --draws-ref {ref_path}" if ref_path else "") + \
            f" --record {record}"
        write_record(record, Path(record).stem, cmd, figures, "none: CPU (Triton interpreter and torch)")
    return 0


# --------------------------------------------------------------------------- printing

def machine_info(device: torch.device) -> MachineInfo:
    """Where this run measured, printed and written beside the figures, which mean nothing without it."""
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    cpu = _cpu_name()
    info: MachineInfo = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "device": str(device),
        "triton": triton_version,
        "device_name": cpu,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = props.name
        info["device_memory_gib"] = round(props.total_memory / GIB, 1)
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_ms(x: float | None) -> str:
    """Milliseconds to three significant-ish figures; ``-`` for a method that did not run."""
    if x is None:
        return "-"
    if x < 1:
        return f"{x:.3f}"
    if x < 100:
        return f"{x:.2f}"
    return f"{x:.0f}"


def fmt_ratio(x: float | None) -> str:
    """A speedup as ``2.50x``, whole above 100x where decimals are noise."""
    if x is None:
        return "-"
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def fmt(x: float | None, spec: str) -> str:
    """``format`` with ``-`` for a missing figure, so a table cell is never ``None``."""
    return "-" if x is None else format(x, spec)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Right-aligned plain-text columns: readable in a log, with no table library to install."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)).rstrip())


# --------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and fill the defaults (``--quick`` picks its own), refusing sizes that cannot be run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--n", type=int, nargs="+", help=f"slot counts N (default {list(DEFAULT_N)})")
    p.add_argument("--k", type=int, nargs="+", help=f"candidates per slot K (default {list(DEFAULT_K)})")
    p.add_argument("--d", type=int, nargs="+",
                   help=f"candidate feature sizes D, 0 = no candidates (default {list(DEFAULT_D)})")
    p.add_argument("--beta", type=float, default=1.0, help="inverse temperature (default 1.0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "triton"),
                   help="kchoice backend (default auto: torch on the CPU, Triton on CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement on the CPU (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first on the CPU (default 1)")
    p.add_argument("--loop-max-n", type=int, default=10_000,
                   help="run the per-slot loop baseline only for N <= this (default 10000)")
    p.add_argument("--mem-budget-gib", type=float, default=4.0,
                   help="skip shapes whose candidate tensor N*K*D exceeds this (default 4 GiB)")
    p.add_argument("--memory", action="store_true",
                   help="CPU: measure extra peak memory (one subprocess per shape and method; slow)")
    p.add_argument("--memory-shapes", nargs="+", metavar="N,K,D",
                   help="shapes for --memory on the CPU (default: the largest N with each K at D=0, "
                        "and K=16 at the largest D)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--peak-gbps", type=float, default=None,
                   help="peak memory bandwidth in GB/s (default on CUDA: from Triton's device properties)")
    p.add_argument("--roofline", choices=("auto", "only", "quick", "off"), default="auto",
                   help="CUDA roofline table: auto = before the comparison, only = nothing else, quick = only "
                        "its two target shapes (1e6 x 16, 1e7 x 4) and nothing else "
                        "(without a GPU each says so and runs the CPU comparison)")
    p.add_argument("--quick", action="store_true",
                   help="small shapes, 3 repeats, memory of kchoice on one small shape: a smoke test")
    p.add_argument("--json", metavar="PATH", help="also write machine, rows and targets as JSON here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target FAILs")
    p.add_argument("--draws", action="store_true",
                   help="no timing: how many rows keep their winner under lg2.approx's documented error "
                        "(simulated on the kernel's Philox stream) and, with --draws-ref, against another "
                        "kchoice_triton.py under the Triton interpreter")
    p.add_argument("--draws-ref", metavar="PY", help="a reference kchoice_triton.py (e.g. "
                   "git show 1f28c3a:kernels/kchoice_triton.py > /tmp/ref.py)")
    p.add_argument("--record", metavar="PATH", help="with --draws: write a dated JSON record here")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or list(QUICK_N)
        args.k = args.k or list(QUICK_K)
        args.d = args.d if args.d is not None else list(QUICK_D)
        if args.repeats == 5:
            args.repeats = 3
        args.memory = True
        args.memory_shapes = args.memory_shapes or list(QUICK_MEMORY_SHAPES)
    args.n = args.n or list(DEFAULT_N)
    args.k = args.k or list(DEFAULT_K)
    args.d = args.d if args.d is not None else list(DEFAULT_D)
    for name in ("n", "k"):
        if any(v < 1 for v in getattr(args, name)):
            p.error(f"--{name} values must be >= 1")
    if any(v < 0 for v in args.d):
        p.error("--d values must be >= 0")
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    return args


def default_memory_shapes(ns: Sequence[int], ks: Sequence[int], ds: Sequence[int]) -> list[tuple[int, int, int]]:
    """The largest N at each K (and K=16 at the largest D): small shapes only measure allocator noise."""
    n = max(ns)
    shapes = [(n, k, 0) for k in ks]
    d = max(ds)
    if d > 0:
        shapes.append((n, 16 if 16 in ks else max(ks), d))
    return shapes


def main(argv: Sequence[str] | None = None) -> int:
    """Run the roofline, the comparison grid and the memory measurements, print them and judge the targets."""
    global BACKEND
    args = parse_args(argv)
    BACKEND = args.backend
    if args.draws:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--draws runs the kernels under Triton's interpreter: run it as a command "
                             "(it sets TRITON_INTERPRET=1 before importing triton) or set TRITON_INTERPRET=1")
        return run_draws(args.draws_ref, args.record)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cuda = device.type == "cuda"
    budget = int(args.mem_budget_gib * GIB)
    cdtype = candidate_dtype(device)
    csize = torch.empty((), dtype=cdtype).element_size()
    peak, peak_source = peak_bandwidth(device, args.peak_gbps)
    info = machine_info(device)

    print("kchoice benchmark")
    print(f"  machine : {info['cpu']} | {info['cpu_count']} CPUs ({info['cpus_usable']} usable) | "
          f"torch {info['torch']} ({info['torch_threads']} threads) | triton {info['triton']} | "
          f"python {info['python']}")
    print(f"  device  : {device} = {info['device_name']}"
          + (f" | peak DRAM {peak:.0f} GB/s ({peak_source})" if peak else f" | {peak_source}"))
    print(f"  setup   : beta={args.beta} | rewards float32 | candidates {str(cdtype).replace('torch.', '')} "
          f"| budget {args.mem_budget_gib:g} GiB | "
          + ("timing: triton.testing.do_bench, median" if cuda else
             f"timing: perf_counter, {args.warmup} warmup + {args.repeats} repeats, median")
          + f" | loop baseline for N <= {args.loop_max_n}")
    print(f"  methods : kchoice = lightning_curate.kchoice (backend {args.backend}) | "
          "(a) = torch.multinomial(softmax(beta*r), 1) + gather | (b) = per-slot Python loop")
    print(flush=True)

    roof_rows: list[RooflineRow] = []
    roof_targets: list[Target] = []
    if args.roofline != "off":
        if cuda:
            shapes = ROOFLINE_BANDWIDTH_SHAPES if args.roofline == "quick" else ROOFLINE_SHAPES
            roof_rows = run_roofline(device, args.beta, peak, shapes)
            print_roofline(roof_rows, peak, peak_source)
            roof_targets = roofline_targets(roof_rows, peak)
        else:
            print("Roofline: no GPU here (it needs a CUDA device; this run is on the CPU): "
                  "skipped, running the CPU comparison.\n", flush=True)
    if cuda and args.roofline in ("only", "quick"):
        print("Targets")
        for t in roof_targets:
            print(f"  {t['status']:4s}  {t['name']}: {t['detail']}")
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"machine": info, "peak_gbps": peak, "peak_source": peak_source,
                                                   "roofline": roof_rows, "targets": roof_targets},
                                                  indent=2, default=str))
            print(f"\nwrote {args.json}")
        return 1 if args.strict and any(t["status"] == "FAIL" for t in roof_targets) else 0

    rows: list[SpeedRow] = []
    mem_rows: list[MemoryRow] = []
    for n in args.n:
        for k in args.k:
            for d in args.d:
                row: SpeedRow = {"N": n, "K": k, "D": d, "device": str(device),
                                          "candidate_dtype": str(cdtype).replace("torch.", "")}
                cand_bytes = n * k * d * csize
                if cand_bytes > budget:
                    row["skipped"] = (f"candidates {cand_bytes / GIB:.1f} GiB > budget "
                                      f"{args.mem_budget_gib:g} GiB")
                    rows.append(row)
                    continue
                rewards, candidates = make_inputs(n, k, d, device)
                check_kchoice(run_kchoice(rewards, candidates, args.beta), rewards, candidates)
                for method in METHODS:
                    if method == "loop" and n > args.loop_max_n:
                        continue
                    fn = RUNNERS[method]

                    def call(fn: Runner = fn, rewards: torch.Tensor = rewards,
                             candidates: torch.Tensor | None = candidates) -> object:
                        return fn(rewards, candidates, args.beta)

                    timing = time_cuda(call) if cuda else time_cpu(call, args.repeats, args.warmup)
                    ms_key, timing_key = SPEED_KEYS[method]
                    row[ms_key] = timing["median_ms"]
                    row[timing_key] = timing
                kc = row["kchoice_ms"]
                if "multinomial_ms" in row:
                    row["ratio_a"] = row["multinomial_ms"] / kc
                if "loop_ms" in row:
                    row["ratio_b"] = row["loop_ms"] / kc
                row["bytes"] = kchoice_bytes(n, k, d, device)
                row["gbps"] = row["bytes"] / (kc * 1e-3) / 1e9
                if peak:
                    row["peak_fraction"] = row["gbps"] / peak
                if cuda:  # cheap on CUDA: every shape
                    for method in ("kchoice", "multinomial"):
                        figures = measure_cuda_memory(method, rewards, candidates, args.beta, device)
                        mem_rows.append({"N": n, "K": k, "D": d, "method": method, **figures})
                rows.append(row)
                del rewards, candidates
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
                print(f"  done N={n} K={k} D={d}: kchoice {fmt_ms(kc)} ms", file=sys.stderr, flush=True)

    if args.memory and not cuda:
        mem_shapes: Sequence[tuple[int, ...]] = (
            [tuple(int(v) for v in s.split(",")) for s in args.memory_shapes]
            if args.memory_shapes else default_memory_shapes(args.n, args.k, args.d))
        for n, k, d in mem_shapes:
            if n * k * d * csize > budget:
                mem_rows.append({"N": n, "K": k, "D": d, "method": "kchoice", "skipped": "over budget"})
                continue
            for method in (("kchoice",) if args.quick else ("kchoice", "multinomial")):
                cpu_figures = measure_cpu_memory(method, n, k, d, args.beta, args.threads)
                mem_rows.append({"N": n, "K": k, "D": d, "method": method, **cpu_figures})
                print(f"  memory N={n} K={k} D={d} {method}: done", file=sys.stderr, flush=True)

    # ---- speed table
    headers = ["N", "K", "D", "kchoice ms", "(a) multinom ms", "(b) loop ms",
               "(a)/kchoice", "(b)/kchoice", "kchoice GB/s"]
    if peak:
        headers.append("% peak BW")
    headers.append("note")
    table = []
    for r in rows:
        if "skipped" in r:
            cells = [str(r["N"]), str(r["K"]), str(r["D"])] + ["-"] * (len(headers) - 4) + [f"skip: {r['skipped']}"]
        else:
            cells = [str(r["N"]), str(r["K"]), str(r["D"]), fmt_ms(r.get("kchoice_ms")),
                     fmt_ms(r.get("multinomial_ms")), fmt_ms(r.get("loop_ms")),
                     fmt_ratio(r.get("ratio_a")), fmt_ratio(r.get("ratio_b")), fmt(r.get("gbps"), ".3g")]
            if peak:
                cells.append(fmt(100 * r["peak_fraction"], ".1f"))
            cells.append("")
        table.append(cells)
    print("Speed (median ms; ratio > 1: kchoice is faster)")
    print_table(headers, table)
    print()

    # ---- memory table
    if mem_rows:
        how = ("torch.cuda.max_memory_allocated delta" if cuda else
               "peak-RSS delta in a fresh subprocess per shape and method")
        print(f"Memory (extra = peak over the live inputs, {how}; "
              "work = extra - returned outputs, i.e. what the call holds beyond its results at its peak)")
        mheaders = ["N", "K", "D", "method", "rewards MiB", "extra MiB", "outputs MiB", "work MiB",
                    "work/rewards", "note"]
        mtable = []
        for m in mem_rows:
            if "skipped" in m:
                mtable.append([str(m["N"]), str(m["K"]), str(m["D"]), m["method"]] + ["-"] * 5
                              + [f"skip: {m['skipped']}"])
                continue
            mtable.append([str(m["N"]), str(m["K"]), str(m["D"]), m["method"], fmt(m["rewards_mib"], ".1f"),
                           fmt(m["extra_mib"], ".1f"), fmt(m["outputs_mib"], ".1f"), fmt(m["work_mib"], ".1f"),
                           fmt(m["work_over_rewards"], ".2f"),
                           "" if m.get("peak_reset", True) else "peak RSS not resettable: may under-count"])
        print_table(mheaders, mtable)
        print()

    # ---- targets
    targets = roof_targets + evaluate_targets(rows, mem_rows, cuda, peak)
    print("Targets")
    for t in targets:
        print(f"  {t['status']:4s}  {t['name']}: {t['detail']}")

    if args.json:
        payload = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "memory_child"},
                   "peak_gbps": peak, "peak_source": peak_source, "roofline": roof_rows,
                   "rows": rows, "memory": mem_rows, "targets": targets}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2, default=str)
        print(f"\nwrote {args.json}")
    if args.strict and any(t["status"] == "FAIL" for t in targets):
        return 1
    return 0


def _find(rows: Sequence[SpeedRow], n: int, k: int, d: int) -> SpeedRow | None:
    for r in rows:
        if (r["N"], r["K"], r["D"]) == (n, k, d) and "skipped" not in r:
            return r
    return None


def evaluate_targets(rows: Sequence[SpeedRow], mem_rows: Sequence[MemoryRow], cuda: bool,
                     peak: float | None) -> list[Target]:
    """Judge the grid against the op's acceptance; a shape not run is a SKIP, never a silent PASS."""
    out: list[Target] = []

    def add(name: str, status: str, detail: str) -> None:
        out.append({"name": name, "status": status, "detail": detail})

    n, k, d = TARGET_SPEED_A
    r = _find(rows, n, k, d)
    name = f"kchoice >= 2x faster than (a) multinomial at N={n}, K={k}, D={d}"
    if r is None:
        add(name, "SKIP", "shape not run")
    else:
        add(name, "PASS" if r["ratio_a"] >= 2 else "FAIL",
            f"{r['ratio_a']:.2f}x ({fmt_ms(r['kchoice_ms'])} ms vs {fmt_ms(r['multinomial_ms'])} ms)")

    n, k, d = TARGET_SPEED_B
    r = _find(rows, n, k, d)
    name = f"kchoice >= 200x faster than (b) loop at N={n}, K={k}, D={d}"
    if r is None or "ratio_b" not in r:
        add(name, "SKIP", "shape not run" if r is None else "loop baseline not run (--loop-max-n)")
    else:
        add(name, "PASS" if r["ratio_b"] >= 200 else "FAIL",
            f"{r['ratio_b']:.0f}x ({fmt_ms(r['kchoice_ms'])} ms vs {fmt_ms(r['loop_ms'])} ms)")

    name = "kchoice extra memory (beyond its outputs) <= one buffer of the rewards' size"
    judged = [m for m in mem_rows if m["method"] == "kchoice" and "skipped" not in m
              and m["rewards_mib"] * MIB >= MEMORY_MIN_REWARDS_BYTES]
    if not judged:
        small = any(m["method"] == "kchoice" and "skipped" not in m for m in mem_rows)
        add(name, "SKIP", (f"only shapes with rewards < {MEMORY_MIN_REWARDS_BYTES // MIB} MiB measured "
                           "(too small to judge)") if small else "not measured (run with --memory)")
    else:
        worst = max(judged, key=lambda m: m["work_over_rewards"])
        add(name, "PASS" if worst["work_over_rewards"] <= 1.0 else "FAIL",
            f"worst {worst['work_over_rewards']:.2f}x of rewards ({worst['work_mib']:.1f} MiB) at "
            f"N={worst['N']}, K={worst['K']}, D={worst['D']}, over {len(judged)} shape(s)")

    n, k, d = TARGET_BANDWIDTH
    name = f"CUDA: kchoice >= 70% of peak memory bandwidth at N={n}, K={k}, D={d} (fp16)"
    if not cuda:
        add(name, "SKIP", "not on CUDA")
    else:
        r = _find(rows, n, k, d)
        if r is None:
            add(name, "SKIP", "shape not run")
        elif not peak:
            add(name, "SKIP", f"{r['gbps']:.0f} GB/s, peak bandwidth unknown (pass --peak-gbps)")
        else:
            frac = r["peak_fraction"]
            add(name, "PASS" if frac >= 0.7 else "FAIL",
                f"{100 * frac:.1f}% ({r['gbps']:.0f} of {peak:.0f} GB/s)")
    return out


if __name__ == "__main__":
    sys.exit(main())
