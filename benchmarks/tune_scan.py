"""Time the Triton selective scan over tile shapes (GPU), forward and backward separately.

Usage: python benchmarks/tune_scan.py [--L 2048] SHAPE ...
  SHAPE is STEPS,FWD_WARPS,BWD_WARPS: steps per thread (a chunk is 32x that, in both kernels) and
  warps (channels per program) of the forward and backward kernels.
Each shape compiles for ~20 s. Every shape's output and gradients are compared with mamba-ssm's
CUDA kernel when it is installed (relative error; both run bf16 inputs with fp32 arithmetic).
"""

import argparse

import torch

from ablate.ops.scan import triton as tscan
from benchmarks.bench import median_ms, scan_case

parser = argparse.ArgumentParser()
parser.add_argument("--L", type=int, default=2048)
parser.add_argument("--compile-only", action="store_true",
                    help="run each shape once (fills Triton's cache; start several in parallel, then time)")
DEFAULT = "{steps_per_thread},{fwd_warps},{bwd_warps}".format(**tscan.CONFIG)
parser.add_argument("shapes", nargs="*", default=[DEFAULT])
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
    steps, fwd_warps, bwd_warps = map(int, shape.split(","))
    tscan.CONFIG.update(steps_per_thread=steps, fwd_warps=fwd_warps, bwd_warps=bwd_warps)


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
