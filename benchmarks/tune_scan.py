"""Time the Triton selective scan over tile shapes (GPU).

Usage: python benchmarks/tune_scan.py [BLOCK_D,CHUNK,WARPS,BWD_BLOCK_D,BWD_WARPS ...]
(each shape compiles for ~20 s)
"""

import sys

import torch

from ablate.bench import fwd_bwd, median_ms, scan_case
from ablate.ops.scan import triton as tscan

x = scan_case(8, 1536, 2048, 16)


def call():
    return tscan.selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)


rows = []
shapes = [tuple(map(int, a.split(","))) for a in sys.argv[1:]] or [(16, 128, 4, 8, 8)]
for bd, ch, wf, bbd, wb in shapes:
    tscan.CONFIG.update(BLOCK_D=bd, CHUNK=ch, fwd_warps=wf, bwd_BLOCK_D=bbd, bwd_warps=wb)
    try:
        f = median_ms(call, 5, 20)
        fb = median_ms(fwd_bwd(call, list(x.values())), 5, 20)
    except Exception as err:  # out of registers / shared memory for this shape
        print(bd, ch, wf, bbd, wb, "failed", type(err).__name__)
        continue
    rows.append((fb, f, bd, ch, wf, bbd, wb))
    print(f"fwd BLOCK_D={bd} CHUNK={ch} warps={wf} | bwd BLOCK_D={bbd} warps={wb}: "
          f"fwd {f:.3f} ms, fwd+bwd {fb:.3f} ms", flush=True)
rows.sort()
print("best:", rows[:5])
torch.cuda.synchronize()
