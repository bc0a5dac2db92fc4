"""The attention path: heads over a projected q|k|v slice, shared by the attention mixer and the
parallel hybrid head.

``AttentionHeads`` takes the projected q|k|v slice and returns the heads' output (B, T, H * Dv):

- Separate q/k and v head dims (Hymba's v head is 2x, so attention output width = d_inner).
- RoPE on q and k at absolute positions; meta tokens take 0..n_meta-1.
- Window layers see the last ``window`` positions plus every meta token (ops.attention.masks).
- KV roles: a producer (or plain layer) returns the post-RoPE K/V it attended over; a consumer
  has no K/V projection and attends with its own Q over its producer's K/V.
- Decoding cache: fixed slots (see ``LayerCache``), written in place; a step attends over the
  cached slots plus its own keys, with the mask from positions hiding empty and out-of-window
  slots. Shapes never change while decoding, so a step can be captured as a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ablate.config import AttentionConfig
from ablate.mixers.base import Context, LayerCache, LayerSpec, SharedKV
from ablate.ops import attention as attn_ops
from ablate.ops import rope as rope_ops
from ablate.ops.backends import Backends


def cache_slot(pos: Tensor, window: int | None, n_meta: int, ring: int) -> Tensor:
    """The cache slot of each position: its own index in a global layer; in a window layer, meta
    positions keep theirs and the rest cycle through ``ring`` slots after them."""
    if window is None:
        return pos
    return torch.where(pos < n_meta, pos, n_meta + (pos - n_meta) % max(ring, 1))


class AttentionHeads(nn.Module):
    """The attention heads of a layer, after the input projection and before the output one."""

    def __init__(self, d_model: int, cfg: AttentionConfig, spec: LayerSpec, v_head_dim: int,
                 backends: Backends):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or d_model // cfg.n_heads
        self.v_head_dim = v_head_dim
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        self.theta = cfg.rope_theta
        self.window = spec.window
        self.role = spec.kv_role
        self.impl = backends.attention
        self.rope_impl = backends.rope
        self.q_dim = self.n_heads * self.head_dim
        self.k_dim = 0 if self.role == "consumer" else self.n_kv_heads * self.head_dim
        self.v_dim = 0 if self.role == "consumer" else self.n_kv_heads * v_head_dim
        self.in_dim = self.q_dim + self.k_dim + self.v_dim
        self.out_dim = self.n_heads * v_head_dim

    def _heads(self, t: Tensor, n: int) -> Tensor:
        return t.unflatten(-1, (n, -1)).transpose(1, 2)  # (B, T, n*D) -> (B, n, T, D)

    def _keys(self, k: Tensor, v: Tensor, ctx: Context) -> SharedKV:
        """k, v: this layer's projected (B, T, n_kv * D) slices (empty in a consumer)."""
        if self.role == "consumer":
            if ctx.shared_kv is None:
                raise RuntimeError("a KV consumer layer ran without its producer's K/V")
            return ctx.shared_kv
        k = rope_ops.rope(self._heads(k, self.n_kv_heads), ctx.pos, self.theta, self.rope_impl)
        v = self._heads(v, self.n_kv_heads)
        cache = ctx.cache
        if cache is None:
            return SharedKV(k, v, ctx.pos)
        ring = self._ring(cache)
        if cache.k is None:  # prefill: attend over this call's keys alone, then fill the slots
            self._allocate(cache, k, v, ctx.n_meta + ring)
            keys = SharedKV(k, v, ctx.pos)
            n_meta_here = ctx.n_meta  # a fresh sequence starts with the meta tokens
        else:
            keys = SharedKV(torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2), torch.cat([cache.pos, ctx.pos]))
            n_meta_here = 0
        pos, T = ctx.pos, k.shape[2]
        if T - n_meta_here > ring:  # window layer: older entries fall out of every later window
            pick = torch.cat([torch.arange(n_meta_here, device=k.device), torch.arange(T - ring, T, device=k.device)])
            k, v, pos = k[:, :, pick], v[:, :, pick], pos[pick]
        slots = cache_slot(pos, self.window, ctx.n_meta, ring)
        cache.k.index_copy_(2, slots, k)
        cache.v.index_copy_(2, slots, v)
        cache.pos.index_copy_(0, slots, pos)
        return keys

    def _ring(self, cache: LayerCache) -> int:
        """Non-meta slots: every position a global layer may hold, window - 1 in a window layer."""
        if cache.max_tokens is None:
            raise ValueError("decoding needs a cache that knows its size: "
                             "LM.new_cache(max_tokens) or LayerCache(max_tokens)")
        return cache.max_tokens if self.window is None else min(self.window - 1, cache.max_tokens)

    @staticmethod
    def _allocate(cache: LayerCache, k: Tensor, v: Tensor, slots: int) -> None:
        B, H = k.shape[:2]
        cache.k = k.new_zeros(B, H, slots, k.shape[-1])
        cache.v = v.new_zeros(B, H, slots, v.shape[-1])
        cache.pos = torch.full((slots,), LayerCache.EMPTY, dtype=torch.long, device=k.device)

    def forward(self, qkv: Tensor, ctx: Context) -> tuple[Tensor, SharedKV, Tensor | None]:
        """qkv: (B, T, in_dim) -> (B, T, H * Dv), the K/V used, probabilities or None."""
        # one split of q|k|v: its backward joins the three gradients in one pass (a slice for q and a
        # split for k, v cost a zero-filled copy of qkv and an add more)
        q, k, v = qkv.split([self.q_dim, self.k_dim, self.v_dim], dim=-1)
        q = rope_ops.rope(self._heads(q, self.n_heads), ctx.pos, self.theta, self.rope_impl)
        kv = self._keys(k, v, ctx)
        args = (q, kv.k, kv.v, ctx.pos, kv.pos, self.window, ctx.n_meta)
        probs = None
        if ctx.want_map:
            out, probs = attn_ops.attention_probs(*args)
        else:
            out = attn_ops.attention(*args, impl=self.impl)
        return out.transpose(1, 2).flatten(2), kv, probs

    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> int:
        if self.role == "consumer":
            return 0
        kept = seq_len if self.window is None else min(seq_len, self.window - 1)
        return (n_meta + kept) * (self.k_dim + self.v_dim) * bytes_per_el

    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        """Scores and values (2 FLOPs per multiply-add) over the keys a query sees on average."""
        T = seq_len + n_meta
        keys = (T + 1) / 2 if self.window is None else min(self.window, (T + 1) / 2) + n_meta
        return 2 * self.n_heads * (self.head_dim + self.v_head_dim) * keys
