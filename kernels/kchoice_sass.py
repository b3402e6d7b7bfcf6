"""Static instruction counts of a compiled kernel, read from its SASS (the wheel's ``cuobjdump -sass``).

Used by ``kchoice_aot`` and tests/ops/test_kchoice_compile.py to check, with no
GPU, that the K-choice kernel issues few enough instructions per reward element
to be limited by memory bandwidth (issue 26).

The dynamic count per thread is the straight-line code counted once plus each
loop's body (a backward branch and the code it jumps back over) times its
extra trips. It is an upper bound: code on untaken paths (the masked tail,
the invalid-row atomics) is counted as if it ran. Dividing by the reward
elements each thread reads gives instructions per element.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter

__all__ = ["count_sass", "parse_sass", "sass_of"]

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*|)0x([0-9a-f]+)")


def sass_of(cubin: bytes) -> str:
    """The SASS text of a cubin, from the triton wheel's ``cuobjdump``."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout


def parse_sass(text: str) -> list[tuple[int, str]]:
    """``(address, instruction)`` pairs, predicates kept, padding (``NOP``, the final self-branch) dropped."""
    out = []
    for addr_hex, ins in _LINE.findall(text):
        addr = int(addr_hex, 16)
        op = ins.split()[1] if ins.startswith("@") else ins.split()[0]
        if op == "NOP":
            continue
        m = _BRANCH.search(ins)
        if op == "BRA" and m and int(m.group(1), 16) == addr:
            continue  # the trap loop after EXIT
        out.append((addr, ins))
    return out


def _opcode(ins: str) -> str:
    return ins.split()[1] if ins.startswith("@") else ins.split()[0]


def count_sass(text: str, trips: int, elements_per_thread: float) -> dict:
    """Counts for a kernel whose loops (if any) each run ``trips`` times per thread.

    Returns ``instructions`` (dynamic, per thread), ``per_element``, ``loops``,
    ``loop_body``, ``ldg128`` / ``ldg`` (static global loads, 128-bit and all),
    ``mufu_per_element`` by function (``LG2``, ``EX2``, ...), ``bar_in_loop``,
    ``shfl_per_element``.
    """
    instrs = parse_sass(text)
    weight = {addr: 1 for addr, _ in instrs}
    loops = []
    for addr, ins in instrs:
        m = _BRANCH.search(ins)
        if _opcode(ins) == "BRA" and m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    for lo, hi in loops:
        for a in weight:
            if lo <= a <= hi:
                weight[a] *= trips
    ops: Counter = Counter()
    mufu: Counter = Counter()
    bar_in_loop = 0
    for addr, ins in instrs:
        op = _opcode(ins)
        ops[op.split(".")[0]] += weight[addr]
        if op.startswith("MUFU"):
            mufu[op.split(".")[1]] += weight[addr]
        if op.startswith("BAR") and weight[addr] > 1:
            bar_in_loop += 1
    total = sum(weight.values())
    return {
        "instructions": total,
        "per_element": total / elements_per_thread,
        "loops": len(loops),
        "loop_body": sum(1 for a in weight if any(lo <= a <= hi for lo, hi in loops)),
        "ldg128": sum(1 for _, ins in instrs if _opcode(ins).startswith("LDG.E.128")),
        "ldg": sum(1 for _, ins in instrs if _opcode(ins).startswith("LDG")),
        "mufu_per_element": {k: v / elements_per_thread for k, v in sorted(mufu.items())},
        "bar_in_loop": bar_in_loop,
        "shfl_per_element": ops["SHFL"] / elements_per_thread,
    }
