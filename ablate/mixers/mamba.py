"""Mamba-1 selective SSM as Hymba uses it.

``MambaSSM`` is the SSM path shared with the parallel hybrid head: it takes the projected x|z
slice (B, T, 2 * d_inner) and returns SiLU(z)-gated output (B, T, d_inner):

    x  = SiLU(causal depthwise conv(x))
    dt, B, C = split(x_proj(x)); optional RMSNorm on each (Hymba: mamba_inner_layernorms)
    dt = dt_proj.weight @ dt  (the bias enters the scan as delta_bias; softplus inside)
    y  = selective_scan(x, dt, A = -exp(A_log), B, C, D, z)     (Mamba-1, A real per channel/state)

Init follows Mamba-1: A = S4D-real (A_log = log(1..N)), D = 1, dt bias = softplus^-1 of a
log-uniform dt in [dt_min, dt_max], dt_proj weight uniform(+-dt_rank^-0.5).
``Mamba`` is the standalone mixer: in_proj -> MambaSSM -> out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ablate.config import MambaConfig, ModelConfig
from ablate.layers import RMSNorm, no_reinit, no_weight_decay
from ablate.mixers.base import Context, Mixer, MixerOutput
from ablate.ops import scan as scan_ops
from ablate.ops.backends import Backends
from ablate.ops.conv1d import causal_conv1d, conv_step
from ablate.plan import LayerSpec
from ablate.registry import MIXERS, register


def stepping(cache, T: int) -> bool:
    """Decoding a single token with states already in the cache (the single-step update path)."""
    return cache is not None and cache.ssm is not None and T == 1


def cached_conv(x: Tensor, conv: nn.Conv1d, cache, impl: str) -> Tensor:
    """Causal depthwise conv + SiLU over x (B, C, T). With a cache it continues from the cache's
    conv state and updates it (in place for a single decoding step)."""
    w = conv.weight.squeeze(1)
    if cache is None:
        return causal_conv1d(x, w, conv.bias, impl=impl)
    if stepping(cache, x.shape[-1]):
        return conv_step(cache.conv, x[..., 0], w, conv.bias)[..., None]
    y, state = causal_conv1d(x, w, conv.bias, initial_state=cache.conv, return_final_state=True, impl=impl)
    cache.store("conv", state)
    return y


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float) -> Tensor:
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class MambaSSM(nn.Module):
    def __init__(self, d_model: int, d_inner: int, cfg: MambaConfig, norm_eps: float,
                 backends: Backends):
        super().__init__()
        self.cfg, self.d_inner = cfg, d_inner
        self.dt_rank = math.ceil(d_model / 16) if cfg.dt_rank == "auto" else cfg.dt_rank
        self.in_dim = 2 * d_inner  # x | z
        self.impl = backends.scan
        self.conv_impl = backends.conv1d
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

    def prepare(self, u: Tensor, ctx: Context):
        """(B, T, 2*d_inner) -> x (B, D, T) after conv, z (B, D, T), dt (B, D, T), B, C (B, N, T)."""
        x, z = u.transpose(1, 2).split(self.d_inner, dim=1)
        x = cached_conv(x, self.conv, ctx.cache, self.conv_impl)
        dt, B, C = self.x_proj(x.transpose(1, 2)).split(
            [self.dt_rank, self.cfg.d_state, self.cfg.d_state], dim=-1)
        if self.cfg.inner_norms:
            dt, B, C = self.dt_norm(dt), self.B_norm(B), self.C_norm(C)
        dt = F.linear(dt, self.dt_proj.weight)  # bias is applied inside the scan
        return x, z, dt.transpose(1, 2), B.transpose(1, 2), C.transpose(1, 2)

    @property
    def A(self) -> Tensor:
        return -torch.exp(self.A_log.float())

    def implicit_map(self, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        """alpha[b, d, i, j] = sum_n C_i (prod_{k=j+1..i} exp(A dt_k)) B_j dt_j, (B, D, T, T)."""
        dt = F.softplus(dt.float() + self.dt_proj.bias.float()[None, :, None])  # (B, D, T)
        S = torch.cumsum(dt.unsqueeze(-1) * self.A[None, :, None, :], dim=2)  # (B, D, T, N)
        T = dt.shape[-1]
        causal = torch.ones(T, T, dtype=torch.bool, device=dt.device).tril()
        decay = torch.exp((S.unsqueeze(3) - S.unsqueeze(2)).masked_fill(~causal[..., None], -torch.inf))
        return torch.einsum("bni,bdijn,bnj,bdj->bdij", C.float(), decay, B.float(), dt)

    def forward(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor | None]:
        cache = ctx.cache
        step = stepping(cache, u.shape[1])
        x, z, dt, B, C = self.prepare(u, ctx)
        if step:  # one token: update the state in place instead of running a scan
            y = scan_ops.selective_state_update(cache.ssm, x[..., 0], dt[..., 0], self.A, B[..., 0], C[..., 0],
                                                self.D, z[..., 0], self.dt_proj.bias)
            return y[:, None], None
        y = scan_ops.selective_scan(
            x, dt, self.A, B, C, self.D, z, self.dt_proj.bias, True,
            initial_state=None if cache is None else cache.ssm,
            return_final_state=cache is not None, impl=self.impl)
        if cache is not None:
            y, state = y
            cache.store("ssm", state.to(u.dtype))
        alpha = self.implicit_map(dt, B, C) if ctx.want_map else None
        return y.transpose(1, 2), alpha

    def cache_bytes(self, bytes_per_el: int) -> dict[str, int]:
        return {
            "ssm": self.d_inner * self.cfg.d_state * bytes_per_el,
            "conv": self.d_inner * (self.cfg.d_conv - 1) * bytes_per_el,
        }


class SSMMixer(Mixer):
    """in_proj -> SSM path -> out_proj (no biases); the standalone Mamba and Mamba-2 mixers."""

    def __init__(self, d_model: int, ssm: nn.Module):
        super().__init__()
        self.ssm = ssm
        self.in_proj = nn.Linear(d_model, ssm.in_dim, bias=False)
        self.out_proj = nn.Linear(ssm.d_inner, d_model, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> MixerOutput:
        y, alpha = self.ssm(self.in_proj(x), ctx)
        return MixerOutput(self.out_proj(y), maps={} if alpha is None else {"ssm": alpha})

    def reset_parameters(self) -> None:
        self.ssm.reset_parameters()

    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        return self.ssm.cache_bytes(bytes_per_el)

    def param_split(self) -> dict[str, int]:
        return {"attention": 0, "ssm": sum(p.numel() for p in self.parameters()), "shared": 0}


@register(MIXERS, "mamba")
class Mamba(SSMMixer):
    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        d = cfg.size.d_model
        super().__init__(d, MambaSSM(d, cfg.mamba.expand * d, cfg.mamba, cfg.norm_eps, backends))
