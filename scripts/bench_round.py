#!/usr/bin/env python
"""Benchmark one curated-retraining round of a lightning-curate config, phase by phase.

Builds the model and the DataModule from a ``lightning-curate`` YAML config
exactly as the console script does (the same ``LightningCLI`` classes and
options, ``run=False``), trains round 0 briefly on real data
(``--train-batches`` batches, timed as ``train``), then runs ONE curation round
(``CurationModule.curate_round``) whose winners stream, chunk by chunk, into a
``RoundStore`` in a temporary folder, as ``RetrainingLoop`` does. It prints one
JSON line on stdout (everything else goes to stderr):

* ``generate``, ``reward``, ``curate``, ``store``: seconds per phase of the round
  (the module's own ``timings``), ``commit``: checksumming and committing the
  round in the store, ``train``: the ``--train-batches`` training batches;
* ``curation_seconds``: the wall time of ``curate_round`` plus the commit;
  ``total_round_seconds``: ``train + curation_seconds``; ``curate_fraction``:
  ``curate / total_round_seconds``; ``curate_fraction_of_curation``:
  ``curate / curation_seconds`` (the stricter one: a real round trains for
  whole epochs, far longer than the few batches here);
* ``generate_samples_per_s``: candidates (``num_slots * num_candidates``) per
  second of the ``generate`` phase;
* ``peak_rss_bytes``: the peak resident memory of the process during the round.
  On Linux ``VmHWM`` of ``/proc/self/status``, first reset to the current RSS
  through ``/proc/self/clear_refs`` (``peak_rss_reset: true``), so it is the
  round's own peak; ``rss_before_round_bytes`` is the RSS just before the
  round, ``round_peak_growth_bytes`` the difference. ``rss_first_chunk_bytes``
  and ``rss_last_chunk_bytes`` (read as each chunk reaches the store),
  ``peak_rss_first_chunk_bytes`` (the peak once the first chunk is stored) and
  ``peak_rss_chunk`` (the chunk by which the round's peak was reached) show
  whether memory grows during the round;
* ``winners_bytes``: the bytes of all tensors handed to the store for the
  winners (``x``, ``slot``, ``rewards``, ``labels``), ``winners_x_bytes``
  (``x`` only) and ``store_bytes`` (the committed round on disk). The winners
  are written chunk by chunk, never held in memory together.

``--profile`` runs the round under Lightning's ``PyTorchProfiler`` (the module
names its phases with ``record_function("curate_round/<phase>")``), writes a
Chrome trace (open it in chrome://tracing or https://ui.perfetto.dev) and the
profiler's summary table, and says where they went (``profile_trace``,
``profile_summary``; the phase regions' totals are printed on stderr).

``--compile-compare`` then measures generation throughput with
``torch.compile`` of the velocity network off and on, side by side, in this
one process: the same blocks of ``512 * num_candidates`` samples as a round,
the first (compiling) call timed apart, then ``--compare-repeats``
alternating timed passes of each (median).

Examples::

    python scripts/bench_round.py --config configs/mog8.yaml
    OMP_NUM_THREADS=1 python scripts/bench_round.py --config configs/mog8.yaml --num-slots 1000000 --threads 1
    python scripts/bench_round.py --config configs/mog8.yaml --profile --profile-dir runs/bench_profile
    python scripts/bench_round.py --config configs/mog8.yaml --compile-compare
    python scripts/bench_round.py --config configs/mog8.yaml --record   # docs/experiments/records/bench_round_mog8.json
    # any other option goes to the LightningCLI, e.g. a GPU with bf16 autocast and compile:
    python scripts/bench_round.py --config configs/mog8.yaml --trainer.accelerator=gpu \\
        --model.init_args.generator.init_args.autocast=bfloat16 \\
        --model.init_args.generator.init_args.compile=true
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightning_curate.cli import CurateCLI
from lightning_curate.experiments.records import DEFAULT_FOLDER, write_record
from lightning_curate.loop.callback import RetrainingLoop
from lightning_curate.loop.curation_module import PHASES, SLOT_BLOCK
from lightning_curate.store.rounds import RoundStore
from lightning_curate.utils.seeding import derive_seed
from lightning_curate.utils.seeding import generator as make_generator

REPO = Path(__file__).resolve().parents[1]

KIB, MIB = 1 << 10, 1 << 20
WINNER_KEYS = ("x", "slot", "rewards", "labels")


# -- memory ------------------------------------------------------------------
def _proc_status(key: str) -> Optional[int]:
    """A ``kB`` field of ``/proc/self/status`` in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * KIB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS (``VmHWM``) to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def current_rss() -> Optional[int]:
    """The resident memory now, in bytes (``VmRSS``; None off Linux)."""
    return _proc_status("VmRSS")


def peak_rss() -> int:
    """Peak RSS in bytes: ``VmHWM`` on Linux, else ``ru_maxrss`` (bytes on macOS)."""
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # Unix only; Linux answered above

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * KIB


# -- building ------------------------------------------------------------------
def build_cli(config: str, root: Path, num_slots: Optional[int], chunk_size: Optional[int],
              extra: list[str]) -> CurateCLI:
    """The model, DataModule and trainer of ``config``, as ``lightning-curate fit -c config`` builds them."""
    args = ["-c", config, f"--trainer.default_root_dir={root}"]
    if num_slots is not None:
        args.append(f"--model.init_args.num_slots={num_slots}")
    if chunk_size is not None:
        args.append(f"--model.init_args.chunk_size={chunk_size}")
    args += extra
    # Our own argv is not the CLI's: the options meant for it are passed in `args`.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    return CurateCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     args=args, run=False, parser_kwargs={"parser_mode": "omegaconf+"},
                     save_config_callback=None)


class _EpochTimer(Callback):
    """Seconds of the training epoch (the batches only: not the trainer's setup)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.batches = 0
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self._start


def train_round0(module, datamodule, trainer_cfg, batches: int, root: Path) -> tuple[float, int, torch.device]:
    """Train round 0 on real data for ``batches`` batches; returns (seconds, batches run, device)."""
    timer = _EpochTimer()
    trainer = L.Trainer(
        accelerator=trainer_cfg.get("accelerator", "auto"), devices=1, precision=trainer_cfg.get("precision"),
        max_epochs=1, limit_train_batches=max(batches, 1), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(root), callbacks=[timer])
    if batches <= 0:  # no training: still prepare what fit would
        datamodule.prepare_data()
        module.prepare_data()
        return 0.0, 0, trainer.strategy.root_device
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds, timer.batches, trainer.strategy.root_device


def _config_seed(cli: CurateCLI, override: Optional[int]) -> int:
    if override is not None:
        return override
    for callback in cli.trainer.callbacks:  # type: ignore[attr-defined]  # set by Lightning's callback connector
        if isinstance(callback, RetrainingLoop):
            return callback.seed
    return 0


# -- the round -------------------------------------------------------------------
def run_round(module, datamodule, seed: int, store_root: Path, profile_dir: Optional[Path]) -> dict:
    """One curation round streamed into a RoundStore under ``store_root``; timings, memory and sizes."""
    store = RoundStore(store_root)
    store.begin(0)
    written = {"winners_bytes": 0, "winners_x_bytes": 0, "parts": 0}
    chunk_rss: list[int] = []
    chunk_peak: list[int] = []

    def sink(tensors, chunk_idx):
        written["winners_bytes"] += sum(t.nbytes for k, t in tensors.items() if k in WINNER_KEYS)
        written["winners_x_bytes"] += tensors["x"].nbytes
        written["parts"] += 1
        store.write_part(0, tensors, rank=0, chunk=chunk_idx)
        rss = current_rss()
        if rss is not None:
            chunk_rss.append(rss)
        chunk_peak.append(peak_rss())

    round_seed = derive_seed(seed, "round", 0)
    kwargs = dict(seed=round_seed, label_fn=datamodule.label, class_names=datamodule.class_names, sink=sink)
    profiler = trace_path = None
    if profile_dir is not None:
        from lightning.pytorch.profilers import PyTorchProfiler

        profile_dir.mkdir(parents=True, exist_ok=True)
        trace_path = profile_dir / "curate_round.pt.trace.json"
        # schedule=None: record the whole round (the default schedule counts training steps).
        profiler = PyTorchProfiler(dirpath=str(profile_dir), filename="curate_round", export_to_chrome=True,
                                   schedule=None, record_module_names=False, row_limit=25,
                                   sort_by_key="cpu_time_total",
                                   on_trace_ready=lambda prof: prof.export_chrome_trace(str(trace_path)))

    gc.collect()
    reset = reset_peak_rss()
    rss_before = current_rss()
    start = time.perf_counter()
    with profiler.profile("curate_round") if profiler is not None else contextlib.nullcontext():
        outcome = module.curate_round(0, **kwargs)
    wall = time.perf_counter() - start
    peak = peak_rss()

    start = time.perf_counter()
    if outcome.tensors.get("preview") is not None:
        store.write_preview(0, outcome.tensors, rank=0)
    store.commit(0, {"produced_by_round": 0, "num_slots": module.num_slots, "round_seed": round_seed,
                     "timings": dict(module.timings), "row": outcome.row, "world_size": 1})
    commit = time.perf_counter() - start

    result = {
        **{phase: module.timings[phase] for phase in PHASES},
        "commit": commit,
        "curate_round_wall_seconds": wall,
        "peak_rss_bytes": peak,
        "peak_rss_mib": round(peak / MIB, 1),
        "peak_rss_reset": reset,
        "rss_before_round_bytes": rss_before,
        "round_peak_growth_bytes": peak - rss_before if (reset and rss_before is not None) else None,
        "rss_first_chunk_bytes": chunk_rss[0] if chunk_rss else None,
        "rss_last_chunk_bytes": chunk_rss[-1] if chunk_rss else None,
        # The peak after the first chunk, and the first chunk by which the round's peak was reached
        # (None: after the last chunk): a peak that grows with num_slots shows up as a late chunk.
        "peak_rss_first_chunk_bytes": chunk_peak[0] if chunk_peak else None,
        "peak_rss_chunk": next((i for i, v in enumerate(chunk_peak) if v >= peak), None),
        "chunks": written["parts"],
        "winners_bytes": written["winners_bytes"],
        "winners_x_bytes": written["winners_x_bytes"],
        "store_bytes": sum(p.stat().st_size for p in store.path(0).iterdir()),
        "reward_mean": outcome.row.get("reward_mean"),
        "curated_reward_mean": outcome.row.get("curated_reward_mean"),
    }
    if profiler is not None and profile_dir is not None:
        profiler.describe()  # stops the profiler: exports the trace, writes the summary table
        summary = profile_dir / "curate_round.txt"
        result["profile_trace"] = str(trace_path)
        result["profile_summary"] = str(summary) if summary.exists() else None
        regions = {}
        for event in profiler.function_events.key_averages() if profiler.function_events is not None else []:
            if event.key.startswith("curate_round/"):
                regions[event.key] = event.cpu_time_total / 1e6
        print("profile: curate_round regions (CPU seconds): "
              + ", ".join(f"{k}={v:.3f}" for k, v in sorted(regions.items())), file=sys.stderr)
        print(f"profile: Chrome trace written to {trace_path} (open in chrome://tracing or ui.perfetto.dev); "
              f"summary table in {summary}", file=sys.stderr)
        result["profile_regions_seconds"] = regions
    return result


def compile_compare(module, device: torch.device, seed: int, blocks: int, repeats: int) -> dict:
    """Generation throughput, eager vs ``torch.compile``, on the round's own block shapes."""
    gen = module.generator
    if not hasattr(gen, "compile_sampling"):
        raise SystemExit(f"--compile-compare needs a FlowMatching generator (compile switch), "
                         f"got {type(gen).__name__}")
    n = SLOT_BLOCK * module.num_candidates
    was = gen.compile_sampling

    def one_pass(flag: bool) -> tuple[float, torch.Tensor]:
        gen.compile_sampling = flag
        _sync(device)
        start = time.perf_counter()
        for b in range(blocks):
            out = gen.sample(n, generator=make_generator(derive_seed(seed, "compare", b)), device=device)
        _sync(device)
        return time.perf_counter() - start, out

    try:
        gen.compile_sampling = False
        gen.sample(n, generator=make_generator(0), device=device)  # warm up the eager path too
        gen.compile_sampling = True
        _sync(device)
        start = time.perf_counter()
        gen.sample(n, generator=make_generator(0), device=device)  # compiles
        _sync(device)
        compile_seconds = time.perf_counter() - start
        eager, compiled = [], []
        for _ in range(repeats):  # alternate, so background load hits both alike
            seconds, eager_out = one_pass(False)
            eager.append(blocks * n / seconds)
            seconds, compiled_out = one_pass(True)
            compiled.append(blocks * n / seconds)
    finally:
        gen.compile_sampling = was
    eager_rate, compiled_rate = statistics.median(eager), statistics.median(compiled)
    return {
        "samples_per_pass": blocks * n,
        "repeats": repeats,
        "eager_samples_per_s": eager_rate,
        "compiled_samples_per_s": compiled_rate,
        "compiled_over_eager": compiled_rate / eager_rate,
        "eager_samples_per_s_all": eager,
        "compiled_samples_per_s_all": compiled,
        "first_compiled_call_seconds": compile_seconds,
        "max_abs_diff": float((eager_out - compiled_out).abs().max()),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- main ------------------------------------------------------------------------
def parse_args(argv: Optional[list[str]]) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the rest (for the LightningCLI)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other options (e.g. --trainer.accelerator=gpu, --model.init_args.beta=2) go to the LightningCLI.")
    parser.add_argument("--config", required=True, help="a lightning-curate YAML config")
    parser.add_argument("--num-slots", type=int, default=None, help="slots of the round (default: the config's)")
    parser.add_argument("--chunk-size", type=int, default=None, help="slots per chunk (default: the config's)")
    parser.add_argument("--train-batches", type=int, default=20, help="round-0 training batches (0: none)")
    parser.add_argument("--seed", type=int, default=None, help="run seed (default: the RetrainingLoop's)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="run the round under Lightning's PyTorchProfiler")
    parser.add_argument("--profile-dir", default="runs/bench_round/profile", help="where --profile writes")
    parser.add_argument("--compile-compare", action="store_true",
                        help="generation throughput with torch.compile off and on, side by side")
    parser.add_argument("--compare-blocks", type=int, default=8, help="blocks of 512*K samples per timed pass")
    parser.add_argument("--compare-repeats", type=int, default=3, help="timed passes of each (median)")
    parser.add_argument("--keep", default=None, help="keep the round store and run folder here")
    parser.add_argument("--record", nargs="?", type=Path, const=REPO / DEFAULT_FOLDER, default=None,
                        metavar="FOLDER", help=f"also write the figures as a JSON record (default folder "
                                               f"{DEFAULT_FOLDER})")
    parser.add_argument("--record-name", default=None,
                        help="the record's name (default bench_round_<config stem>; name variants apart)")
    return parser.parse_known_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    """Benchmark one round; print its JSON line (and with ``--record`` write the JSON record)."""
    argv = sys.argv[1:] if argv is None else argv
    args, extra = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_round_"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        # Lightning and the CLI print to stdout; keep stdout for the one JSON line.
        with contextlib.redirect_stdout(sys.stderr):
            cli = build_cli(args.config, root / "run", args.num_slots, args.chunk_size, extra)
            module, datamodule = cli.model, cli.datamodule
            seed = _config_seed(cli, args.seed)
            train_seconds, train_batches, device = train_round0(
                module, datamodule, dict(cli.config.get("trainer", {})), args.train_batches, root / "train")
            module.to(device)
            round_result = run_round(module, datamodule, seed, root / "rounds",
                                     Path(args.profile_dir) if args.profile else None)
            compare = (compile_compare(module, device, seed, args.compare_blocks, args.compare_repeats)
                       if args.compile_compare else None)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    n_cands = module.num_slots * module.num_candidates
    curation = round_result["curate_round_wall_seconds"] + round_result["commit"]
    total = train_seconds + curation
    gen = module.generator
    result = {
        "config": args.config,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "num_slots": module.num_slots,
        "num_candidates": module.num_candidates,
        "num_winners": module.num_winners,
        "chunk_size": module.chunk_size,
        "compile": getattr(gen, "compile_sampling", None),
        "autocast": getattr(gen, "autocast", None),
        "profiled": args.profile,  # profiling slows the phases down: compare like with like
        "train": train_seconds,
        "train_batches": train_batches,
        **{k: round_result.pop(k) for k in PHASES},
        "commit": round_result.pop("commit"),
        "curation_seconds": curation,
        "total_round_seconds": total,
        "curate_fraction": module.timings["curate"] / total,
        "curate_fraction_of_curation": module.timings["curate"] / curation,
        "generate_samples_per_s": n_cands / module.timings["generate"] if module.timings["generate"] else None,
        "num_generated": n_cands,
        **round_result,
    }
    if compare is not None:
        result["compile_compare"] = compare
    print(json.dumps(result), flush=True)  # first: a refused record still leaves the figures on stdout
    if args.record is not None:
        path = write_record(args.record_name or f"bench_round_{Path(args.config).stem}", result,
                            shlex.join(["python", "scripts/bench_round.py", *argv]), args.record, device=str(device))
        print(f"record: {path}", file=sys.stderr, flush=True)
    return result


if __name__ == "__main__":
    main()
