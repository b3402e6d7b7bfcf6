"""Experiment runners on top of the library: sweeps of curated-retraining runs over configs and seeds.

``lightning-curate-sweep`` (:mod:`lightning_curate.experiments.sweep`) plans a grid
(:mod:`~lightning_curate.experiments.grid`), runs and resumes its runs
(:mod:`~lightning_curate.experiments.runner`) and aggregates their tables
(:mod:`~lightning_curate.experiments.aggregate`); :func:`load_run` opens one
finished run again (:mod:`~lightning_curate.experiments.saved_run`);
:func:`fidelity_over_seeds` reads a sweep's learner fidelity over its seeds
(:mod:`~lightning_curate.experiments.seed_fidelity`).
"""

from lightning_curate.experiments.aggregate import aggregate, metric_columns, plot_sweep, summarise
from lightning_curate.experiments.config_keys import SweepError, get_key, load_base_config, set_key
from lightning_curate.experiments.grid import RunSpec, parse_grid_spec, parse_seeds, parse_set_spec, plan_sweep
from lightning_curate.experiments.runner import RunResult, run_status, run_sweep
from lightning_curate.experiments.saved_run import SavedRun, load_run
from lightning_curate.experiments.seed_fidelity import SeedFidelity, fidelity_over_seeds

__all__ = ["RunResult", "RunSpec", "SavedRun", "SeedFidelity", "SweepError", "aggregate", "fidelity_over_seeds",
           "get_key", "load_base_config", "load_run",
           "metric_columns", "parse_grid_spec", "parse_seeds", "parse_set_spec", "plan_sweep", "plot_sweep",
           "run_status", "run_sweep", "set_key", "summarise"]
