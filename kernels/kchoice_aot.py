"""Ahead-of-time compilation of the K-choice kernels for a named GPU, with no GPU.

Each variant the launchers can pick is specialised exactly as Triton's JIT would
specialise it at launch (its own argument binder: pointer alignment, integer
``== 1`` and divisibility-by-16 specialisation, the argument types), compiled
by Triton's real compiler for ``GPUTarget("cuda", capability, 32)`` with the
``ptxas`` shipped in the triton wheel, and its resource usage is read from the
compiled cubin by the wheel's ``cuobjdump -res-usage``.

Must run without ``TRITON_INTERPRET=1`` (the interpreter replaces the kernels):
tests/ops/test_kchoice_compile.py runs it in a subprocess. As a command it
prints the table of docs/readme/gpu.md::

    python -m lightning_curate.kernels.kchoice_aot            # the test's variant set
    python -m lightning_curate.kernels.kchoice_aot --json out.json
    python -m lightning_curate.kernels.kchoice_aot --counts --record docs/experiments/records/kchoice_sass_counts.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

__all__ = ["MAX_MUFU_PER_ELEMENT", "MAX_REGISTERS", "ROOFLINE_BUDGET", "compile_variant", "count_problems",
           "count_table", "counts_figures", "default_variants", "nvidia_tools_missing", "roofline_variants",
           "variant_name", "write_record"]

MAX_REGISTERS = 128
MODES = ("softmax", "argmax", "uniform")
ARCHS = (80, 90)
N_ROWS = 1_000_000  # the row count a variant is specialised for (divisible by 16, like most)
SEED = (1 << 61) + 12345  # split into two 31-bit halves by the launcher
# Dynamic SASS instructions per reward element (softmax, m = 1, fp32) at which an H100
# is still limited by HBM bandwidth (issue 26), and the special-function ops per element.
ROOFLINE_BUDGET = {4: 55, 16: 55, 256: 60}
MAX_MUFU_PER_ELEMENT = {"LG2": 2.5, "EX2": 1.5}


def nvidia_tools_missing() -> Optional[str]:
    """Why this triton wheel cannot compile for NVIDIA GPUs here (``None`` when it can)."""
    try:
        import triton
        from triton.backends import backends
    except ImportError as err:
        return f"triton does not import: {err}"
    if "nvidia" not in backends:
        return f"this triton wheel has no NVIDIA backend (backends: {sorted(backends)})"
    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(os.path.join(bin_dir, tool), os.X_OK):
            return f"the triton wheel ships no {tool} in {bin_dir}"
    return None


def variant_name(v: dict) -> str:
    """A variant's one-line name (its test id and table row)."""
    if v["kernel"] == "gather":
        return f"gather {v['bytes']}B D={v['d']} {v['block_r']}x{v['block_d']} w{v['num_warps']} sm_{v['arch']}"
    return (f"{v['mode']} m={v['m']} K={v['k']} {v['dtype']} {v['block_n']}x{v['block_k']} "
            f"w{v['num_warps']} sm_{v['arch']}" + ("" if v.get("fast", True) else " tl.log2"))


def default_variants() -> list[dict]:
    """Every launch configuration the CUDA launchers can pick, over representative shapes.

    The whole autotune set for each shape. sm_90: modes x m in {1, 4} x K in
    {1, 2, 5, 16, 64, 300, 4096} with fp32 rewards, softmax with fp16/bf16/fp64
    rewards at K in {2, 300} (one chunk, several chunks), the gather for
    1/2/4/8-byte candidates at D in {1, 3, 64, 3072}; sm_80: modes x m at K in
    {2, 300} with fp32 rewards, the gather at D in {3, 64}.
    """
    from lightning_curate.kernels.gather_triton import GATHER_NUM_WARPS, gather_blocks
    from lightning_curate.kernels.kchoice_triton import gpu_block_k, gpu_configs

    def kchoice_variants(arch, ks, dtype, modes):
        for k in ks:
            for mode in modes:
                for m in (1, 4):
                    if m > k:
                        continue
                    bk = gpu_block_k(k)
                    for tile, warps in gpu_configs(m):
                        yield {"kernel": "topm" if m > 1 else "one", "mode": mode, "m": m, "k": k,
                               "dtype": dtype, "block_n": max(1, tile // bk), "block_k": bk,
                               "num_warps": warps, "arch": arch}

    out = []
    for arch in ARCHS:
        if arch == 90:
            out += kchoice_variants(arch, (1, 2, 5, 16, 64, 300, 4096), "float32", MODES)
            for dtype in ("float16", "bfloat16", "float64"):
                out += kchoice_variants(arch, (2, 300), dtype, ("softmax",))
        else:
            out += kchoice_variants(arch, (2, 300), "float32", MODES)
        for nbytes in (1, 2, 4, 8):
            for d in (1, 3, 64, 3072) if arch == 90 else (3, 64):
                block_r, block_d = gather_blocks(N_ROWS, d, interpret=False)
                out.append({"kernel": "gather", "bytes": nbytes, "d": d, "block_r": block_r,
                            "block_d": block_d, "num_warps": GATHER_NUM_WARPS, "arch": arch})
    return out


class _Ptr:
    """Stands for a CUDA tensor in Triton's binder: a dtype and a 16-byte-aligned address."""

    def __init__(self, dtype):
        self.dtype = dtype

    @staticmethod
    def data_ptr():
        return 1 << 20


def _launch_args(v: dict):
    import torch

    from lightning_curate.kernels import gather_triton as gt
    from lightning_curate.kernels import kchoice_triton as kt

    if v["kernel"] == "gather":
        bits = gt._BIT_VIEWS[v["bytes"]]
        k = 4
        args = (_Ptr(bits), _Ptr(torch.int64), _Ptr(bits), N_ROWS, 1, v["d"], k * v["d"], v["d"])
        return gt._gather_kernel, args, {"BLOCK_R": v["block_r"], "BLOCK_D": v["block_d"]}
    half = kt._SEED_HALF
    k = v["k"]
    args = [_Ptr(getattr(torch, v["dtype"])), _Ptr(torch.int64), _Ptr(torch.int64), _Ptr(torch.float32),
            _Ptr(torch.float32), _Ptr(torch.int32), N_ROWS, k, 1, 1.5, SEED & ((1 << half) - 1), SEED >> half]
    if v["m"] > 1:
        args.append(v["m"])
    fn = kt._kchoice_topm_kernel if v["m"] > 1 else kt._kchoice_one_kernel
    consts = {"K": k, "MODE": kt._MODE_CODES[v["mode"]], "CONTIG": True, "BETA_ZERO": False,
              "ROW_IDS": bool(v.get("row_ids", False)), "WRITE_LP": True, "FAST": v.get("fast", True),
              "BLOCK_N": v["block_n"], "BLOCK_K": v["block_k"]}
    return fn, tuple(args), consts


def compile_variant(v: dict) -> dict:
    """Compile one variant; returns it with ``regs``, ``stack``, ``local``, ``shared`` (bytes) added."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn, args, consts = _launch_args(v)
    target = GPUTarget("cuda", v["arch"], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, opts = binder(*args, num_warps=v["num_warps"], **consts)
    options, signature, constexprs, attrs = fn._pack_args(backend, opts, bound, spec, opts)
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=target, options=options.__dict__)
    usage = _res_usage(kernel.asm["cubin"])
    out = {**v, **usage, "name": variant_name(v)}
    if v["kernel"] == "one":
        from lightning_curate.kernels.kchoice_sass import count_sass, sass_of

        trips = -(-v["k"] // v["block_k"])
        per_thread = v["block_n"] * v["k"] / (32 * v["num_warps"])
        out["counts"] = count_sass(sass_of(kernel.asm["cubin"]), trips, per_thread)
    return out


def _res_usage(cubin: bytes) -> dict:
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    if "REG" not in fields:
        raise RuntimeError(f"cuobjdump -res-usage printed no register count:\n{text}")
    return {"regs": int(fields["REG"]), "stack": int(fields.get("STACK", 0)),
            "local": int(fields.get("LOCAL", 0)), "shared": int(fields.get("SHARED", 0))}


def roofline_variants() -> list[dict]:
    """Softmax, one winner, fp32 at K = 4, 16, 256: every autotune config, for sm_80 and sm_90 (issue 26)."""
    from lightning_curate.kernels.kchoice_triton import GPU_CONFIGS, gpu_block_k

    return [{"kernel": "one", "mode": "softmax", "m": 1, "k": k, "dtype": "float32",
             "block_n": max(1, tile // gpu_block_k(k)), "block_k": gpu_block_k(k), "num_warps": warps, "arch": arch}
            for arch in ARCHS for k in ROOFLINE_BUDGET for tile, warps in GPU_CONFIGS]


def count_problems(result: dict) -> list[str]:
    """What keeps a roofline variant from being limited by memory: its counts against the budgets."""
    c, k = result["counts"], result["k"]
    out = []
    if c["per_element"] > ROOFLINE_BUDGET[k]:
        out.append(f"{c['per_element']:.1f} instructions per reward element > {ROOFLINE_BUDGET[k]}")
    if k % 4 == 0 and c["ldg128"] == 0:
        out.append("no 128-bit loads (LDG.E.128) although K % 4 == 0")
    if not 1.9 <= c["mufu_per_element"].get("LG2", 0.0) <= MAX_MUFU_PER_ELEMENT["LG2"]:
        out.append(f"MUFU.LG2 per element {c['mufu_per_element'].get('LG2', 0.0):.2f}, expected 2 "
                   f"(two hardware logs per Gumbel key) to {MAX_MUFU_PER_ELEMENT['LG2']}")
    if not 0.9 <= c["mufu_per_element"].get("EX2", 0.0) <= MAX_MUFU_PER_ELEMENT["EX2"]:
        out.append(f"MUFU.EX2 per element {c['mufu_per_element'].get('EX2', 0.0):.2f}, expected 1 "
                   f"(one exp2 per logsumexp term) to {MAX_MUFU_PER_ELEMENT['EX2']}")
    if c["bar_in_loop"]:
        out.append(f"{c['bar_in_loop']} barriers inside the loop")
    return out + problems(result)


def count_table(results: list[dict]) -> str:
    """The roofline variants' counts as a Markdown table."""
    rows = ["| variant | regs | spills (B) | instr./element | budget | LDG.E.128 | MUFU.LG2/el. | MUFU.EX2/el. "
            "| SHFL/el. | BAR in loop |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        c = r["counts"]
        mufu = c["mufu_per_element"]
        rows.append(f"| {r['name']} | {r['regs']} | {r['stack'] + r['local']} | {c['per_element']:.1f} | "
                    f"{ROOFLINE_BUDGET[r['k']]} | {c['ldg128']} | {mufu.get('LG2', 0):.2f} | "
                    f"{mufu.get('EX2', 0):.2f} | {c['shfl_per_element']:.2f} | {c['bar_in_loop']} |")
    return "\n".join(rows)


def write_record(path: str, name: str, command: str, figures: dict, device: str) -> None:
    """Write a dated JSON record (docs/experiments/records format: name, date, version, command, machine, figures).

    A stand-in for ``lightning_curate.experiments.records.write_record``, which the records will move to.
    """
    import datetime
    import importlib.metadata
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    version = importlib.metadata.version("lightning-curate")
    record = {"name": name, "date": datetime.date.today().isoformat(), "version": version,
              "command": command, "machine": {"platform": platform.platform(), "cpu": cpu,
                                              "cores": os.cpu_count() or 1, "torch": torch.__version__,
                                              "device": device},
              "figures": figures}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def counts_figures(results: list[dict]) -> dict:
    """The roofline variants' counts as a record's figures."""
    import triton

    rows = [{"variant": r["name"], "arch": f"sm_{r['arch']}", "K": r["k"], "block_n": r["block_n"],
             "block_k": r["block_k"], "num_warps": r["num_warps"], "registers": r["regs"],
             "spill_bytes": r["stack"] + r["local"], "instructions_per_element": round(r["counts"]["per_element"], 2),
             "budget": ROOFLINE_BUDGET[r["k"]], "ldg_e_128": r["counts"]["ldg128"],
             "mufu_lg2_per_element": round(r["counts"]["mufu_per_element"].get("LG2", 0.0), 3),
             "mufu_ex2_per_element": round(r["counts"]["mufu_per_element"].get("EX2", 0.0), 3),
             "shfl_per_element": round(r["counts"]["shfl_per_element"], 3),
             "barriers_in_loop": r["counts"]["bar_in_loop"],
             "within_budget": not count_problems(r)} for r in results]
    return {"triton": triton.__version__, "targets": [f"sm_{a}" for a in ARCHS],
            "kernel": "softmax, one winner, float32 rewards, contiguous rows", "variants": rows}


def problems(result: dict) -> list[str]:
    """What is wrong with a compiled variant: local-memory spills, too many registers."""
    out = []
    if result["stack"] or result["local"]:
        out.append(f"spills to local memory (stack {result['stack']} B, local {result['local']} B)")
    if result["regs"] > MAX_REGISTERS:
        out.append(f"{result['regs']} registers per thread > {MAX_REGISTERS}")
    return out


def compile_all(variants: list[dict], jobs: int = 1) -> list[dict]:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter replaces the kernels being compiled")
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(compile_variant, variants, chunksize=4))
    return [compile_variant(v) for v in variants]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    p.add_argument("--counts", action="store_true",
                   help="only the roofline variants (softmax, m = 1, K = 4/16/256): print their SASS counts")
    p.add_argument("--record", help="with --counts: also write them as a dated JSON record here "
                                    "(docs/experiments/records/kchoice_sass_counts.json)")
    args = p.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    reason = nvidia_tools_missing()
    if reason:
        print(f"cannot compile for NVIDIA GPUs: {reason}", file=sys.stderr)
        return 2
    if args.counts:
        results = compile_all(roofline_variants(), args.jobs)
        print(count_table(results))
        if args.record:
            write_record(args.record, "kchoice_sass_counts",
                         "python -m lightning_curate.kernels.kchoice_aot --counts --record " + args.record,
                         counts_figures(results), "none: AOT compile for sm_80 and sm_90 (no GPU)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 1 if any(count_problems(r) for r in results) else 0
    results = compile_all(default_variants(), args.jobs)
    bad = 0
    for r in results:
        issues = problems(r)
        bad += bool(issues)
        print(f"{r['name']:55s} regs {r['regs']:3d}  stack {r['stack']:3d} B  shared {r['shared']:5d} B"
              + (f"  FAIL: {'; '.join(issues)}" if issues else ""))
    print(f"{len(results)} variants, {bad} over budget (> {MAX_REGISTERS} registers or spills)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
