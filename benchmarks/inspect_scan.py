"""Compile the Triton scan kernels for sm_90 without a GPU and count their instructions.

Usage: python benchmarks/inspect_scan.py fwd|bwd STEPS_PER_THREAD WARPS
Prints registers/stack from cuobjdump and the most frequent SASS instructions per source line of
ablate/ops/scan/triton.py (the numbers behind benchmarks/NOTES.md). Needs triton installed; uses
the ptxas, cuobjdump and nvdisasm that ship with it.
"""

import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from ablate.ops.scan import triton as tscan

FP32_ARGS = {"A_ptr", "D_ptr", "bias_ptr", "h0_ptr", "hT_ptr", "ckpt_ptr", "dhT_ptr", "dA_part_ptr", "dB_ptr",
             "dC_ptr", "dD_part_ptr", "dh0_ptr"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_for_hopper(kernel, steps: int, warps: int):
    consts = {"N": 16, "S": steps, "LOG_S": steps.bit_length() - 1, "W": warps, "SOFTPLUS": True}
    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ("T", "D", "n_chunks", "n_ckpts"):
            sig[name] = "i32"
        else:
            sig[name] = "*fp32" if name in FP32_ARGS else "*bf16"
    # what the JIT sees at the benchmark shape: aligned pointers, T and D divisible by 16
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(kernel.arg_names) if sig[n] != "constexpr"}
    src = GluonASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def main() -> None:
    which, steps, warps = sys.argv[1], *map(int, sys.argv[2:4])
    kernel = {"fwd": tscan._fwd_kernel, "bwd": tscan._bwd_kernel}[which]
    compiled = compile_for_hopper(kernel, steps, warps)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    usage = subprocess.run([BIN / "cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
    print(usage.strip().splitlines()[-1].strip())
    sass = subprocess.run([BIN / "nvdisasm", "-c", "-g", f.name], capture_output=True, text=True).stdout
    line, counts = None, collections.Counter()
    for text in sass.splitlines():
        marker = re.search(r'scan/triton.py", line (\d+)', text)
        if marker:
            line = int(marker.group(1))
        op = re.match(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]+)", text)
        if op:
            counts[(line, op.group(1))] += 1
    totals = collections.Counter()
    for (_, op), n in counts.items():
        totals[op] += n
    print("instructions:", ", ".join(f"{op} {n}" for op, n in totals.most_common(12)))
    print("by source line of ablate/ops/scan/triton.py:")
    for (src_line, op), n in counts.most_common(15):
        print(f"  line {src_line}: {op} {n}")


if __name__ == "__main__":
    main()
