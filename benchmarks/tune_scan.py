"""Time the Triton selective scan over tile shapes (GPU), forward and backward separately.

Usage: python benchmarks/tune_scan.py [--L 2048] SHAPE ...
  SHAPE is BLOCK_D,CHUNK,WARPS,gS,BWD_WARPS for the Gluon backward (S steps per thread), or
  BLOCK_D,CHUNK,WARPS,BWD_BLOCK_D,BWD_CHUNK,BWD_WARPS for the plain Triton one (BWD_CHUNK a multiple
  of CHUNK).
Each shape compiles for ~20 s. Every shape's output and gradients are compared with mamba-ssm's
CUDA kernel when it is installed (relative error; both run bf16 inputs with fp32 arithmetic).
"""

import argparse

import torch

from ablate.bench import median_ms, scan_case
from ablate.ops.scan import triton as tscan

parser = argparse.ArgumentParser()
parser.add_argument("--L", type=int, default=2048)
parser.add_argument("--compile-only", action="store_true",
                    help="run each shape once (fills Triton's cache; start several in parallel, then time)")
parser.add_argument("shapes", nargs="*", default=["{BLOCK_D},{CHUNK},{fwd_warps},g{bwd_steps_per_thread},{bwd_warps}"
                                                   .format(**tscan.CONFIG)])
args = parser.parse_intermixed_args()

x = scan_case(8, 1536, args.L, 16)
leaves = list(x.values())
grad = torch.randn_like(x["u"])


def timed(fn):
    """(forward ms, backward ms, output, gradients) of fn over the scan inputs."""
    out = fn()
    grads = torch.autograd.grad(out, leaves, grad, retain_graph=True)
    fwd = median_ms(fn, 5, 20)
    bwd = median_ms(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True), 5, 20)
    return fwd, bwd, out, grads


def use_shape(shape: str) -> None:
    fields = shape.split(",")
    bd, ch, wf = map(int, fields[:3])
    tscan.CONFIG.update(BLOCK_D=bd, CHUNK=ch, fwd_warps=wf, bwd_warps=int(fields[-1]))
    if fields[3].startswith("g"):
        tscan.CONFIG.update(bwd="gluon", bwd_steps_per_thread=int(fields[3][1:]))
    else:
        tscan.CONFIG.update(bwd="triton", bwd_BLOCK_D=int(fields[3]), bwd_CHUNK=int(fields[4]))


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


if args.compile_only:
    for shape in args.shapes:
        use_shape(shape)
        try:
            torch.autograd.grad(tscan.selective_scan(*leaves, True), leaves, grad)
        except Exception as err:
            print(shape, "failed to compile", type(err).__name__, str(err)[:200])
    torch.cuda.synchronize()
    raise SystemExit

ref = None
try:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    f, b, out, grads = timed(lambda: selective_scan_fn(*leaves, True))
    ref = (out, grads)
    print(f"mamba-ssm: fwd {f:.3f} ms, bwd {b:.3f} ms, fwd+bwd {f + b:.3f} ms", flush=True)
except ImportError:
    print("mamba-ssm not installed: no reference timing or check")

rows = []
for shape in args.shapes:
    use_shape(shape)
    try:
        f, b, out, grads = timed(lambda: tscan.selective_scan(*leaves, True))
    except Exception as err:  # out of registers / shared memory for this shape
        print(shape, "failed", type(err).__name__, str(err)[:200], flush=True)
        continue
    err = ""
    if ref is not None:
        worst = max([rel(out, ref[0])] + [rel(g, r) for g, r in zip(grads, ref[1], strict=True)])
        err = f", worst rel. diff to mamba-ssm {worst:.1e}"
    rows.append((f + b, f, b, shape))
    print(f"{shape}: fwd {f:.3f} ms, bwd {b:.3f} ms, fwd+bwd {f + b:.3f} ms{err}", flush=True)
rows.sort()
print("best:", rows[:5])
