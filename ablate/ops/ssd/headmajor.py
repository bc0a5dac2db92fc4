"""Mamba-2 SSD in pure torch for the CPU: the chunked form of ``chunked.py`` laid out head-major.

``chunked.py`` keeps heads innermost, (batch, chunk, l, s, head): with a handful of heads every
elementwise op over the (l, s) scores then runs 4-wide and every einsum permutes its operands
into a copy, which on the CPU costs more than the matrix products. Here the scores are
(batch, chunk, group, head, l, s), steps innermost, and each product is a batched matmul over
(l, n) or (l, p); C_l . B_s is computed once per B/C group and broadcast over the group's heads
(no ``expand_groups`` copy). Chunks are min(chunk, T) steps, so a short sequence is not padded.
Same contract and math as ``chunked.ssd``; tested against ``reference.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
    G, N = B.shape[2], B.shape[3]
    hg = H // G  # heads per B/C group
    L = max(1, min(chunk, T))
    pad = (-T) % L
    nc = (T + pad) // L
    # Padding steps have dt = 0: decay 1 and no input, so the final state is unchanged.
    xs = F.pad(x.to(acc), (0, 0, 0, 0, 0, pad)).view(batch, nc, L, G, hg, P).permute(0, 1, 3, 4, 2, 5)
    dts = F.pad(dt.to(acc), (0, 0, 0, pad)).view(batch, nc, L, G, hg).permute(0, 1, 3, 4, 2)  # (b, c, g, j, l)
    Bs, Cs = (F.pad(t.to(acc), (0, 0, 0, 0, 0, pad)).view(batch, nc, L, G, N).permute(0, 1, 3, 2, 4).unsqueeze(3)
              for t in (B, C))  # (b, c, g, 1, l, n)
    cum = torch.cumsum(dts * A.to(acc).view(G, hg, 1), dim=-1)  # (b, c, g, j, l), non-increasing in l
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    decay = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).masked_fill(~causal, float("-inf")).exp()  # (.., l, s)
    scores = (Cs @ Bs.transpose(-1, -2)) * decay * dts.unsqueeze(-2)
    y = scores @ xs  # (b, c, g, j, l, p)
    # State each chunk adds, as seen from its last step: (b, c, g, j, p, n)
    to_end = torch.exp(cum[..., -1:] - cum) * dts
    chunk_states = (xs * to_end.unsqueeze(-1)).transpose(-1, -2) @ Bs
    h = (
        initial_state.to(acc).view(batch, G, hg, P, N)
        if initial_state is not None
        else x.new_zeros(batch, G, hg, P, N, dtype=acc)
    )
    if initial_state is not None or nc > 1:
        carried = []
        for c in range(nc):
            carried.append(h)
            h = torch.exp(cum[:, c, ..., -1])[..., None, None] * h + chunk_states[:, c]
        carried = torch.stack(carried, dim=1)  # (b, c, g, j, p, n): state entering each chunk
        y = y + (Cs @ carried.transpose(-1, -2)) * torch.exp(cum).unsqueeze(-1)
    else:
        h = torch.exp(cum[:, 0, ..., -1])[..., None, None] * h + chunk_states[:, 0]
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(batch, nc * L, H, P)[:, :T]
    if D is not None:
        y = y + x.to(acc) * D.to(acc)[:, None]
    y = y.to(x.dtype)
    h = h.reshape(batch, H, P, N)
    return (y, h) if return_final_state else y
