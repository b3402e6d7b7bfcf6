"""A sweep's runs as one SLURM array job, through submitit (``lightning-curate-sweep --launcher submitit``).

Each array task is one grid point x seed, run exactly as the local pool runs it
(:func:`~lightning_curate.experiments.runner.run_point`): a ``lightning-curate fit``
subprocess that is skipped when finished and resumed from its checkpoint when not. So a
task that SLURM preempts or times out is simply picked up by the next submission of the
same sweep. The submitting process waits for every task to end and hands back their
results; the sweep then writes ``sweep.csv`` and ``fidelity.csv`` once, from every run.

submitit is an optional extra (``pip install 'lightning_curate[slurm]'``). Its local
executor (``cluster="local"``) runs the same array on this machine, one process per
task, which is how the launcher is tested without a cluster.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lightning_curate.experiments.config_keys import SweepError, check_count
from lightning_curate.experiments.grid import RunSpec
from lightning_curate.experiments.runner import RunResult, run_point

__all__ = ["CLUSTERS", "SlurmOptions", "require_submitit", "submit_sweep"]

CLUSTERS = ("slurm", "local")  # submitit's executors: a SLURM cluster, or one process per task here
EXTRA = "pip install 'lightning_curate[slurm]'"


@dataclass
class SlurmOptions:
    """What the array job asks of SLURM; ``None`` leaves a setting to the cluster's default.

    Args:
        folder: submitit's folder: each task's pickled call, result, stdout and stderr.
        partition: the SLURM partition (``--partition``).
        time_min: the time limit of each task, in minutes (``--time``).
        cpus: CPU cores per task (``--cpus-per-task``); also the runs' ``OMP_NUM_THREADS``
            unless that is set already.
        gpus: GPUs per task (``--gpus-per-node``).
        mem_gb: memory per task, in GB (``--mem``).
        parallel: at most this many tasks of the array at once (``--array=...%N``).
        cluster: ``slurm``, or ``local`` for submitit's local executor (no cluster needed).

    Example:
        >>> SlurmOptions(Path("runs/sweep/submitit"), partition="gpu", gpus=1).parameters()
        {'timeout_min': 60, 'name': 'lightning-curate-sweep', 'gpus_per_node': 1, 'slurm_partition': 'gpu'}
    """

    folder: Path
    partition: Optional[str] = None
    time_min: int = 60
    cpus: Optional[int] = None
    gpus: Optional[int] = None
    mem_gb: Optional[float] = None
    parallel: Optional[int] = None
    cluster: str = "slurm"

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise SweepError(f"--submitit-cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        check_count("--slurm-time", self.time_min, minimum=1)
        for flag, value in (("--slurm-cpus", self.cpus), ("--slurm-gpus", self.gpus),
                            ("--jobs", self.parallel)):
            if value is not None:
                check_count(flag, value, minimum=0 if flag == "--slurm-gpus" else 1)
        if self.mem_gb is not None and not self.mem_gb > 0:
            raise SweepError(f"--slurm-mem must be a positive number of GB, got {self.mem_gb!r}")

    def parameters(self) -> dict[str, Any]:
        """Submitit's ``update_parameters`` keywords (``slurm_*`` ones only reach a SLURM cluster)."""
        params: dict[str, Any] = {"timeout_min": self.time_min, "name": "lightning-curate-sweep"}
        for key, value in (("cpus_per_task", self.cpus), ("gpus_per_node", self.gpus), ("mem_gb", self.mem_gb),
                           ("slurm_partition", self.partition), ("slurm_array_parallelism", self.parallel)):
            if value is not None:
                params[key] = value
        return params


def require_submitit() -> Any:
    """The submitit module, or a :class:`SweepError` naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise SweepError(f"--launcher submitit needs the submitit package: {EXTRA}") from None
    return submitit


def submit_sweep(specs: Sequence[RunSpec], options: SlurmOptions, *, timeout: Optional[float] = None,
                 say: Callable[[str], None] = print) -> list[RunResult]:
    """Run ``specs`` as one submitit array job, wait for every task, and return their results in order.

    A task that ends without a result (cancelled, killed at its time limit, a node lost) is a
    ``failed`` run with submitit's reason; its run directory keeps what it wrote, and the next
    submission resumes it.
    """
    submitit = require_submitit()
    options.folder.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=str(options.folder), cluster=options.cluster)
    executor.update_parameters(**options.parameters())
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if options.cpus is not None:
        env.setdefault("OMP_NUM_THREADS", str(options.cpus))
    total = len(specs)
    indices = list(range(1, total + 1))
    jobs = executor.map_array(run_point, list(specs), indices, [total] * total, [sys.executable] * total,
                              [timeout] * total, [env] * total)
    array = jobs[0].job_id.split("_")[0] if jobs else "-"
    say(f"submitted {total} runs as one {options.cluster} array job {array}; submitit's logs in {options.folder}")
    results = []
    for spec, index, job in zip(specs, indices, jobs):
        try:
            result = job.result()
        except Exception as err:  # submitit raises on a task that ended without a result
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            say(f"[{index}/{total}] {spec.label}: FAILED in job {job.job_id}: {reason}")
            result = RunResult(spec, "failed", message=f"job {job.job_id}: {reason}")
        results.append(result)
    return results
