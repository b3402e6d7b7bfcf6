"""``lightning-curate diagnose jitter|budget|solver``: the checks a user runs on their own runs.

Each subcommand is one module of this subpackage (:mod:`~lightning_curate.diagnostics.jitter`,
:mod:`~lightning_curate.diagnostics.budget`, :mod:`~lightning_curate.diagnostics.solver`), with
its options and its help (``lightning-curate diagnose budget --help``). Exit status: 0 when the
diagnostic ran; 1 when it could not (the ``error:`` line names the file or option); 2 for a bad
option (argparse's usage message).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Optional

from lightning_curate.diagnostics import budget, jitter, solver
from lightning_curate.diagnostics.common import DiagnosticError

__all__ = ["build_parser", "main"]

Runner = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
# name: (module, one line of what it answers)
COMMANDS = {
    "jitter": (jitter, "how far a round's result moves when only the learner's randomness changes "
                       "(measures RetrainingLoop's learner_noise)"),
    "budget": (budget, "how a round's learner gap shrinks with its training budget (steps x batch)"),
    "solver": (solver, "how much of a run's learner error is its ODE solver's (against adaptive dopri5)"),
}


def _plain(doc: Optional[str]) -> str:
    """A docstring as terminal help: without reST's double backticks and role markup."""
    text = re.sub(r":(?:mod|func|class):`~?([^`]+)`", r"\1", doc or "")
    return text.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The ``diagnose`` parser, one subparser per diagnostic (the module docstring is its help text)."""
    parser = argparse.ArgumentParser(prog="lightning-curate diagnose", description=_plain(__doc__.split("\n\n", 1)[0]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}", required=True)
    for name, (module, summary) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=_plain(module.__doc__),
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.set_defaults(runner=module.run, subparser=sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run one diagnostic; returns its exit status (``lightning-curate diagnose ...`` exits with it).

    Example:
        >>> main(["solver", "runs/mog8", "-n", "4000"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    runner: Runner = args.runner
    try:
        return runner(args, args.subparser)
    except DiagnosticError as err:
        if os.environ.get("LIGHTNING_CURATE_DEBUG") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
