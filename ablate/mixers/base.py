"""The mixer protocol: one signature for every token mixer.

    out = mixer(x, ctx)        x: (B, T, d_model) -> out.y: (B, T, d_model)

``ctx`` carries the absolute positions of x (meta tokens take 0..n_meta-1), the layer's decoding
cache (filled and updated in place when given), the K/V shared by this layer's KV-sharing
producer, and whether to return attention maps. Every mixer also reports its analytic cache bytes
and how its parameters split between attention and SSM.

Shape letters: B batch, T time, H heads, D channels / head dim, N SSM state, P SSM head dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from torch import Tensor, nn


@dataclass
class SharedKV:
    """Post-RoPE keys/values a KV producer attended over, with their absolute positions."""

    k: Tensor  # (B, Hkv, S, D)
    v: Tensor  # (B, Hkv, S, Dv)
    pos: Tensor  # (S,)


@dataclass
class LayerCache:
    """Decoding state of one layer. Tensors are allocated once, on the first (prefill) call, and
    updated in place after that, so a captured decoding step (a CUDA graph) stays valid.

    Attention keys live in fixed slots: a global layer has one slot per position, up to
    ``max_tokens`` (+ meta); a window layer keeps the meta slots and a ring of window - 1 slots,
    all that a later query can see. Empty slots carry position ``EMPTY`` (visible to no query).
    """

    max_tokens: int | None = None  # real tokens this cache can hold (meta tokens come on top)
    k: Tensor | None = None  # (B, Hkv, slots, D), post-RoPE
    v: Tensor | None = None  # (B, Hkv, slots, Dv)
    pos: Tensor | None = None  # (slots,) absolute position held by each slot
    ssm: Tensor | None = None
    conv: Tensor | None = None

    EMPTY = 2**40  # the position of a slot not yet written: later than every query

    def store(self, name: str, value: Tensor) -> None:
        """Set a state tensor the first time, copy into it afterwards (same storage)."""
        current = getattr(self, name)
        if current is None:
            setattr(self, name, value.contiguous())  # not a view that keeps a larger tensor alive
        else:
            current.copy_(value)

    def nbytes(self) -> int:
        tensors = (self.k, self.v, self.ssm, self.conv)  # pos is bookkeeping, not model state
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass
class Context:
    pos: Tensor  # (T,) absolute positions of x
    n_meta: int = 0
    cache: LayerCache | None = None
    shared_kv: SharedKV | None = None
    want_map: bool = False


@dataclass
class MixerOutput:
    y: Tensor
    kv: SharedKV | None = None  # set by KV producers (and plain attention) for consumers
    maps: dict[str, Tensor] = field(default_factory=dict)  # "attention": (B,H,T,S); "ssm": (B,C,T,T)


class Mixer(nn.Module, ABC):
    """Base class: subclasses implement forward, cache_bytes and param_split."""

    @abstractmethod
    def forward(self, x: Tensor, ctx: Context) -> MixerOutput: ...

    @abstractmethod
    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        """Bytes of decoding state for one sequence after seq_len real tokens (+ n_meta)."""

    @abstractmethod
    def param_split(self) -> dict[str, int]:
        """Parameter counts by path: {'attention': a, 'ssm': s, 'shared': x}."""

    def reset_parameters(self) -> None:
        """Mixer-specific init, applied after the model's generic normal init."""
