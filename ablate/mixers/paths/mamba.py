"""The Mamba-1 selective SSM path as Hymba uses it.

``MambaSSM`` is the SSM path shared with the parallel hybrid head: it takes the projected x|z
slice (B, T, 2 * d_inner) and returns SiLU(z)-gated output (B, T, d_inner):

    x  = SiLU(causal depthwise conv(x))
    dt, B, C = split(x_proj(x)); optional RMSNorm on each (Hymba: mamba_inner_layernorms)
    dt = dt_proj.weight @ dt  (the bias enters the scan as delta_bias; softplus inside)
    y  = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)     (Mamba-1, A real per channel/state)

Init follows Mamba-1: A = S4D-real (A_log = log(1..N)), D = 1, dt bias = softplus^-1 of a
log-uniform dt in [dt_min, dt_max], dt_proj weight uniform(+-dt_rank^-0.5).
The forward skeleton (stepping, state in the cache, maps) is ``SSMPath``'s; the standalone mixer
is ``mixers/mamba.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import MambaConfig
from ablate.layers import RMSNorm, no_reinit, no_weight_decay
from ablate.mixers.base import Context
from ablate.mixers.paths.ssm import SSMPath, cached_conv, inverse_softplus_dt
from ablate.ops import scan as scan_ops
from ablate.ops.backends import Backends


class MambaSSM(SSMPath):
    def __init__(self, d_model: int, d_inner: int, cfg: MambaConfig, norm_eps: float,
                 backends: Backends):
        super().__init__()
        self.cfg, self.d_inner, self.conv_channels, self.map_units = cfg, d_inner, d_inner, d_inner
        self.dt_rank = math.ceil(d_model / 16) if cfg.dt_rank == "auto" else cfg.dt_rank
        self.in_dim = 2 * d_inner  # x | z
        self.impl = backends.scan
        self.conv_impl = backends.conv1d
        self.step_impl = backends.step
        self.conv = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * cfg.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
        no_reinit(self.dt_proj.weight)
        no_weight_decay(no_reinit(self.dt_proj.bias))
        self.A_log = no_weight_decay(no_reinit(nn.Parameter(torch.empty(d_inner, cfg.d_state))))
        self.D = no_weight_decay(no_reinit(nn.Parameter(torch.empty(d_inner))))
        if cfg.inner_norms:
            self.dt_norm = RMSNorm(self.dt_rank, norm_eps)
            self.B_norm = RMSNorm(cfg.d_state, norm_eps)
            self.C_norm = RMSNorm(cfg.d_state, norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            n = self.cfg.d_state
            self.A_log.copy_(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
            self.D.fill_(1.0)
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, self.cfg.dt_min, self.cfg.dt_max))

    def project(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, 2*d_inner) -> x (B, D, T) after the conv, z (B, D, T), x_proj's dt|B|C (B, T, R + 2N)."""
        # split token-major, then transpose each: the split's backward then joins dense rows
        # (splitting the transposed tensor made its gradient a transposed copy for in_proj)
        x, z = (t.transpose(1, 2) for t in u.split(self.d_inner, dim=-1))
        x = cached_conv(x, self.conv, ctx.cache, self.conv_impl, self.step_impl)
        return x, z, self.x_proj(x.transpose(1, 2))

    def prepare(self, u: Tensor, ctx: Context):
        """(B, T, 2*d_inner) -> x (B, D, T) after conv, z (B, D, T), dt (B, D, T), B, C (B, N, T)."""
        x, z, dbc = self.project(u, ctx)
        dt, B, C = dbc.split([self.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        if self.cfg.inner_norms:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt = F.linear(dt, self.dt_proj.weight)  # bias is applied inside the scan
        return x, z, dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    def step(self, state: Tensor, u: Tensor, ctx: Context) -> Tensor:
        """One token from x_proj's raw output: the inner norms and dt_proj go into the state update
        (one kernel on CUDA instead of three norms, a GEMV, -exp(A_log) and the update)."""
        x, z, dbc = self.project(u, ctx)
        norms = (self.dt_norm.weight, self.B_norm.weight, self.C_norm.weight) if self.cfg.inner_norms else None
        eps = self.dt_norm.eps if self.cfg.inner_norms else 0.0
        y = scan_ops.selective_step(state, x[..., 0], z[..., 0], dbc[:, 0], self.A_log, self.D, self.dt_proj.weight,
                                    self.dt_proj.bias, norms, eps, impl=self.step_impl)
        return y[:, None]

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    def implicit_map(self, dt: Tensor, B: Tensor, C: Tensor, units: slice = slice(None), block: int = 64) -> Tensor:
        """alpha[b, d, i, j] = sum_n C_i (prod_{k=j+1..i} exp(A dt_k)) B_j dt_j for the channels d in
        ``units``: (B, D, T, T), ``dense_implicit_map`` computed by row blocks. Keys before a block
        go through one matmul over the states, the decay split at the block's start
        (exp(S_i - S_j) = exp(S_i - S_r) exp(S_r - S_j), both factors <= 1, so nothing overflows);
        the block's own causal triangle is computed directly."""
        dt = F.softplus(dt[:, units].float() + self.dt_proj.bias[units].float()[None, :, None])  # (B, D, T)
        S = torch.cumsum(dt.unsqueeze(-1) * self.A[units][None, :, None, :], dim=2)  # (B, D, T, N)
        queries = C.transpose(1, 2).float().unsqueeze(1)  # (B, 1, T, N)
        keys = B.transpose(1, 2).float().unsqueeze(1) * dt.unsqueeze(-1)  # (B, D, T, N): B_j dt_j
        T = dt.shape[-1]
        alpha = dt.new_zeros(*dt.shape, T)
        for r0 in range(0, T, block):
            r1 = min(r0 + block, T)
            if r0:
                ref = S[:, :, r0 - 1 : r0]  # the decay up to the last key before the block
                rows = queries[:, :, r0:r1] * torch.exp(S[:, :, r0:r1] - ref)
                cols = keys[:, :, :r0] * torch.exp(ref - S[:, :, :r0])
                alpha[:, :, r0:r1, :r0] = rows @ cols.transpose(-1, -2)
            local = S[:, :, r0:r1]
            above = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=dt.device).triu(1)
            decay = torch.exp((local.unsqueeze(3) - local.unsqueeze(2)).masked_fill(above[..., None], -torch.inf))
            alpha[:, :, r0:r1, r0:r1] = torch.einsum("bqin,bdijn,bdjn->bdij", queries[:, :, r0:r1], decay,
                                                     keys[:, :, r0:r1])
        return alpha

    def run_sequence(self, x, z, dt, B, C, initial_state, with_state):
        y = scan_ops.selective_scan(x, dt, self.A, B, C, self.D, z, self.dt_proj.bias, True,
                                    initial_state=initial_state, return_final_state=with_state, impl=self.impl)
        y, state = y if with_state else (y, None)
        return y.transpose(1, 2), state


def dense_implicit_map(ssm: MambaSSM, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The reference for ``MambaSSM.implicit_map``: every channel and state at once (a
    (B, D, T, T, N) intermediate, so small T only), straight from the formula."""
    dt = F.softplus(dt.float() + ssm.dt_proj.bias.float()[None, :, None])  # (B, D, T)
    S = torch.cumsum(dt.unsqueeze(-1) * ssm.A[None, :, None, :], dim=2)  # (B, D, T, N)
    T = dt.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=dt.device).tril()
    decay = torch.exp((S.unsqueeze(3) - S.unsqueeze(2)).masked_fill(~causal[..., None], -torch.inf))
    return torch.einsum("bni,bdijn,bnj,bdj->bdij", C.float(), decay, B.float(), dt)
