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


def _load_bench_kchoice():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_kchoice", REPO / "scripts" / "bench_kchoice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_kchoice_roofline_model():
    """Bytes per call and the peak-bandwidth table (the more specific card names win)."""
    bench = _load_bench_kchoice()
    # 1e6 x 16 fp32: one 64 MB read, 16 MB of outputs (index 8 B + log_prob 4 B + logsumexp 4 B per row).
    assert bench.roofline_bytes(1_000_000, 16, 1) == 64_000_000 + 16_000_000
    assert bench.roofline_bytes(1_000_000, 16, 4) == 64_000_000 + 4 * 12_000_000 + 4_000_000
    cards = {"NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000, "NVIDIA H100 NVL": 3900,
             "NVIDIA H200": 4800, "NVIDIA GH200 480GB": 4000, "NVIDIA A100-SXM4-80GB": 2039,
             "NVIDIA A100-SXM4-40GB": 1555, "NVIDIA A100 80GB PCIe": 1935, "NVIDIA A10G": 600,
             "NVIDIA L4": 300, "NVIDIA L40S": 864}
    for name, gbps in cards.items():
        assert bench.known_peak_gbps(name) == gbps, name
    assert bench.known_peak_gbps("Some Future GPU") is None


def test_bench_kchoice_roofline_without_gpu_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_kchoice.py"), "--roofline", "only", "--device", "cpu",
         "--n", "500", "--k", "4", "--d", "0", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Roofline: no GPU here" in proc.stdout
    assert "kchoice ms" in proc.stdout  # the CPU comparison ran instead
