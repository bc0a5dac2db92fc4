"""Mamba-2 SSD in pure torch, chunked so that almost all work is batched matrix products.

The sequence is cut into chunks of L steps. Within a chunk the SSM is a masked "attention"
(C_t . B_s) * exp(cumA_t - cumA_s) * dt_s; across chunks only a (H, P, N) state is carried.
Written for the matrix units (it is the formulation the SSD paper derives); it is also the
fast CPU path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ablate.ops.ssd.reference import expand_groups


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
    chunk: int = 64,
):
    acc = torch.promote_types(x.dtype, torch.float32)  # accumulate in at least fp32
    batch, T, H, P = x.shape
    N = B.shape[-1]
    pad = (-T) % chunk
    # Padding steps have dt = 0: decay 1 and no input, so the final state is unchanged.
    xs, dts = F.pad(x.to(acc), (0, 0, 0, 0, 0, pad)), F.pad(dt.to(acc), (0, 0, 0, pad))
    Bs = F.pad(expand_groups(B.to(acc), H), (0, 0, 0, 0, 0, pad))
    Cs = F.pad(expand_groups(C.to(acc), H), (0, 0, 0, 0, 0, pad))
    nc = (T + pad) // chunk
    # (batch, chunk index, step in chunk, ...)
    xs, Bs, Cs = (t.reshape(batch, nc, chunk, H, -1) for t in (xs, Bs, Cs))
    dts = dts.reshape(batch, nc, chunk, H)
    cum = torch.cumsum(dts * A.to(acc), dim=2)  # (b, c, l, h), non-increasing in l
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    seg = (cum.unsqueeze(3) - cum.unsqueeze(2)).masked_fill(~causal[:, :, None], float("-inf"))
    scores = torch.einsum("bclhn,bcshn->bclsh", Cs, Bs) * torch.exp(seg) * dts.unsqueeze(2)
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xs)
    # State each chunk adds, as seen from its last step.
    to_end = torch.exp(cum[:, :, -1:] - cum) * dts  # (b, c, l, h)
    chunk_states = torch.einsum("bclh,bclhp,bclhn->bchpn", to_end, xs, Bs)
    h = (
        initial_state.to(acc)
        if initial_state is not None
        else x.new_zeros(batch, H, P, N, dtype=acc)
    )
    carried = []
    for c in range(nc):
        carried.append(h)
        h = torch.exp(cum[:, c, -1])[..., None, None] * h + chunk_states[:, c]
    carried = torch.stack(carried, dim=1)  # (b, c, h, p, n): state entering each chunk
    y = y + torch.einsum("bclhn,bchpn,bclh->bclhp", Cs, carried, torch.exp(cum))
    y = y.reshape(batch, nc * chunk, H, P)[:, :T]
    if D is not None:
        y = y + x.to(acc) * D.to(acc)[:, None]
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y
