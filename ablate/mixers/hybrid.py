"""Hymba's parallel hybrid head (HYMBA.md section 1.2).

One input projection, split into q | k | v (attention heads) and x | z (the SSM path); both
paths read the same normalised input. The depthwise conv and the SiLU(z) gate live on the SSM
path only. Each path's output gets its own RMSNorm whose weight is the learnable scale (beta1 for
attention, beta2 for the SSM), then the two are fused and go through one output projection:

    mean   (paper):  out_proj((beta1 * norm(attn) + beta2 * norm(ssm)) / 2)
    sum:             out_proj(attn + ssm)                      (no norms: an extra baseline)
    concat (App. B): out_proj([beta1 * norm(attn), beta2 * norm(ssm)])   (out_proj is 2x wide)
    gate:            out_proj(g * beta1 norm(attn) + (1 - g) * beta2 norm(ssm)),
                     g = sigmoid(gate_proj(input))             (an extra baseline)

The attention:SSM ratio is set by attention.n_heads and the SSM width: hybrid.ssm_inner, or the
SSM's integer expand x d_model when unset (a sweep matches ssm_inner to move width between the
paths at constant parameters, sweeps/head_ratio.yaml). The value head dim
defaults to d_inner // n_heads so the attention output is as wide as the SSM output (Hymba:
v head 128 = 2x the q/k head 64).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.layers import RMSNorm
from ablate.mixers.base import Context, LayerSpec, Mixer, MixerOutput
from ablate.mixers.paths.attention import AttentionHeads
from ablate.mixers.paths.mamba import MambaSSM
from ablate.mixers.paths.mamba2 import Mamba2SSM
from ablate.mixers.paths.ssm import SSMPath
from ablate.ops.backends import Backends
from ablate.registry import MIXERS


def _ssm_path(cfg: ModelConfig, backends: Backends) -> SSMPath:
    d = cfg.size.d_model
    if cfg.hybrid.ssm == "mamba":
        return MambaSSM(d, cfg.hybrid.ssm_inner or cfg.mamba.expand * d, cfg.mamba, cfg.norm_eps, backends)
    return Mamba2SSM(cfg.hybrid.ssm_inner or cfg.mamba2.expand * d, cfg.mamba2, cfg.norm_eps, backends)


@MIXERS.register("hybrid")
class Hybrid(Mixer):
    has_attention, has_ssm = True, True
    size_knobs = ("hybrid.ssm_inner",)

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        super().__init__()
        d, acfg = cfg.size.d_model, cfg.attention
        self.fusion = cfg.hybrid.fusion
        self.ssm = _ssm_path(cfg, backends)
        d_inner = self.ssm.d_inner
        if acfg.v_head_dim is None and d_inner % acfg.n_heads:
            raise ValueError(
                f"d_inner={d_inner} is not divisible by attention.n_heads={acfg.n_heads}; "
                "set attention.v_head_dim"
            )
        v_head_dim = acfg.v_head_dim or d_inner // acfg.n_heads
        self.attn = AttentionHeads(d, acfg, spec, v_head_dim, backends)
        if self.fusion != "concat" and self.attn.out_dim != d_inner:
            raise ValueError(
                f"fusion '{self.fusion}' needs attention output width n_heads*v_head_dim = "
                f"{self.attn.out_dim} to equal d_inner = {d_inner}"
            )
        self.in_proj = nn.Linear(d, self.attn.in_dim + self.ssm.in_dim, bias=False)
        if self.fusion != "sum":
            self.norm_attn = RMSNorm(self.attn.out_dim, cfg.norm_eps)  # weight = beta1
            self.norm_ssm = RMSNorm(d_inner, cfg.norm_eps)  # weight = beta2
        if self.fusion == "gate":
            self.gate_proj = nn.Linear(d, d_inner, bias=False)
        fused = self.attn.out_dim + d_inner if self.fusion == "concat" else d_inner
        self.out_proj = nn.Linear(fused, d, bias=False)

    def _fuse(self, a: Tensor, s: Tensor, x: Tensor) -> Tensor:
        if self.fusion == "sum":
            return a + s
        a, s = self.norm_attn(a), self.norm_ssm(s)
        if self.fusion == "mean":
            return (a + s) / 2
        if self.fusion == "concat":
            return torch.cat([a, s], dim=-1)
        g = torch.sigmoid(self.gate_proj(x))
        return g * a + (1 - g) * s

    def forward(self, x: Tensor, ctx: Context) -> MixerOutput:
        qkv, u = self.in_proj(x).split([self.attn.in_dim, self.ssm.in_dim], dim=-1)
        a, kv, probs = self.attn(qkv, ctx)
        s, alpha = self.ssm(u, ctx)
        maps = {}
        if ctx.want_map:
            maps = {"attention": probs, "ssm": alpha}
        return MixerOutput(self.out_proj(self._fuse(a, s, x)), kv=kv, maps=maps)

    def reset_parameters(self) -> None:
        self.ssm.reset_parameters()

    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        return {"kv": self.attn.cache_bytes(seq_len, n_meta, bytes_per_el),
                **self.ssm.cache_bytes(bytes_per_el)}

    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        return self.attn.sequence_flops(seq_len, n_meta) + self.ssm.sequence_flops()

    def param_split(self) -> dict[str, int]:
        """The in_proj rows go to the path they feed; the per-path norms to their path. The output
        projection is shared when it reads the fused sum (mean, sum, gate); under concat its input
        columns split into the attention's and the SSM's (out = W_a attn + W_s ssm), so each path
        owns its part. The gate is shared."""
        d = self.in_proj.in_features
        attn = self.attn.in_dim * d
        ssm = self.ssm.in_dim * d + sum(p.numel() for p in self.ssm.parameters())
        shared = self.out_proj.weight.numel()
        if self.fusion == "concat":
            attn, ssm, shared = attn + self.attn.out_dim * d, ssm + self.ssm.d_inner * d, 0
        if self.fusion != "sum":
            attn += self.norm_attn.weight.numel()
            ssm += self.norm_ssm.weight.numel()
        if self.fusion == "gate":
            shared += self.gate_proj.weight.numel()
        return {"attention": attn, "ssm": ssm, "shared": shared}
