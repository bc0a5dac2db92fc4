"""Frozen, strictly-loaded configuration.

The conversion machinery and the model's schema; a task's, the recipe's and a sweep's sections live
with their code, and reading variant files from disk lives in ``ablate.variants``.

Every config is a frozen keyword-only dataclass. YAML is read with ``safe_load`` and converted by
``from_dict``, which rejects unknown keys and wrong types with a message that names the file, the
dotted key and what is allowed. Every field carries a one-line help text (``knob(..., help)``) that
``ablate keys`` prints. Change a config with ``override`` (dotted keys, validated the same way) or
``dataclasses.replace``; never mutate.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file, the key and what is allowed."""


def knob(default: Any, help: str, identity: bool = True, added: bool = False) -> Any:
    """A dataclass field with a help text (shown by ``ablate keys``). ``identity=False`` marks a
    field that says where files live or how a run is watched, not what it computes: it is left
    out of a run's identity (``identity_dict``). ``added=True`` marks a knob added after runs were
    recorded whose default computes what those runs computed: it enters the identity only when
    set to something else, so those runs keep their identity (their studies do not rerun)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use a tuple for sequence defaults")
    return field(default=default, metadata={"help": help, "identity": identity, "added": added})


def nested(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


def shown(value: Any, limit: int = 120) -> str:
    """A value as an error message shows it: its repr, cut short (a huge value stays readable)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def require(cfg: Any, **bounds: tuple) -> None:
    """Check numeric fields of a config in __post_init__: ``name=(low, high)`` (None: unbounded),
    so an impossible size is an error at load time that names the key, not a crash later."""
    for name, (low, high) in bounds.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            allowed = f">= {low}" if high is None else f"in [{low}, {high}]" if low is not None else f"<= {high}"
            raise ValueError(f"{name} = {shown(value)}; allowed: {allowed}")


# ----------------------------------------------------------------------------- model sections


@dataclass(frozen=True, kw_only=True)
class SizeConfig:
    d_model: int = knob(256, "residual stream width")
    n_layers: int = knob(4, "number of blocks (mixer + optional MLP each)")
    vocab_size: int = knob(8192, "vocabulary size (tied input embedding and output head)")

    def __post_init__(self):
        require(self, d_model=(1, None), n_layers=(1, None), vocab_size=(1, None))


@dataclass(frozen=True, kw_only=True)
class LayoutConfig:
    pattern: tuple[str, ...] = knob(("attention",), "mixer names cycled over the layers")
    window: int | None = knob(None, "sliding-window size of non-global attention (None: all global)")
    global_layers: Literal["all", "none"] | tuple[int | str, ...] = knob(
        "all", "attention layers kept global: all | none | list of indices or first/middle/last"
    )
    kv_share: int = knob(1, "cross-layer KV group size among consecutive window layers (1: off)")
    kv_groups: tuple[tuple[int, ...], ...] | None = knob(
        None, "explicit KV groups (first = producer); overrides kv_share"
    )


@dataclass(frozen=True, kw_only=True)
class AttentionConfig:
    n_heads: int = knob(4, "query heads")
    n_kv_heads: int | None = knob(None, "key/value heads for GQA (None: n_heads)")
    head_dim: int | None = knob(None, "query/key head dim (None: d_model // n_heads)")
    v_head_dim: int | None = knob(
        None, "value head dim (None: head_dim; in a hybrid layer d_inner // n_heads as in Hymba)"
    )
    rope_theta: float = knob(10000.0, "RoPE base")

    def __post_init__(self):
        require(self, n_heads=(1, None), n_kv_heads=(1, None), head_dim=(2, None), v_head_dim=(1, None),
                rope_theta=(1e-9, None))


@dataclass(frozen=True, kw_only=True)
class MambaConfig:
    d_state: int = knob(16, "SSM state size N per channel")
    d_conv: int = knob(4, "depthwise causal conv width")
    expand: int = knob(2, "d_inner = expand * d_model")
    dt_rank: int | Literal["auto"] = knob("auto", "rank of the dt projection (auto: ceil(d_model/16))")
    inner_norms: bool = knob(True, "RMSNorm on dt, B and C (Hymba / Jamba style)")
    conv_bias: bool = knob(True, "bias on the depthwise conv")
    dt_min: float = knob(0.001, "lower end of the dt initialisation range")
    dt_max: float = knob(0.1, "upper end of the dt initialisation range")

    def __post_init__(self):
        require(self, d_state=(1, None), d_conv=(1, None), expand=(1, None), dt_min=(1e-12, None))
        if self.dt_rank != "auto":
            require(self, dt_rank=(1, None))
        if self.dt_max < self.dt_min:
            raise ValueError(f"dt_max = {self.dt_max} is below dt_min = {self.dt_min}")


@dataclass(frozen=True, kw_only=True)
class Mamba2Config:
    d_state: int = knob(64, "SSM state size N per head")
    d_conv: int = knob(4, "depthwise causal conv width (over x, B and C)")
    expand: int = knob(2, "d_inner = expand * d_model")
    head_dim: int = knob(32, "channels per SSM head P (heads = d_inner // head_dim)")
    n_groups: int = knob(1, "B/C groups shared by the heads")
    dt_min: float = knob(0.001, "lower end of the dt initialisation range")
    dt_max: float = knob(0.1, "upper end of the dt initialisation range")

    def __post_init__(self):
        require(self, d_state=(1, None), d_conv=(1, None), expand=(1, None), head_dim=(1, None),
                n_groups=(1, None), dt_min=(1e-12, None))
        if self.dt_max < self.dt_min:
            raise ValueError(f"dt_max = {self.dt_max} is below dt_min = {self.dt_min}")


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    fusion: Literal["mean", "sum", "concat", "gate"] = knob(
        "mean", "how attention and SSM outputs are combined (paper: mean of normed paths)"
    )
    ssm: Literal["mamba", "mamba2"] = knob("mamba", "SSM path of the parallel head (Hymba: mamba)")
    # The attention:SSM ratio knob: with attention.n_heads set, a sweep matches this width so that
    # heads given to attention are taken from the SSM at constant size (sweeps/head_ratio.yaml).
    ssm_inner: int | None = knob(None, "SSM path width of the parallel head (None: the SSM's expand x d_model)")

    def __post_init__(self):
        require(self, ssm_inner=(1, None))


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    kind: Literal["swiglu", "none"] = knob("swiglu", "channel mixer after each token mixer")
    hidden: int | None = knob(None, "SwiGLU hidden width (None: 8/3 d_model rounded up to 64)")

    def __post_init__(self):
        require(self, hidden=(1, None))


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    size: SizeConfig = nested(SizeConfig, "sizes (one section a sweep overrides for all variants)")
    layout: LayoutConfig = nested(LayoutConfig, "compact layer plan, expanded by ablate.plan")
    n_meta: int = knob(0, "learned meta tokens prepended at the input (Hymba: 128)")
    attention: AttentionConfig = nested(AttentionConfig, "attention heads")
    mamba: MambaConfig = nested(MambaConfig, "Mamba-1 selective SSM")
    mamba2: Mamba2Config = nested(Mamba2Config, "Mamba-2 SSD")
    hybrid: HybridConfig = nested(HybridConfig, "parallel hybrid head")
    mlp: MLPConfig = nested(MLPConfig, "MLP")
    mixers: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "sections of mixers that declare their own config: mixer name -> its keys (Mixer.config)"})
    norm_eps: float = knob(1e-6, "RMSNorm epsilon")
    init_std: float = knob(0.02, "std of the normal init of linear and conv weights, and of the embedding "
                           "unless embed_init_std is set")
    embed_init_std: float | None = knob(
        None, "std of the token embedding's normal init (None: init_std); 1.0 let a 4-layer attention model "
        "without MLPs learn MQAR in ~800 steps (benchmarks/MQAR_CALIBRATION.md, round 4)", added=True)

    def __post_init__(self):
        # a zero std makes every weight (or the tied embedding and head) zero: nothing can train
        require(self, norm_eps=(0, None), init_std=(1e-12, None), embed_init_std=(1e-12, None))


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str = knob("", "variant name (the YAML file stem)")
    description: str = knob("", "one line shown by `ablate variants`")
    model: ModelConfig = nested(ModelConfig, "the architecture")


# ----------------------------------------------------------------------------- strict conversion


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, key: str, where: str) -> Any:
    """Convert a YAML value to type ``tp`` or raise ConfigError naming ``where`` and ``key``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is dict:  # free-form mapping (e.g. dotted overrides), checked where it is applied
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{where}: key '{key}' must be a mapping with string keys")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a mapping of {tp.__name__} fields")
        return from_dict(tp, value, where, prefix=f"{key}.")
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(option, value, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: key '{key}' = {shown(value)}; allowed: {_describe(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{where}: key '{key}' = {shown(value)}; allowed: {_describe(tp)}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' = {shown(value)}; allowed: {_describe(tp)}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_convert(item, v, f"{key}[{i}]", where) for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: key '{key}' = {shown(value)}; allowed: {_describe(tp)}")


def from_dict(cls: type, data: dict, where: str, prefix: str = "", also_allowed=()) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are errors.
    ``also_allowed``: keys the caller took out of ``data`` itself, listed in the error too."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; allowed in "
            f"'{prefix.rstrip('.') or 'the top level'}': "
            + ", ".join([*names, *also_allowed])
        )
    kwargs = {k: _convert(hints[k], v, prefix + k, where) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {prefix.rstrip('.') or cls.__name__}: {err}") from err


def to_dict(cfg: Any, identity: bool = False) -> Any:
    """Plain, YAML/JSON-ready form of a config (tuples become lists). ``identity``: without the
    fields marked ``knob(..., identity=False)``."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name), identity) for f in dataclasses.fields(cfg)
                if not identity or (f.metadata.get("identity", True)
                                    and not (f.metadata.get("added") and getattr(cfg, f.name) == f.default))}
    if isinstance(cfg, dict):
        return {k: to_dict(v, identity) for k, v in cfg.items()}
    if isinstance(cfg, (tuple, list)):
        return [to_dict(v, identity) for v in cfg]
    return cfg


def override(cfg: Any, key: str, value: Any, where: str = "override", _prefix: str = "") -> Any:
    """Return ``cfg`` with the dotted ``key`` set to ``value`` (validated like YAML)."""
    head, _, rest = key.partition(".")
    full = _prefix + key
    names = [f.name for f in dataclasses.fields(cfg)]
    if head not in names:
        raise ConfigError(
            f"{where}: unknown key '{full}'; allowed in '{_prefix.rstrip('.') or 'the top level'}': "
            + ", ".join(names)
        )
    current = getattr(cfg, head)
    if rest and isinstance(current, dict):  # a free-form section, checked where it is used
        new = _set_in_mapping(current, rest, value)
    elif rest:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"{where}: key '{full}': '{_prefix + head}' has no sub-keys")
        new = override(current, rest, value, where, _prefix + head + ".")
    else:
        new = _convert(typing.get_type_hints(type(cfg))[head], value, full, where)
    try:
        return dataclasses.replace(cfg, **{head: new})
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: key '{full}': {err}") from err


def _set_in_mapping(mapping: dict, key: str, value: Any) -> dict:
    """A copy of ``mapping`` with the dotted ``key`` set (nested mappings created as needed)."""
    head, _, rest = key.partition(".")
    inner = mapping.get(head)
    return {**mapping, head: _set_in_mapping(inner if isinstance(inner, dict) else {}, rest, value) if rest else value}


def parse_assignment(text: str, where: str = "--set") -> tuple[str, Any]:
    """Parse ``key=value`` where value is YAML (so 3, 0.1, true, [1, 2] and null work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"{where}: expected key=value, got {text!r}")
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads 3e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def help_lines(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every leaf field, for ``ablate keys``."""
    rows = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            rows += help_lines(tp, prefix + f.name + ".")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append((prefix + f.name, _describe(tp), repr(default), f.metadata.get("help", "")))
    return rows


MAX_CONFIG_BYTES = 1_000_000  # a config file is a page of YAML; anything larger is not one


class StrictLoader(yaml.SafeLoader):
    """safe_load that refuses what a config file never needs and a mistake or an attack does:
    a key given twice in one mapping (YAML keeps the last silently) and anchors/aliases (their
    expansion is how a tiny file becomes gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: aliases (*name) are not allowed in config files")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes is not a config file (at most {MAX_CONFIG_BYTES:,})")
        data = yaml.load(path.read_bytes().decode("utf-8"), Loader=StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {shown(str(err), 400)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data
