"""What every SSM path shares: the conv with its cache, the single-step test, the dt init, the
forward skeleton, the state accounting, and the standalone SSM mixer (in_proj -> path -> out_proj).

A path subclass of ``SSMPath`` says how to ``prepare`` its projected slice (conv, dt, B, C), how to
run the sequence op (``run_sequence``: scan or SSD, returns output and final state), one decoding
step from the slice (``step``: the state updated in place) and its implicit attention map; the
skeleton in ``forward`` does the rest the same way for every path.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor, nn

from ablate.mixers.base import Context, LayerCache, Mixer, MixerOutput
from ablate.ops.conv1d import causal_conv1d, conv_step


def stepping(cache: LayerCache | None, T: int) -> bool:
    """Decoding a single token with states already in the cache (the single-step update path)."""
    return cache is not None and cache.ssm is not None and T == 1


def cached_conv(x: Tensor, conv: nn.Conv1d, cache: LayerCache | None, impl: str, step_impl: str = "torch") -> Tensor:
    """Causal depthwise conv + SiLU over x (B, C, T). With a cache it continues from the cache's
    conv state and updates it (in place for a single decoding step)."""
    w = conv.weight.squeeze(1)
    if cache is None:
        return causal_conv1d(x, w, conv.bias, impl=impl)
    if stepping(cache, x.shape[-1]):
        return conv_step(cache.conv, x[..., 0], w, conv.bias, impl=step_impl)[..., None]
    y, state = causal_conv1d(x, w, conv.bias, initial_state=cache.conv, return_final_state=True, impl=impl)
    cache.store("conv", state)
    return y


def inverse_softplus_dt(n: int, dt_min: float, dt_max: float) -> Tensor:
    """Bias whose softplus is a log-uniform dt in [dt_min, dt_max] (Mamba's dt init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class SSMPath(nn.Module):
    """Base of the SSM paths. Subclasses set ``in_dim`` (projected slice width), ``d_inner``
    (output width), ``conv_channels``, ``map_units``, ``cfg`` (with d_state, d_conv) and implement the hooks."""

    in_dim: int
    d_inner: int
    conv_channels: int
    map_units: int  # rows of the implicit map: channels (Mamba-1) or heads (Mamba-2)

    @abstractmethod
    def prepare(self, u: Tensor, ctx: Context) -> tuple[Tensor, ...]:
        """The slice u (B, T, in_dim) -> (x, z, dt, B, C) after the conv (conv cache updated)."""

    @abstractmethod
    def run_sequence(self, x, z, dt, B, C, initial_state: Tensor | None, with_state: bool):
        """-> (output (B, T, d_inner), final state or None)."""

    @abstractmethod
    def step(self, state: Tensor, u: Tensor, ctx: Context) -> Tensor:
        """One token of the slice u (B, 1, in_dim): update ``state`` in place -> output (B, 1, d_inner)
        (conv cache updated; Mamba-2 runs ``prepare`` then its step op, Mamba-1 fuses more)."""

    @abstractmethod
    def implicit_map(self, dt: Tensor, B: Tensor, C: Tensor, units: slice = slice(None)) -> Tensor:
        """The recurrence as attention for the map units in ``units`` (channels for Mamba-1, heads
        for Mamba-2): alpha (B, units, T, T), causal."""

    def grouped_map(self, dt: Tensor, B: Tensor, C: Tensor, n_groups: int, chunk: int = 8) -> Tensor:
        """Mean |alpha| over each of ``n_groups`` equal, contiguous groups of map units: (B, G, T, T).
        Computed ``chunk`` units at a time, so (B, units, T, T) is never held (a long sequence
        has a T x T map per channel). Magnitudes, because signed channels cancel in a mean."""
        if self.map_units % n_groups:
            raise ValueError(f"{self.map_units} SSM map units (channels or heads) do not split into {n_groups} groups")
        size = self.map_units // n_groups
        groups = []
        for g in range(n_groups):
            total = 0
            for start in range(g * size, (g + 1) * size, chunk):
                units = slice(start, min(start + chunk, (g + 1) * size))
                total = total + self.implicit_map(dt, B, C, units).abs().sum(1)
            groups.append(total / size)
        return torch.stack(groups, dim=1)

    def forward(self, u: Tensor, ctx: Context) -> tuple[Tensor, Tensor | None]:
        cache = ctx.cache
        if stepping(cache, u.shape[1]):  # one token: update the state in place instead of the sequence op
            return self.step(cache.ssm, u, ctx), None
        x, z, dt, B, C = self.prepare(u, ctx)
        y, state = self.run_sequence(x, z, dt, B, C, initial_state=None if cache is None else cache.ssm,
                                     with_state=cache is not None)
        if cache is not None:
            cache.store("ssm", state.to(u.dtype))
        return y, self.implicit_map(dt, B, C) if ctx.want_map else None

    def cache_bytes(self, bytes_per_el: int) -> dict[str, int]:
        return {
            "ssm": self.d_inner * self.cfg.d_state * bytes_per_el,
            "conv": self.conv_channels * (self.cfg.d_conv - 1) * bytes_per_el,
        }

    def sequence_flops(self) -> float:
        """About 7 FLOPs per channel, state and step (decay, input, state update, readout)."""
        return 7 * self.d_inner * self.cfg.d_state


class SSMMixer(Mixer):
    """in_proj -> SSM path -> out_proj (no biases): the standalone Mamba and Mamba-2 mixers."""

    has_attention, has_ssm = False, True

    def __init__(self, d_model: int, ssm: SSMPath):
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

    def sequence_flops(self, seq_len: int, n_meta: int) -> float:
        return self.ssm.sequence_flops()

    def param_split(self) -> dict[str, int]:
        return {"attention": 0, "ssm": sum(p.numel() for p in self.parameters()), "shared": 0}
