"""Mamba-2 SSD (scalar decay per head), pure torch, sequential over time in float32.

Layout follows mamba-ssm's chunk-scan: x: (B, T, H, P); dt: (B, T, H), already positive
(softplus(dt + bias) is the mixer's job); A: (H,) negative; B, C: (B, T, G, N) with H % G == 0;
D: (H,); initial_state / final state: (B, H, P, N).

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,    y_t = h_t C_t + D x_t
"""

from __future__ import annotations

import torch
from torch import Tensor


def expand_groups(M: Tensor, n_heads: int) -> Tensor:
    """(B, T, G, N) -> (B, T, H, N): head h reads group h // (H // G)."""
    return M.repeat_interleave(n_heads // M.shape[2], dim=2)


def ssd(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    acc = torch.promote_types(x.dtype, torch.float32)  # accumulate in at least fp32
    batch, T, H, P = x.shape
    Bh, Ch = expand_groups(B.to(acc), H), expand_groups(C.to(acc), H)
    dtf = dt.to(acc)
    decay = torch.exp(dtf * A.to(acc))  # (B, T, H)
    h = (
        initial_state.to(acc)
        if initial_state is not None
        else x.new_zeros(batch, H, P, Bh.shape[-1], dtype=acc)
    )
    ys = []
    for t in range(T):
        drive = (dtf[:, t, :, None] * x[:, t].to(acc)).unsqueeze(-1) * Bh[:, t, :, None, :]
        h = decay[:, t, :, None, None] * h + drive
        ys.append(torch.einsum("bhpn,bhn->bhp", h, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x.to(acc) * D.to(acc)[:, None]
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y
