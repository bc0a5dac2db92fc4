"""Layer plan: expand a variant's compact layout into one explicit LayerSpec per layer.

The expanded plan is what the model builds and what a run records, so two runs that differ in
architecture differ visibly in their plans.

Conventions (all documented in the README):
- ``pattern`` is cycled over the layers; its length must divide ``n_layers``.
- ``window = W``: a query sees the W most recent positions (itself included) plus every meta
  token. ``global_layers`` names the attention layers that keep full causal attention; the words
  first / middle / last refer to the attention-bearing layers (middle = the ((n-1)//2)-th),
  which gives Hymba-1.5B's [0, 15, 31].
- ``kv_share = g``: each maximal run of consecutive window layers is cut into groups of g; a
  remainder joins the first group of the run (Hymba-1.5B's [16, 17, 18]). The first layer of a
  group produces K/V, the others consume it and have no K/V projection. kv_share never groups a
  global layer (as in Hymba); explicit kv_groups may let a global producer serve window consumers,
  each of which applies its own window to the producer's K/V.
"""

from __future__ import annotations

import ablate.mixers  # noqa: F401  (fills the mixer registry this module asks)
from ablate.config import ConfigError, ModelConfig
from ablate.mixers.base import LayerSpec
from ablate.registry import MIXERS

__all__ = ["LayerSpec", "PlanError", "expand"]


class PlanError(ValueError):
    """An impossible layer plan; the message names the layer (or key) and why."""


def _has_attention(mixer: str) -> bool:
    return MIXERS.get(mixer).has_attention


def _mixers(cfg: ModelConfig) -> list[str]:
    n, pattern = cfg.size.n_layers, cfg.layout.pattern
    if not pattern:
        raise PlanError("layout.pattern is empty; give at least one of " + ", ".join(MIXERS.names()))
    for name in pattern:
        if name not in MIXERS:
            raise PlanError(f"layout.pattern: unknown mixer '{name}'; allowed: {', '.join(MIXERS.names())}")
    if n < 1 or n % len(pattern):
        raise PlanError(
            f"size.n_layers = {n} is not a positive multiple of len(layout.pattern) = {len(pattern)}"
        )
    return [pattern[i % len(pattern)] for i in range(n)]


def _global_layers(cfg: ModelConfig, mixers: list[str]) -> set[int]:
    attn = [i for i, m in enumerate(mixers) if _has_attention(m)]
    spec = cfg.layout.global_layers
    if spec == "all":
        return set(attn)
    if spec == "none":
        return set()
    named = {"first": 0, "middle": (len(attn) - 1) // 2, "last": len(attn) - 1}
    chosen = set()
    for item in spec:
        if isinstance(item, str):
            if item not in named:
                raise PlanError(
                    f"layout.global_layers: '{item}' is not an index or one of first, middle, last"
                )
            if not attn:
                raise PlanError("layout.global_layers names attention layers but there are none")
            chosen.add(attn[named[item]])
        elif item not in attn:
            raise PlanError(
                f"layer {item}: listed in layout.global_layers but it is not an attention layer "
                f"(attention layers: {attn})"
            )
        else:
            chosen.add(item)
    return chosen


def _kv_groups(cfg: ModelConfig, specs: list[LayerSpec]) -> list[tuple[int, ...]]:
    if cfg.layout.kv_groups is not None:
        return [tuple(g) for g in cfg.layout.kv_groups]
    g = cfg.layout.kv_share
    if g < 1:
        raise PlanError(f"layout.kv_share = {g}; allowed: an integer >= 1")
    if g == 1:
        return []
    runs, run = [], []
    for s in specs:
        if s.has_attention and s.window is not None:
            run.append(s.index)
        else:
            runs, run = runs + [run] if run else runs, []
    runs = runs + [run] if run else runs
    groups = []
    for run in runs:
        n_groups = len(run) // g
        if n_groups == 0:
            continue
        sizes = [g] * n_groups
        sizes[0] += len(run) - g * n_groups
        start = 0
        for size in sizes:
            groups.append(tuple(run[start : start + size]))
            start += size
    return groups


def _check_group(group: tuple[int, ...], specs: list[LayerSpec], taken: set[int]) -> None:
    if len(group) < 2:
        raise PlanError(f"kv group {list(group)}: needs a producer and at least one consumer")
    for i in group:
        if not 0 <= i < len(specs):
            raise PlanError(f"kv group {list(group)}: layer {i} is out of range [0, {len(specs)})")
        if not specs[i].has_attention:
            raise PlanError(f"layer {i}: in kv group {list(group)} but has no attention")
        if i in taken:
            raise PlanError(f"layer {i}: appears in more than one kv group")
        taken.add(i)
    if list(group) != list(range(group[0], group[0] + len(group))):
        raise PlanError(f"kv group {list(group)}: layers must be consecutive")
    producer = specs[group[0]].window
    for i in group[1:]:  # a consumer masks the producer's K/V with its own window
        w = specs[i].window
        if producer is not None and (w is None or w > producer):
            raise PlanError(
                f"kv group {list(group)}: layer {i} (window {w}) needs keys its producer layer "
                f"{group[0]} (window {producer}) does not keep; a producer must be global or have "
                "the widest window")
    if specs[group[0]].mixer != specs[group[-1]].mixer or len({specs[i].mixer for i in group}) > 1:
        raise PlanError(f"kv group {list(group)}: layers must use the same mixer")


def expand(cfg: ModelConfig) -> tuple[LayerSpec, ...]:
    """One validated LayerSpec per layer."""
    mixers = _mixers(cfg)
    window = cfg.layout.window
    if window is not None and window < 1:
        raise PlanError(f"layout.window = {window}; allowed: null or an integer >= 1")
    globals_ = _global_layers(cfg, mixers)
    attn_layers = [i for i, m in enumerate(mixers) if _has_attention(m)]
    if window is None and cfg.layout.global_layers not in ("all",):
        raise PlanError("layout.global_layers is set but layout.window is null (every layer global)")
    if window is not None and attn_layers and set(attn_layers) <= globals_:
        raise PlanError("layout.window is set but every attention layer is global")
    specs = [
        LayerSpec(i, m, window=None if (i in globals_ or not _has_attention(m)) else window)
        for i, m in enumerate(mixers)
    ]
    taken: set[int] = set()
    for gid, group in enumerate(_kv_groups(cfg, specs)):
        _check_group(group, specs, taken)
        for pos, i in enumerate(group):
            role = "producer" if pos == 0 else "consumer"
            specs[i] = LayerSpec(i, specs[i].mixer, specs[i].window, role, gid)
    if cfg.n_meta < 0:
        raise PlanError(f"n_meta = {cfg.n_meta}; allowed: an integer >= 0")
    for name in cfg.mixers:  # each mixer's own section is checked against its config class
        if name not in MIXERS:
            raise PlanError(f"mixers: unknown mixer '{name}'; allowed: {', '.join(MIXERS.names())}")
        try:
            MIXERS.get(name).options(cfg)
        except ConfigError as err:
            raise PlanError(str(err)) from None
    return tuple(specs)
