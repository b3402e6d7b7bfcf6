"""Diagnostics of a run's fidelity, run as ``lightning-curate diagnose jitter|budget|solver``.

Each answers one question about what the fidelity columns of ``rounds.csv`` can be trusted with:

* :mod:`~lightning_curate.diagnostics.jitter`: the learner's refit jitter, in units of a round
  mean's sampling error (the value of ``RetrainingLoop(learner_noise=...)``);
* :mod:`~lightning_curate.diagnostics.budget`: how a round's learner gap shrinks with its
  training budget;
* :mod:`~lightning_curate.diagnostics.solver`: the ODE sampler's error against an adaptive
  reference.

The functions behind them are importable for notebooks; :func:`main` is the command line.
"""

from lightning_curate.diagnostics.budget import load_round_start, refit_gap
from lightning_curate.diagnostics.cli import main
from lightning_curate.diagnostics.common import DiagnosticError
from lightning_curate.diagnostics.jitter import jitter_of_rows
from lightning_curate.diagnostics.solver import check_solvers, same_cost_solvers, smallest_counted_move

__all__ = ["DiagnosticError", "check_solvers", "jitter_of_rows", "load_round_start", "main", "refit_gap",
           "same_cost_solvers", "smallest_counted_move"]
