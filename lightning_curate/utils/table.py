"""Writing a table as CSV so that a reader never sees half a file."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_csv"]


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` under ``columns`` (missing cells empty) to a temporary file, then move it into place.

    The temporary file sits beside ``path`` (same filesystem) and is synced before the rename. A
    failure (a full disk) leaves the previous table as it was, removes the temporary file and raises
    an ``OSError`` whose ``filename`` is ``path``.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp()) / "t.csv"
        >>> write_csv(out, ["a", "b"], [{"a": 1}]).read_text().splitlines()
        ['a,b', '1,']
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), restval="")
            writer.writeheader()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, f"cannot write the table: {err.strerror or err}", str(path)) from err
    return path
