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
    from run_configs import load_script

    return load_script(REPO / "scripts" / "bench_kchoice.py")


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


def test_bench_kchoice_roofline_table_and_targets(capsys):
    """The roofline's table and targets from given timings (the timing itself needs CUDA)."""
    bench = _load_bench_kchoice()
    peak = 3350.0
    rows = []
    for (n, k, m), kc_ms in zip(bench.ROOFLINE_SHAPES, (0.030, 0.060, 0.040, 0.050)):
        nbytes = bench.roofline_bytes(n, k, m)
        row = {"device_name": "NVIDIA H100 80GB HBM3", "N": n, "K": k, "m": m, "bytes": nbytes,
               "kchoice_ms": kc_ms, "kernel_ms": kc_ms / 2, "multinomial_ms": 0.5, "gumbel_eager_ms": 0.2,
               "gumbel_compiled_ms": 0.1}
        row["gbps"] = nbytes / (kc_ms * 1e-3) / 1e9
        row["kernel_gbps"] = 2 * row["gbps"]
        row["kchoice_compact_gbps"] = bench.method_bytes("kchoice_compact", n, k, m) / (kc_ms * 1e-3) / 1e9
        row["sum_gbps"] = bench.method_bytes("sum", n, k, m) / (kc_ms * 1e-3) / 1e9
        row["gumbel_compiled_gbps"] = bench.method_bytes("gumbel_compiled", n, k, m) / 0.1e-3 / 1e9
        row["roofline_ms"] = nbytes / (peak * 1e9) * 1e3
        row["peak_fraction"] = row["gbps"] / peak
        row["kernel_peak_fraction"] = row["kernel_gbps"] / peak
        for method in ("multinomial", "gumbel_eager", "gumbel_compiled"):
            row[f"speedup_{method}"] = row[f"{method}_ms"] / kc_ms
        rows.append(row)
    bench.print_roofline(rows, peak, "table entry")
    out = capsys.readouterr().out
    assert "Roofline on NVIDIA H100 80GB HBM3" in out and "kernel % peak" in out
    status = {t["name"]: t["status"] for t in bench.roofline_targets(rows, peak)}
    # Bandwidth at 1e6 x 16 and 1e7 x 4, compiled Gumbel at both, softmax + multinomial at 1e6 x 16.
    # 1e6 x 16: 80 MB in 30 us = 2667 GB/s = 79.6% of 3350 -> PASS; 1e7 x 4: 320 MB in 60 us -> PASS;
    # 0.1 ms / 0.03 ms and 0.1 ms / 0.06 ms = 3.3x and 1.7x compiled Gumbel -> PASS, PASS;
    # 0.5 ms / 0.03 ms = 16.7x softmax + multinomial -> PASS. At 200 us on 1e6 x 16: 12%, 0.5x, 2.5x -> FAIL.
    assert list(status.values()) == ["PASS"] * 5
    rows[0]["kchoice_ms"] = 0.2
    rows[0]["gbps"] = rows[0]["bytes"] / 0.2e-3 / 1e9
    rows[0]["peak_fraction"] = rows[0]["gbps"] / peak
    rows[0]["speedup_multinomial"] = 0.5 / 0.2
    rows[0]["speedup_gumbel_compiled"] = 0.1 / 0.2
    assert [t["status"] for t in bench.roofline_targets(rows, peak)] == ["FAIL", "PASS", "FAIL", "PASS", "FAIL"]
    assert [t["status"] for t in bench.roofline_targets(rows, None)][:2] == ["SKIP", "SKIP"]
