"""Exact parameter counts, parameter matching, and analytic cache bytes.

Counts come from the real modules, built on the meta device (no memory, no init cost), so they can
never drift from the model. Cache bytes come from each mixer's own ``cache_bytes``; tests check them
against the cache the model really allocates while decoding.

Cache convention (the paper's Table 2 convention is not fully known; this is ours): bytes held for
one sequence after ``seq_len`` real tokens, 1 MB = 1e6 B, batch 1. Global attention layers keep
n_meta + seq_len K/V entries; window layers keep n_meta + min(seq_len, window - 1) (all a later
query can see); KV consumers keep none; SSM layers keep their state (d_inner * d_state) and conv
state (conv channels * (d_conv - 1)), in the same dtype.

Everything per layer comes from the mixer protocol (``mixers.base.Mixer``): parameter split,
cache bytes by kind (every kind summed) and non-matmul FLOPs, so a new mixer is counted correctly
without any change here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ablate.config import ConfigError, ModelConfig, override
from ablate.layers import SwiGLU
from ablate.model import LM
from ablate.registry import MIXERS

DTYPE_BYTES = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2}


def meta_model(cfg: ModelConfig) -> LM:
    with torch.device("meta"):
        return LM(cfg)


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int
    non_embedding: int
    attention: int  # attention-only parameters (q/k/v/o projections, beta1)
    ssm: int  # SSM-only parameters (x/z projection, conv, x_proj, dt_proj, A, D, norms, beta2)
    shared: int  # hybrid output projection (and fusion gate), used by both paths
    mlp: int
    other: int  # block norms, final norm, meta tokens

    @property
    def attn_ssm_ratio(self) -> str:
        """'1:x' attention:SSM parameters, the shared projection split evenly in hybrids."""
        a, s = self.attention, self.ssm
        if a and s:
            a, s = a + self.shared / 2, s + self.shared / 2
            return f"1:{s / a:.2f}"
        return "1:0" if a else "0:1" if s else "-"

    def as_dict(self) -> dict:
        return {**asdict(self), "attn_ssm_ratio": self.attn_ssm_ratio}


def count_params(cfg: ModelConfig) -> ParamCount:
    model = meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    split = {"attention": 0, "ssm": 0, "shared": 0}
    mlp = 0
    for block in model.blocks:
        for key, n in block.mixer.param_split().items():
            split[key] += n
        if isinstance(block.mlp, SwiGLU):
            mlp += sum(p.numel() for p in block.mlp.parameters())
    other = total - embedding - sum(split.values()) - mlp
    return ParamCount(total, embedding, total - embedding, mlp=mlp, other=other, **split)


def cache_bytes(cfg: ModelConfig, seq_len: int, dtype: str = "fp16") -> dict[str, int]:
    """Decoding-state bytes for one sequence by kind: kv_global, kv_window (a mixer's "kv", split
    by the layer's window), ssm, conv, any other kind a mixer reports, and total (all of them)."""
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"dtype '{dtype}'; allowed: {', '.join(DTYPE_BYTES)}")
    nbytes = DTYPE_BYTES[dtype]
    model = meta_model(cfg)
    out = {"kv_global": 0, "kv_window": 0, "ssm": 0, "conv": 0}
    for block in model.blocks:
        for kind, n in block.mixer.cache_bytes(seq_len, cfg.n_meta, nbytes).items():
            if kind == "kv":
                kind = "kv_global" if block.spec.window is None else "kv_window"
            if kind == "total":
                raise ValueError(f"mixer '{block.spec.mixer}': cache kind 'total' is reserved for the sum")
            out[kind] = out.get(kind, 0) + n
    out["total"] = sum(out.values())
    return out


@dataclass(frozen=True)
class Match:
    cfg: ModelConfig
    knob: str
    value: int
    params: int
    target: int

    @property
    def residual(self) -> float:
        return (self.params - self.target) / self.target


def match_knobs() -> list[str]:
    """Knobs a match may solve: the residual width, the MLP width, and each mixer's size_knobs."""
    return ["size.d_model", "mlp.hidden", *(k for name in MIXERS.names() for k in MIXERS.get(name).size_knobs)]


def _count_at(cfg: ModelConfig, knob: str, value: int) -> int | None:
    try:
        return count_params(override(cfg, knob, value)).non_embedding
    except (ConfigError, ValueError):
        return None  # e.g. a width the heads do not divide


def match(cfg: ModelConfig, target: int, knob: str = "mlp.hidden", tolerance: float = 0.01,
          hi: int = 1 << 16) -> Match:
    """Solve the integer ``knob`` so the non-embedding parameter count is closest to ``target``.

    Counts grow monotonically with every knob, so a bisection finds the crossing; invalid values
    nearby (widths the heads do not divide) are skipped. Raises if the best residual exceeds
    ``tolerance``.
    """
    if knob not in match_knobs():
        raise ConfigError(f"match knob '{knob}'; allowed: {', '.join(match_knobs())}")
    lo = 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        n = next((c for v in range(mid, min(mid + 64, hi)) if (c := _count_at(cfg, knob, v))), None)
        if n is not None and n <= target:
            lo = mid
        else:
            hi = mid
    # the count crosses the target between lo and the next valid value above it
    below = next(((v, c) for v in range(lo, max(0, lo - 64), -1) if (c := _count_at(cfg, knob, v))), None)
    above = next(((v, c) for v in range(lo + 1, lo + 65) if (c := _count_at(cfg, knob, v))), None)
    candidates = [x for x in (below, above) if x is not None]
    best = min(candidates, key=lambda vc: abs(vc[1] - target)) if candidates else None
    if best is None:
        raise ConfigError(f"match: no valid value of '{knob}' near {lo}")
    result = Match(override(cfg, knob, best[0]), knob, best[0], best[1], target)
    if abs(result.residual) > tolerance:
        raise ConfigError(
            f"match: '{knob}' = {best[0]} gives {best[1]:,} non-embedding parameters, "
            f"{result.residual:+.1%} from the target {target:,} (tolerance {tolerance:.0%}); "
            "choose a finer knob"
        )
    return result


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward) from the layer plan:
    6 x (matmul weights, incl. the tied head) + 3 x each mixer's ``sequence_flops`` (attention
    scores/values over the keys each query sees, the SSM scan). Norms, activations and the conv
    are ignored (a few percent at these sizes)."""
    model = meta_model(cfg)
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith("meta"))
    flops = 6.0 * matmul
    for block in model.blocks:
        flops += 3 * block.mixer.sequence_flops(seq_len, cfg.n_meta)
    return flops
