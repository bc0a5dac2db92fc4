"""Llama-style attention mixer: one q|k|v projection, the attention heads
(``mixers.paths.attention``: RoPE, GQA, windows, meta prefix, KV sharing, decoding cache), one
output projection; no biases."""

from __future__ import annotations

from torch import Tensor, nn

from ablate.config import ModelConfig
from ablate.mixers.base import Context, LayerSpec, Mixer, MixerOutput
from ablate.mixers.paths.attention import AttentionHeads
from ablate.ops.backends import Backends
from ablate.registry import MIXERS


@MIXERS.register("attention")
class Attention(Mixer):
    has_attention, has_ssm = True, False

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        super().__init__()
        d = cfg.size.d_model
        head_dim = cfg.attention.head_dim or d // cfg.attention.n_heads
        self.heads = AttentionHeads(d, cfg.attention, spec, cfg.attention.v_head_dim or head_dim,
                                    backends)
        self.in_proj = nn.Linear(d, self.heads.in_dim, bias=False)
        self.out_proj = nn.Linear(self.heads.out_dim, d, bias=False)

    def forward(self, x: Tensor, ctx: Context) -> MixerOutput:
        out, kv, probs = self.heads(self.in_proj(x), ctx)
        maps = {} if probs is None else {"attention": probs}
        return MixerOutput(self.out_proj(out), kv=kv, maps=maps)

    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        return {"kv": self.heads.cache_bytes(seq_len, n_meta, bytes_per_el)}

    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        return self.heads.sequence_flops(seq_len, n_meta)

    def param_split(self) -> dict[str, int]:
        return {"attention": sum(p.numel() for p in self.parameters()), "ssm": 0, "shared": 0}
