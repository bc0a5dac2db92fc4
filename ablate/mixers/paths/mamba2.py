"""The Mamba-2 (SSD) path: scalar decay per head, multi-head x with head dim P, grouped B/C.

``Mamba2SSM`` takes its projected slice z | xBC | dt (B, T, 2*d_inner + 2*G*N + H) and returns
(B, T, d_inner):

    xBC = SiLU(causal depthwise conv(xBC));  x, B, C = split(xBC)
    dt  = softplus(dt + dt_bias);  A = -exp(A_log) (one scalar per head)
    y   = ssd(x, dt, A, B, C, D)
    out = RMSNorm(y * SiLU(z))          (Mamba-2's gated norm)

Init follows Mamba-2: A uniform in [1, 16], D = 1, dt bias as in Mamba-1.
The forward skeleton is ``SSMPath``'s; the standalone mixer is ``mixers/mamba2.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import Mamba2Config
from ablate.layers import RMSNorm, no_reinit, no_weight_decay
from ablate.mixers.base import Context
from ablate.mixers.paths.ssm import SSMPath, cached_conv, inverse_softplus_dt
from ablate.ops import gated_norm as norm_ops
from ablate.ops import ssd as ssd_ops
from ablate.ops.backends import Backends
from ablate.ops.ssd.reference import expand_groups


class Mamba2SSM(SSMPath):
    def __init__(self, d_inner: int, cfg: Mamba2Config, norm_eps: float, backends: Backends):
        super().__init__()
        if d_inner % cfg.head_dim:
            raise ValueError(f"d_inner={d_inner} is not a multiple of mamba2.head_dim={cfg.head_dim}")
        self.cfg, self.d_inner = cfg, d_inner
        self.n_heads = self.map_units = d_inner // cfg.head_dim
        if self.n_heads % cfg.n_groups:
            raise ValueError(f"{self.n_heads} SSM heads are not a multiple of n_groups={cfg.n_groups}")
        self.bc_dim = cfg.n_groups * cfg.d_state
        self.conv_dim = self.conv_channels = d_inner + 2 * self.bc_dim
        self.in_dim = d_inner + self.conv_dim + self.n_heads  # z | xBC | dt
        self.impl, self.prefill_impl = backends.ssd, backends.ssd_prefill
        self.conv_impl = backends.conv1d
        self.step_impl = backends.step
        self.norm_impl = backends.gated_norm
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim)
        self.dt_bias = no_weight_decay(no_reinit(nn.Parameter(torch.empty(self.n_heads))))
        self.A_log = no_weight_decay(no_reinit(nn.Parameter(torch.empty(self.n_heads))))
        self.D = no_weight_decay(no_reinit(nn.Parameter(torch.empty(self.n_heads))))
        self.norm = RMSNorm(d_inner, norm_eps)  # its weight and eps; applied with the gate by ops.gated_norm
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
            self.D.fill_(1.0)
            self.dt_bias.copy_(inverse_softplus_dt(self.n_heads, self.cfg.dt_min, self.cfg.dt_max))

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    def prepare(self, u: Tensor, ctx: Context):
        """-> x (B, T, H, P), z (B, T, d_inner), dt (B, T, H) positive, B, C (B, T, G, N)."""
        z, xBC, dt = u.split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC = cached_conv(xBC.transpose(1, 2), self.conv, ctx.cache, self.conv_impl, self.step_impl)
        x, B, C = xBC.transpose(1, 2).split([self.d_inner, self.bc_dim, self.bc_dim], dim=-1)
        G, N = self.cfg.n_groups, self.cfg.d_state
        x = x.unflatten(-1, (self.n_heads, self.cfg.head_dim))
        dt = F.softplus(dt.float() + self.dt_bias.float())
        return x, z, dt, B.unflatten(-1, (G, N)), C.unflatten(-1, (G, N))

    def implicit_map(self, dt: Tensor, B: Tensor, C: Tensor, units: slice = slice(None)) -> Tensor:
        """alpha[b, h, i, j] = (C_i . B_j) exp(sum_{k=j+1..i} A dt_k) dt_j for the heads h in
        ``units``: (B, H, T, T)."""
        heads = torch.arange(self.n_heads, device=dt.device)[units]
        dt = dt[..., heads].float()  # (B, T, h)
        S = torch.cumsum(dt * self.A[heads], dim=1)
        T = dt.shape[1]
        above = torch.ones(T, T, dtype=torch.bool, device=dt.device).triu(1)
        group = heads // (self.n_heads // self.cfg.n_groups)  # the B/C group each head reads
        scores = torch.einsum("bihn,bjhn->bhij", C.float()[:, :, group], B.float()[:, :, group])
        exponent = (S.unsqueeze(2) - S.unsqueeze(1)).permute(0, 3, 1, 2).masked_fill(above, -torch.inf)
        return scores * torch.exp(exponent) * dt.transpose(1, 2).unsqueeze(-2)

    def run_sequence(self, x, z, dt, B, C, initial_state, with_state):
        # a forward-only kernel where nothing here will be differentiated (prefill, evaluation)
        grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                               for t in (x, dt, B, C, self.A_log, self.D, initial_state))
        y = ssd_ops.ssd(x, dt, self.A, B, C, self.D, initial_state=initial_state,
                        return_final_state=with_state, impl=self.impl if grad else self.prefill_impl)
        y, state = y if with_state else (y, None)
        return self.gated_norm(y.flatten(2), z), state

    def step(self, state, u, ctx):
        x, z, dt, B, C = self.prepare(u, ctx)
        y = ssd_ops.ssd_state_update(state, x[:, 0], dt[:, 0], self.A, B[:, 0], C[:, 0], self.D,
                                     impl=self.step_impl)[:, None]
        return self.gated_norm(y.flatten(2), z)

    def gated_norm(self, y: Tensor, z: Tensor) -> Tensor:
        return norm_ops.gated_rms_norm(y, z, self.norm.weight, self.norm.eps, impl=self.norm_impl)


def dense_implicit_map(ssm: Mamba2SSM, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """The reference for ``Mamba2SSM.implicit_map``: every head at once, straight from the formula."""
    S = torch.cumsum(dt * ssm.A, dim=1)  # (B, T, H)
    T = dt.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=dt.device).tril()
    seg = (S.unsqueeze(2) - S.unsqueeze(1)).masked_fill(~causal[..., None], -torch.inf)
    Bh, Ch = expand_groups(B.float(), ssm.n_heads), expand_groups(C.float(), ssm.n_heads)
    scores = torch.einsum("bihn,bjhn->bijh", Ch, Bh) * torch.exp(seg) * dt.unsqueeze(1)
    return scores.permute(0, 3, 1, 2)
