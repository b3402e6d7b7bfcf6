"""Smoke tests of the benchmark scripts: they run, end to end, on small shapes."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_kchoice_quick(tmp_path):
    out_json = tmp_path / "bench.json"
    # --device cpu: the suite is CPU-only even on a machine with a GPU.
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_kchoice.py"), "--quick", "--device", "cpu",
         "--json", str(out_json)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header = next((line for line in proc.stdout.splitlines() if line.lstrip().startswith("N ")), None)
    assert header is not None, proc.stdout
    for column in ("kchoice ms", "(a) multinom ms", "(b) loop ms", "(a)/kchoice", "(b)/kchoice", "kchoice GB/s"):
        assert column in header
    assert "Targets" in proc.stdout
    payload = json.loads(out_json.read_text())
    rows = [r for r in payload["rows"] if "skipped" not in r]
    assert rows and all(r["kchoice_ms"] > 0 and r["multinomial_ms"] > 0 for r in rows)
    assert any("loop_ms" in r for r in rows)
    assert payload["memory"], "--quick measures memory on one shape"
