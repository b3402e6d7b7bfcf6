r"""``lightning-curate-sweep``: run a grid of curated-retraining runs over seeds, resumably, and aggregate them.

::

    lightning-curate-sweep --config configs/discrete.yaml \\
        --grid data.init_args.real_fraction=0,0.5 --grid model.init_args.num_candidates=2,4 \\
        --seeds 0,1,2 --out runs/sweep [--jobs 2]
    lightning-curate-sweep configs/sweeps/discrete.yaml      # the same, from a sweep file
    lightning-curate-sweep -c configs/mog8.yaml -c configs/overlays/moons.yaml --seeds 0,1 --out runs/moons

Every grid point x seed is one ordinary run of the console script, in a
subprocess (``python -m lightning_curate fit -c <run>/sweep_config.yaml ...``),
in ``<out>/<point>/seed=<s>/``. The run's config is the base config with the
grid values and the seed merged in, written beside the run, so each run can be
re-run or inspected alone. Repeated ``-c`` files (a base and its overlays) merge in
order, as they do in ``lightning-curate fit``. A seed sets ``seed_everything``, the
``RetrainingLoop``'s ``seed`` and the DataModule's ``seed`` (the real dataset
stays the same).

Keys are dotted paths into the config: ``data.init_args.real_fraction``;
``init_args`` may be left out (``data.real_fraction``, ``model.num_candidates``);
``loop.<arg>`` is the ``RetrainingLoop`` callback's argument (``loop.rounds``);
list items take an index (``trainer.callbacks.0.init_args.seed``). Values are
read as YAML (``0.5``, ``true``, ``euler``, ``[0, 1]``).

``--launcher submitit`` hands the runs to SLURM as one array job instead, one run a
task (:mod:`~lightning_curate.experiments.slurm`); the local pool of ``--jobs``
processes is the default.

Runs already finished (their ``rounds.csv`` has every round the config asks for)
are skipped; unfinished runs with a checkpoint resume with ``--ckpt_path last``.
At the end every ``rounds.csv`` goes into ``<out>/sweep.csv`` (one row per point
x seed x round) and every metric gets a figure, ``<out>/figures/<metric>.png``:
the mean over seeds per round, with a 95% confidence band (Student t), one line
per grid point. The learner's fidelity over seeds (each round's ratio averaged
over the seeds, its error, and where it stands against the band:
:mod:`~lightning_curate.experiments.seed_fidelity`) is printed and written to
``<out>/fidelity.csv``.

The pieces live in :mod:`~lightning_curate.experiments.grid` (specs and planning),
:mod:`~lightning_curate.experiments.config_keys` (dotted keys),
:mod:`~lightning_curate.experiments.runner` (running and resuming) and
:mod:`~lightning_curate.experiments.aggregate` (``sweep.csv`` and summaries); this
module is the console script and re-exports them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from lightning_curate.experiments.aggregate import aggregate, metric_columns, plot_final_grid, plot_sweep, summarise
from lightning_curate.experiments.config_keys import (
    SweepError,
    check_count,
    get_key,
    load_base_config,
    read_yaml_mapping,
    set_key,
)
from lightning_curate.experiments.grid import RunSpec, parse_grid_spec, parse_seeds, parse_set_spec, plan_sweep
from lightning_curate.experiments.runner import RunResult, run_status, run_sweep
from lightning_curate.experiments.seed_fidelity import (
    FIDELITY_KEYS,
    fidelity_over_seeds,
    format_fidelity_over_seeds,
    write_fidelity_over_seeds,
)
from lightning_curate.experiments.slurm import CLUSTERS, SlurmOptions, require_submitit, submit_sweep
from lightning_curate.loop.fidelity import FIDELITY_BAND

__all__ = [
    "RunResult",
    "RunSpec",
    "SweepError",
    "aggregate",
    "configure",
    "finish",
    "get_key",
    "load_base_config",
    "load_sweep_file",
    "main",
    "metric_columns",
    "parse_grid_spec",
    "parse_seeds",
    "parse_set_spec",
    "plan_sweep",
    "plot_final_grid",
    "plot_sweep",
    "run_status",
    "run_sweep",
    "set_key",
    "submit_sweep",
    "summarise",
]


def load_sweep_file(path) -> dict:
    """Read and check a sweep file, the YAML form of the command line.

    Keys: ``base`` (config path, relative to the cwd or to the file, or a list of them: a base
    and its overlays, merged in order), ``grid`` (mapping key -> list of values), ``seeds``,
    ``out``, optional ``set`` (key -> value), ``jobs``, ``metrics`` (column patterns to plot),
    ``timeout``, ``grid_figure`` (``{x, y, metric, reference, x_label, y_label}``: the last round's
    ``metric`` on the grid of the keys ``x`` and ``y``, beside ``reference``, in
    ``figures/grid_<metric>.png``).
    """
    path = Path(path)
    spec = read_yaml_mapping(path, "sweep file", "a mapping with base, grid, seeds, out")
    keys = ("base", "grid", "seeds", "out", "set", "jobs", "metrics", "timeout", "grid_figure")
    unknown = set(spec) - set(keys)
    if unknown:
        raise SweepError(f"sweep file {str(path)!r}: unknown keys {sorted(unknown)} (expected {', '.join(keys)})")
    figure = spec.get("grid_figure")
    if figure is not None and (not isinstance(figure, dict) or not {"x", "y", "metric"} <= set(figure)
                               or not set(figure) <= {"x", "y", "metric", "reference", "x_label", "y_label"}):
        raise SweepError(f"sweep file {str(path)!r}: grid_figure must map x, y, metric (and optionally "
                         f"reference, x_label, y_label) to column names, got {figure!r}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"sweep file {str(path)!r}: grid must map keys to lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"sweep file {str(path)!r}: grid key {key!r} must list its values, got {values!r}")
    fixed = spec.get("set") or {}
    if not isinstance(fixed, dict):
        raise SweepError(f"sweep file {str(path)!r}: set must map keys to values")
    if spec.get("base") is not None:
        bases = [Path(str(b)) for b in (spec["base"] if isinstance(spec["base"], list) else [spec["base"]])]
        bases = [path.parent / b if not b.is_absolute() and not b.exists() and (path.parent / b).exists() else b
                 for b in bases]
        spec["base"] = [str(b) for b in bases] if isinstance(spec["base"], list) else str(bases[0])
    return spec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-curate-sweep",
        description="Run a grid of curated-retraining runs over seeds (resumable) and aggregate their "
                    "rounds.csv into one table and one figure per metric.",
        epilog="example: lightning-curate-sweep --config configs/discrete.yaml "
               "--grid data.init_args.real_fraction=0,0.5 --grid model.init_args.num_candidates=2,4 "
               "--seeds 0,1,2 --out runs/sweep --jobs 2")
    p.add_argument("sweep_file", nargs="?", help="a sweep YAML (base, grid, seeds, out, set, jobs)")
    p.add_argument("--config", "-c", action="append", metavar="CONFIG",
                   help="the base config (a lightning-curate fit config); repeat it for overlays, merged in order "
                        "as `lightning-curate fit -c A -c B` merges them")
    p.add_argument("--grid", "-g", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis; repeat for more axes (their product is the grid)")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed override for every run, e.g. loop.rounds=3")
    p.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-4 (default 0)")
    p.add_argument("--out", "-o", help="the sweep's directory (default runs/sweep)")
    p.add_argument("--jobs", "-j", type=int, help="runs in parallel (default 1); with --launcher submitit, "
                                                  "at most this many array tasks at once")
    p.add_argument("--timeout", type=float, help="seconds allowed per run")
    p.add_argument("--metrics", help="comma-separated column patterns to plot (default: every metric)")
    p.add_argument("--no-figures", action="store_true", help="write sweep.csv only")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their status, run nothing")
    p.add_argument("--aggregate-only", action="store_true", help="run nothing; aggregate what is there")
    slurm = p.add_argument_group("cluster", "--launcher submitit: the grid as one SLURM array job, one run a task "
                                            "(needs the slurm extra: pip install 'lightning_curate[slurm]')")
    slurm.add_argument("--launcher", choices=("local", "submitit"), default="local",
                       help="local: a pool of --jobs processes here (default); submitit: a SLURM array job")
    slurm.add_argument("--slurm-partition", metavar="NAME", help="the SLURM partition")
    slurm.add_argument("--slurm-time", type=int, default=60, metavar="MINUTES", help="time limit per run (60)")
    slurm.add_argument("--slurm-cpus", type=int, metavar="N", help="CPU cores per run")
    slurm.add_argument("--slurm-gpus", type=int, metavar="N", help="GPUs per run")
    slurm.add_argument("--slurm-mem", type=float, metavar="GB", help="memory per run, in GB")
    slurm.add_argument("--submitit-folder", metavar="DIR", help="submitit's logs and results (default OUT/submitit)")
    slurm.add_argument("--submitit-cluster", choices=CLUSTERS, default="slurm",
                       help="slurm (default), or local: submitit's local executor, the same array on this machine")
    return p


def _grid_from_args(file_grid: dict, cli_grid: Iterable[str]) -> dict[str, list]:
    grid = {str(k): list(v) for k, v in (file_grid or {}).items()}
    for spec in cli_grid:
        key, values = parse_grid_spec(spec)
        grid[key] = values
    return grid


def configure(argv: Optional[Sequence[str]] = None) -> tuple[argparse.Namespace, dict, list[RunSpec]]:
    """Parse the command line (and sweep file) into the runs; raises SweepError on a bad spec."""
    args = build_parser().parse_args(argv)
    spec = load_sweep_file(args.sweep_file) if args.sweep_file else {}
    base_path = (args.config if len(args.config) > 1 else args.config[0]) if args.config else spec.get("base")
    if not base_path:
        raise SweepError("no base config: pass --config BASE.yaml or a sweep file with `base:`")
    grid = _grid_from_args(spec.get("grid") or {}, args.grid)
    fixed = {str(k): v for k, v in (spec.get("set") or {}).items()}
    for s in args.set:
        key, value = parse_set_spec(s)
        fixed[key] = value
    seeds = parse_seeds(args.seeds if args.seeds is not None else spec.get("seeds", [0]))
    out = Path(args.out or spec.get("out") or "runs/sweep")
    jobs = check_count("--jobs", args.jobs if args.jobs is not None else spec.get("jobs", 1), minimum=1)
    metrics = args.metrics.split(",") if args.metrics else spec.get("metrics")
    timeout = args.timeout if args.timeout is not None else spec.get("timeout")
    base = load_base_config(base_path)
    specs = plan_sweep(base, grid, seeds, out, fixed=fixed)
    shown = " + ".join(map(str, base_path)) if isinstance(base_path, list) else str(base_path)
    settings = {"base": shown, "grid": grid, "fixed": fixed, "seeds": seeds, "out": out, "jobs": jobs,
                "metrics": metrics, "timeout": timeout, "grid_figure": spec.get("grid_figure")}
    if args.launcher == "submitit":
        require_submitit()  # before anything runs: a one-line error naming the extra
        settings["slurm"] = SlurmOptions(
            Path(args.submitit_folder) if args.submitit_folder else out / "submitit", partition=args.slurm_partition,
            time_min=args.slurm_time, cpus=args.slurm_cpus, gpus=args.slurm_gpus, mem_gb=args.slurm_mem,
            parallel=jobs if jobs > 1 else None, cluster=args.submitit_cluster)
    return args, settings, specs


def finish(specs: Sequence[RunSpec], out: Path, *, figures: bool = True, metrics=None,
           say: Callable[[str], None] = print, grid_figure: Optional[dict] = None) -> tuple[Path, list[Path]]:
    """Aggregate the runs into sweep.csv and the figures, and print a short summary."""
    table, rows = aggregate(specs, out)
    paths = []
    if figures and rows:
        order = list(dict.fromkeys(s.point for s in specs))
        paths = plot_sweep(rows, out / "figures", metrics=metrics, point_order=order)
        if grid_figure:
            grid_path = plot_final_grid(rows, out / "figures" / f"grid_{grid_figure['metric']}.png", **grid_figure)
            paths += [grid_path] if grid_path is not None else []
    say(f"\n{len(rows)} rows -> {table}" + (f"; {len(paths)} figures in {out / 'figures'}" if paths else ""))
    summary = summarise(rows, "reward_mean") if rows else {}
    if summary:
        say("final-round reward_mean (mean ± 95% half-width over seeds):")
        for point in dict.fromkeys(s.point for s in specs):
            if point in summary and summary[point][0]:
                rounds, means, halfs, n = summary[point]
                say(f"  {point:<48} round {rounds[-1]:g}: {means[-1]:.4f} ± {halfs[-1]:.4f} (n={n})")
    tables = {key: fidelity_over_seeds(rows, key) for key in FIDELITY_KEYS} if rows else {}
    path = write_fidelity_over_seeds(tables, out)
    fidelity = tables.get("reward_fidelity", {})
    if path is not None and any(f.n for rounds_ in fidelity.values() for f in rounds_):
        low, high = FIDELITY_BAND
        say(f"reward fidelity over seeds, per round (mean +- standard error, against the band {low:g}-{high:g}; "
            f"seeds with a ratio / seeds; the share ratios too in {path.name}) -> {path}:")
        for point in dict.fromkeys(s.point for s in specs):
            if point in fidelity:
                say(f"  {point}: {format_fidelity_over_seeds(fidelity[point])}")
    return table, paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``lightning-curate-sweep``; returns the exit status (1 if a run failed)."""
    try:
        args, settings, specs = configure(argv)
    except SweepError as err:
        print(f"lightning-curate-sweep: error: {err}", file=sys.stderr)
        return 2
    out = settings["out"]
    n_points = len({s.point for s in specs})
    print(f"Sweep of {settings['base']}: {n_points} grid points x {len(settings['seeds'])} seeds = "
          f"{len(specs)} runs in {out}" + (f", {settings['jobs']} in parallel" if settings["jobs"] > 1 else ""))
    if args.dry_run:
        for i, spec in enumerate(specs, 1):
            print(f"[{i}/{len(specs)}] {spec.label}: {run_status(spec)} -> {spec.run_dir}")
        return 0
    results = []
    if not args.aggregate_only and "slurm" in settings:
        results = submit_sweep(specs, settings["slurm"], timeout=settings["timeout"])
    elif not args.aggregate_only:
        results = run_sweep(specs, jobs=settings["jobs"], timeout=settings["timeout"])
    finish(specs, out, figures=not args.no_figures, metrics=settings["metrics"], grid_figure=settings["grid_figure"])
    failed = [r for r in results if r.status == "failed"]
    if results:
        counts = {k: sum(r.status == k for r in results) for k in ("fresh", "resumed", "skipped", "failed")}
        print("runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
