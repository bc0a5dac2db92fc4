"""Attention with explicit probabilities (eager), the ground truth and the map source.

q: (B, H, Tq, D); k: (B, Hkv, Tk, D); v: (B, Hkv, Tk, Dv) with H % Hkv == 0 (GQA);
mask: bool (Tq, Tk). Returns out (B, H, Tq, Dv) and, if asked, probabilities (B, H, Tq, Tk).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def repeat_kv(t: Tensor, n_heads: int) -> Tensor:
    return t.repeat_interleave(n_heads // t.shape[1], dim=1)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, return_probs: bool = False):
    H = q.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)  # at least fp32 for the softmax
    k, v = repeat_kv(k, H).to(acc), repeat_kv(v, H).to(acc)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.to(acc), k) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = torch.einsum("bhqk,bhkd->bhqd", probs, v).to(q.dtype)
    return (out, probs) if return_probs else out
