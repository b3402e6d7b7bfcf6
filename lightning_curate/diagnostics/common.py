"""What the diagnostics share: the error that names a bad file or option, and the progress bar.

A :class:`DiagnosticError` is printed by ``lightning-curate diagnose`` as one ``error: ...`` line
(exit status 1), never as a traceback: its message names the file, run directory or option at fault.
"""

from __future__ import annotations

from typing import Optional

from tqdm import tqdm

__all__ = ["DiagnosticError", "progress"]


class DiagnosticError(Exception):
    """A diagnostic that cannot run on what it was given; the message says which file or option and why."""


def progress(total: int, desc: str, unit: str, enabled: Optional[bool] = None) -> tqdm:
    """A progress bar on stderr over ``total`` steps of the long work (trainings, refits, solvers).

    Args:
        total: how many steps the work has.
        desc: what is being done, shown left of the bar.
        unit: what a step is (``"run"``, ``"refit"``, ``"solver"``).
        enabled: ``None`` (default) shows the bar only on a terminal, so logs and pipes stay clean;
            ``True`` or ``False`` force it on or off.

    Example:
        >>> with progress(3, "refits", "refit", enabled=False) as bar:
        ...     bar.update(3)
        ...     bar.n
        3
    """
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enabled is None else not enabled,
                dynamic_ncols=True, leave=False)
