"""Time the Triton selective scan over tile shapes (GPU). Usage: python benchmarks/tune_scan.py"""

import itertools

import torch

from ablate.bench import fwd_bwd, median_ms, scan_case
from ablate.ops.scan import triton as tscan

x = scan_case(8, 1536, 2048, 16)


def call():
    return tscan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)


rows = []
for bd, ch, w in itertools.product((4, 16, 32), (16, 32, 64), (2, 4, 8)):
    wf = wb = w
    if bd * ch * 16 > 16384:
        continue
    tscan.CONFIG.update(BLOCK_D=bd, CHUNK=ch, fwd_warps=wf, bwd_warps=wb)
    try:
        f = median_ms(call, 5, 20)
        fb = median_ms(fwd_bwd(call, list(x.values())), 5, 20)
    except Exception as err:  # out of registers / shared memory for this shape
        print(bd, ch, wf, wb, "failed", type(err).__name__)
        continue
    rows.append((fb, f, bd, ch, wf, wb))
    print(f"BLOCK_D={bd:3d} CHUNK={ch:3d} warps fwd={wf} bwd={wb}: fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms", flush=True)
rows.sort()
print("best:", rows[:5])
torch.cuda.synchronize()
