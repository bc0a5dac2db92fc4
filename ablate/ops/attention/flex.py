"""Window + always-visible meta-prefix attention with FlexAttention (compiled; block masks cached
per shape). Used for full-sequence forwards (training, prefill) of window layers on the GPU;
decoding over a trimmed cache goes through SDPA with an explicit mask.

FlexAttention wants equal q/k and v head dims, so a wider V (Hymba: 2x) is processed in slices of
the q/k head dim and concatenated, as the released Hymba code does.

Sequences are padded to a multiple of 128 positions: with grouped KV heads and a length that is
not one (T=70-73 with one KV head, say), torch 2.11's inductor finds no kernel to lower flex
attention to (NoValidChoicesError), compiled block or not. Padded keys come after every real
query, so the causal mask hides them; padded queries are dropped.

The batch is padded to a power of two for the same reason as the length is padded: the kernel is
compiled per shape, and an evaluation that batches prompts by length (lm-eval generation) meets
every batch size from 1 to its maximum, past the recompile limit, after which dynamo falls back to
eager flex (30x slower). Padded rows are zeros and are dropped.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

PAD_TO = 128
MIN_HEAD_DIM = 16  # inductor's flex kernel refuses smaller q/k/v head dims (NotImplementedError)


def supports(q: Tensor, v: Tensor) -> bool:
    """Whether this kernel takes these head dims: q/k at least MIN_HEAD_DIM and V a whole number of
    q/k-dim slices (tiny matched models, d_model 37 with 2 heads, have neither; they take SDPA)."""
    D, Dv = q.shape[-1], v.shape[-1]
    return D >= MIN_HEAD_DIM and Dv % D == 0


@functools.cache
def _compiled():
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled kernel per shape: a study sees a handful (train lengths, eval lengths, meta
    # prefix), more than dynamo's default of 8 recompiles, after which it would silently fall
    # back to the slow eager path (seen in benchmarks: 30x slower prefill).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=64)
def block_mask(T: int, window: int | None, n_meta: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def visible(b, h, q, k):
        local = (q - k < window) | (k < n_meta) if window is not None else q >= k
        return (k <= q) & local

    return create_block_mask(visible, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


@torch.compiler.disable  # a compiled block calls this as it is: own compiled kernel, cached block mask
def attention(q: Tensor, k: Tensor, v: Tensor, window: int | None, n_meta: int) -> Tensor:
    """q: (B, H, T, D); k, v: (B, Hkv, T, D|Dv) over the same T positions 0..T-1."""
    B, T = q.shape[0], q.shape[2]
    padded = -(-T // PAD_TO) * PAD_TO
    rows = 1 << (B - 1).bit_length()
    if padded != T or rows != B:
        q, k, v = (F.pad(t, (0, 0, 0, padded - T, 0, 0, 0, rows - B)) for t in (q, k, v))
    mask = block_mask(padded, window, n_meta, str(q.device))
    flex = _compiled()
    gqa = q.shape[1] != k.shape[1]
    D = q.shape[-1]
    parts = [flex(q, k, v[..., i : i + D], block_mask=mask, enable_gqa=gqa) for i in range(0, v.shape[-1], D)]
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return out[:B, :, :T]
