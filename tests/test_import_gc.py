"""Importing lightning_curate pauses the cyclic collector and puts it back as it was."""

import subprocess
import sys

import pytest

PROBE = """
import gc
{before}
import lightning_curate
print(gc.isenabled(), gc.get_freeze_count())
"""


@pytest.mark.parametrize(("before", "expected"), [("", "True 0"), ("gc.disable()", "False 0")])
def test_import_restores_the_collector(before: str, expected: str) -> None:
    """Enabled stays enabled and disabled stays disabled; nothing is frozen (only the command freezes)."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split()[-2:] == expected.split()
