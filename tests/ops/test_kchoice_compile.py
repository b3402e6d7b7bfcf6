"""Ahead-of-time compile check of the K-choice kernels for sm_80 and sm_90, on a CPU.

Two budgets. Registers and spills for every variant; and, for the roofline
variants (softmax, one winner, fp32, K = 4, 16, 256, every autotune config),
the SASS counts that make the kernel limited by memory rather than by the
instructions it issues (issue 26): instructions per reward element, 128-bit
loads, hardware ``MUFU.LG2`` / ``MUFU.EX2`` per element, no barrier in a loop.
The counts' table is printed (``pytest -s``), as ``python -m
lightning_curate.kernels.kchoice_aot --counts`` prints it.

Every launch configuration the CUDA launchers can pick (the whole autotune set,
over a representative set of K, m, modes and dtypes, and the gather for
1/2/4/8-byte candidates) is compiled by Triton's real compiler with the
wheel's ptxas, exactly as Triton's JIT would specialise it at launch
(``lightning_curate.kernels.kchoice_aot``), and its registers and stack are
read from the cubin with the wheel's ``cuobjdump -res-usage``. A variant fails
on any local-memory spill or on more than 128 registers per thread.

The compile runs once per session in a subprocess without TRITON_INTERPRET
(conftest.py sets it, and the interpreter replaces the kernels). Triton's
on-disk cache makes later sessions fast; a cold run takes about two minutes on
2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_curate.kernels import kchoice_aot as aot

REPO = Path(__file__).resolve().parents[2]
_MISSING = aot.nvidia_tools_missing()
needs_nvidia_tools = pytest.mark.skipif(_MISSING is not None, reason=f"no AOT compile for NVIDIA: {_MISSING}")
VARIANTS = aot.default_variants() if _MISSING is None else []
ROOFLINE = aot.roofline_variants() if _MISSING is None else []
# The interpreter's fallback (tl.log2: libdevice's polynomial) compiled for the GPU: over the budget.
ROOFLINE_CONTROL = {**ROOFLINE[4], "fast": False} if ROOFLINE else {}

# A launch the budget must reject: the pre-issue-13 default tile (2048 elements,
# 4 warps, so 16 per thread) for Plackett-Luce softmax at K = 2.
CONTROL = {"kernel": "topm", "mode": "softmax", "m": 2, "k": 2, "dtype": "float32",
           "block_n": 1024, "block_k": 2, "num_warps": 4, "arch": 90}

_SCRIPT = """
import json, sys
from lightning_curate.kernels.kchoice_aot import compile_all
variants = json.load(open(sys.argv[1]))
json.dump(compile_all(variants, jobs=int(sys.argv[3])), open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """``{name: result}`` for every variant and the control, compiled in one subprocess."""
    tmp = tmp_path_factory.mktemp("aot")
    todo, done = tmp / "variants.json", tmp / "results.json"
    todo.write_text(json.dumps(list({aot.variant_name(v): v for v in VARIANTS + ROOFLINE + [CONTROL]
                                     + ([ROOFLINE_CONTROL] if ROOFLINE else [])}.values())))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(todo), str(done), jobs], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"AOT compile failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return {r["name"]: r for r in json.loads(done.read_text())}


@pytest.mark.slow
@needs_nvidia_tools
@pytest.mark.parametrize("variant", VARIANTS, ids=[aot.variant_name(v) for v in VARIANTS])
def test_variant_fits_the_register_budget(compiled, variant):
    result = compiled[aot.variant_name(variant)]
    assert result["regs"] > 0
    assert aot.problems(result) == [], f"{result['name']}: {aot.problems(result)}"


@pytest.mark.slow
@needs_nvidia_tools
def test_the_check_rejects_an_over_budget_launch(compiled):
    """The reader sees spills and register counts: the old 16-elements-per-thread tile fails."""
    result = compiled[aot.variant_name(CONTROL)]
    assert result["regs"] > aot.MAX_REGISTERS or result["stack"] > 0, result
    assert aot.problems(result)


@pytest.mark.slow
@needs_nvidia_tools
def test_roofline_counts_fit_their_budgets(compiled, capsys):
    """Instructions per element, LDG.E.128, MUFU per element, barriers in loops, registers and spills."""
    results = [compiled[aot.variant_name(v)] for v in ROOFLINE]
    with capsys.disabled():
        print("\n" + aot.count_table(results))
    bad = {r["name"]: aot.count_problems(r) for r in results if aot.count_problems(r)}
    assert not bad, bad
    assert {(r["arch"], r["k"]) for r in results} == {(a, k) for a in (80, 90) for k in (4, 16, 256)}


@pytest.mark.slow
@needs_nvidia_tools
def test_the_counts_reject_the_libdevice_log(compiled):
    """The same kernel with the interpreter's tl.log2 (libdevice) on the GPU: no MUFU.LG2, far over budget."""
    result = compiled[aot.variant_name(ROOFLINE_CONTROL)]
    assert result["counts"]["per_element"] > aot.ROOFLINE_BUDGET[result["k"]]
    assert any("MUFU.LG2" in p for p in aot.count_problems(result))


@needs_nvidia_tools
def test_variants_cover_every_config_the_autotuner_keeps():
    """Each config the launcher's autotune pruning keeps for a K of the set is compiled."""
    from lightning_curate.kernels import kchoice_triton as kt

    listed = {(v["kernel"], v["k"], v["block_n"], v["block_k"], v["num_warps"])
              for v in VARIANTS if v["kernel"] != "gather" and v["arch"] == 90}
    for kernel, tuned in (("one", kt._one_tuned), ("topm", kt._topm_tuned)):
        for k in (1, 2, 5, 16, 64, 300, 4096):
            if kernel == "topm" and k < 4:
                continue
            kept = kt._configs_for_k(tuned.configs, {"K": k})
            assert len(kept) == len(kt.gpu_configs(1 if kernel == "one" else 2))
            for c in kept:
                assert (kernel, k, c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps) in listed


def test_variant_set_is_representative():
    """Modes, m = 1 and m > 1, K from 1 to 4096, four reward dtypes, four candidate widths, two archs."""
    if _MISSING is not None:
        pytest.skip(f"no AOT compile for NVIDIA: {_MISSING}")
    kc = [v for v in VARIANTS if v["kernel"] != "gather"]
    assert {v["mode"] for v in kc} == {"softmax", "argmax", "uniform"}
    assert {v["m"] for v in kc} == {1, 4}
    assert min(v["k"] for v in kc) == 1 and max(v["k"] for v in kc) >= 4096
    assert {v["dtype"] for v in kc} == {"float32", "float16", "bfloat16", "float64"}
    assert {v["bytes"] for v in VARIANTS if v["kernel"] == "gather"} == {1, 2, 4, 8}
    assert {v["arch"] for v in VARIANTS} == {80, 90}
