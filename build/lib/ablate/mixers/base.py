"""The mixer protocol: one signature for every token mixer.

    out = mixer(x, ctx)        x: (B, T, d_model) -> out.y: (B, T, d_model)

``ctx`` carries the absolute positions of x (meta tokens take 0..n_meta-1), the layer's decoding
cache (filled and updated in place when given), the K/V shared by this layer's KV-sharing
producer, and whether to return attention maps.

A mixer class carries every fact the rest of ablate needs about it, so nothing outside its file
keeps a list of mixers or looks for attributes by name:

- ``has_attention`` / ``has_ssm``: which paths it has. The layer plan gives windows and KV roles
  to attention-bearing layers only; the maps it returns are exactly ``"attention"`` (softmax
  probabilities, (B, H, T, S)) if it has attention and ``"ssm"`` (the implicit attention of the
  recurrence, (B, C, T, T)) if it has an SSM path, whenever ``ctx.want_map`` is set.
- ``cache_bytes``: analytic decoding-state bytes by kind; sizing sums every key it returns.
- ``sequence_flops``: forward FLOPs per token beyond the weight matmuls (attention scores and
  values, the scan), for MFU; sizing adds the matmuls itself.
- ``param_split``: parameters by path, for the attention:SSM ratio.

The contract test (tests/test_mixer_contract.py) checks all of these for every registered mixer.

Shape letters: B batch, T time, H heads, D channels / head dim, N SSM state, P SSM head dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from ablate.config import ConfigError, from_dict
from ablate.registry import MIXERS


@dataclass(frozen=True)
class LayerSpec:
    """One layer of an expanded plan (``ablate.plan.expand``): what the model builds and records."""

    index: int
    mixer: str
    window: int | None = None
    kv_role: Literal["none", "producer", "consumer"] = "none"
    kv_group: int | None = None

    @property
    def has_attention(self) -> bool:
        return MIXERS.get(self.mixer).has_attention

    def describe(self) -> str:
        attn = ""
        if self.has_attention:
            attn = "global" if self.window is None else f"window={self.window}"
            if self.kv_role != "none":
                attn += f" kv:{self.kv_role}(group {self.kv_group})"
        return f"{self.index:>3}  {self.mixer:<10} {attn}"


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
    """Base class. Subclasses are built as ``cls(model_cfg, spec, backends)``, set the two class
    facts and implement forward, cache_bytes, sequence_flops and param_split."""

    name: ClassVar[str]  # set by MIXERS.register
    has_attention: ClassVar[bool]
    has_ssm: ClassVar[bool]
    # Optional: the frozen dataclass of this mixer's own section, written `mixers: {NAME: {...}}` in
    # a variant (the shipped mixers' sections are ModelConfig fields), read with ``options(cfg)``.
    config: ClassVar[type | None] = None
    # Integer model keys that widen this mixer, which a sweep's `match:` may solve (besides
    # size.d_model and mlp.hidden): parameter counts must grow with them.
    size_knobs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        abstract = any(getattr(getattr(cls, m), "__isabstractmethod__", False) for m in dir(cls)
                       if not m.startswith("__") and callable(getattr(cls, m, None)))
        if not abstract:  # a concrete mixer must state its paths (plan, maps and sizing read them)
            for fact in ("has_attention", "has_ssm"):
                if not isinstance(getattr(cls, fact, None), bool):
                    raise TypeError(f"mixer {cls.__name__} must set the class attribute {fact} = True | False")

    @classmethod
    def options(cls, model_cfg) -> Any:
        """This mixer's section of ``model_cfg.mixers`` as its ``config`` (defaults if absent)."""
        raw = model_cfg.mixers.get(cls.name)
        if cls.config is None:
            if raw is not None:
                raise ConfigError(f"key 'mixers.{cls.name}': mixer '{cls.name}' has no config section")
            return None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"key 'mixers.{cls.name}' must be a mapping of {cls.config.__name__} fields")
        return from_dict(cls.config, raw or {}, "model config", prefix=f"mixers.{cls.name}.")

    @abstractmethod
    def forward(self, x: Tensor, ctx: Context) -> MixerOutput:
        """With ``ctx.want_map``, ``out.maps`` holds "attention" if has_attention and "ssm" if has_ssm."""

    @abstractmethod
    def cache_bytes(self, seq_len: int, n_meta: int, bytes_per_el: int) -> dict[str, int]:
        """Bytes of decoding state for one sequence after seq_len real tokens (+ n_meta), by kind
        ("kv" for attention keys and values; "ssm", "conv" or any other name for other state).
        Sizing sums every key, so a new kind of state is counted without any other change."""

    @abstractmethod
    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        """Forward FLOPs per token that are not weight matmuls (attention scores and values over
        the keys a query sees, the recurrence), for a training sequence of seq_len (+ n_meta)."""

    @abstractmethod
    def param_split(self) -> dict[str, int]:
        """Parameter counts by path: {'attention': a, 'ssm': s, 'shared': x}."""

    def reset_parameters(self) -> None:
        """Mixer-specific init, applied after the model's generic normal init."""
