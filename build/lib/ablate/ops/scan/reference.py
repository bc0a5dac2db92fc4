"""Mamba-1 selective scan, pure torch, sequential over time in float32 (the ground truth).

Layout follows mamba-ssm so fast kernels are drop-in:
u, delta, z: (B, D, T); A: (D, N); B, C: (B, N, T); D: (D,); delta_bias: (D,);
initial_state / final state: (B, D, N).

    dt_t  = softplus(delta_t + delta_bias)            (if delta_softplus)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t
    y_t   = C_t . h_t + D * u_t
    out_t = y_t * silu(z_t)                          (if z is given)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def discretize(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    acc = torch.promote_types(delta.dtype, torch.float32)
    dt = delta.to(acc)
    if delta_bias is not None:
        dt = dt + delta_bias.to(acc)[None, :, None]
    return F.softplus(dt) if delta_softplus else dt


def finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """Add the D skip and apply the SiLU(z) gate; shared by every scan implementation."""
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: Tensor | None = None,
    return_final_state: bool = False,
):
    acc = torch.promote_types(u.dtype, torch.float32)  # accumulate in at least fp32
    dt = discretize(delta, delta_bias, delta_softplus)  # (B, D, T)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(acc)[None, :, None, :])  # (B, D, T, N)
    drive = (dt * u.to(acc)).unsqueeze(-1) * B.to(acc).transpose(1, 2).unsqueeze(1)  # (B, D, T, N)
    Cf = C.to(acc)
    h = (
        initial_state.to(acc)
        if initial_state is not None
        else u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=acc)
    )
    ys = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, :, t]))
    y = finish(torch.stack(ys, dim=-1), u, D, z).to(u.dtype)
    return (y, h) if return_final_state else y
