"""Sweep files and the grid of runs they define.

    name: default
    variants: [llama, mamba, {name: hymba, label: hymba-w16, sets: {layout.window: 16}}]
    tasks: [mqar]
    seeds: [0, 1]
    sets: {size.d_model: 64}              # model keys applied to every variant
    grid: {attention.n_heads: [2, 4]}     # optional knob grid (model keys)
    match: {target: 200000, knob: mlp.hidden}   # optional: equal non-embedding parameters
    recipe: {...}  mqar: {...}  text: {...}     # shared by every run
    storage: null   # Optuna RDB URL; default sqlite:///RESULTS/study.db
    results: null   # default results/NAME

Loading builds and validates every run's config, so a bad sweep file fails before any training.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ablate.config import ConfigError, from_dict, knob, load_variant, load_yaml, nested, override
from ablate.sizing import MATCH_KNOBS, match
from ablate.tasks.mqar import MQARConfig
from ablate.tasks.text import TextConfig
from ablate.train.recipe import RecipeConfig
from ablate.train.run import RunConfig


@dataclass(frozen=True, kw_only=True)
class VariantEntry:
    name: str = knob("", "variant name (variants/NAME.yaml)")
    label: str | None = knob(None, "name in the results (default: name)")
    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": "model overrides for this variant"})


@dataclass(frozen=True, kw_only=True)
class MatchConfig:
    target: int = knob(0, "non-embedding parameters every variant is matched to")
    tolerance: float = knob(0.01, "largest allowed relative residual")
    # last: the field name shadows the knob() helper inside this class body
    knob: str = knob("mlp.hidden", "the one knob solved per variant: " + ", ".join(MATCH_KNOBS))


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    name: str = knob("", "study name (also the Optuna study name)")
    description: str = knob("", "one line for humans")
    variants: tuple[str | VariantEntry, ...] = knob((), "variants to compare")
    tasks: tuple[Literal["mqar", "text"], ...] = knob(("mqar",), "tasks every variant runs")
    seeds: tuple[int, ...] = knob((0,), "seeds (init and batch order) every variant runs")
    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": "model overrides for all variants"})
    grid: dict[str, tuple] = field(default_factory=dict, metadata={"help": "model key -> values to cross"})
    match: MatchConfig | None = knob(None, "match every variant to one parameter budget")
    recipe: RecipeConfig = nested(RecipeConfig, "the recipe shared by all runs")
    mqar: MQARConfig = nested(MQARConfig, "MQAR data shared by all runs")
    text: TextConfig = nested(TextConfig, "text data shared by all runs")
    storage: str | None = knob(None, "Optuna storage URL (default sqlite:///RESULTS/study.db)")
    results: str | None = knob(None, "results directory (default results/NAME)")


@dataclass(frozen=True)
class Point:
    variant: str  # label
    task: str
    seed: int
    knobs: tuple[tuple[str, Any], ...] = ()

    @property
    def id(self) -> str:
        knobs = ",".join(f"{k}={json.dumps(v)}" for k, v in self.knobs)
        return f"{self.variant}|{self.task}|s{self.seed}" + (f"|{knobs}" if knobs else "")

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=,-]+", "_", self.id.replace("|", "-"))


@dataclass
class Sweep:
    cfg: SweepConfig
    path: Path
    runs: dict[str, tuple[Point, RunConfig]]  # point id -> (point, run config), in grid order

    @property
    def results(self) -> Path:
        return Path(self.cfg.results or f"results/{self.cfg.name}")

    @property
    def storage(self) -> str:
        return self.cfg.storage or f"sqlite:///{self.results / 'study.db'}"

    def run_dir(self, point: Point) -> Path:
        return self.results / "runs" / point.dirname

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(p.variant for p, _ in self.runs.values()))


def _entries(cfg: SweepConfig) -> list[VariantEntry]:
    entries = [VariantEntry(name=v) if isinstance(v, str) else v for v in cfg.variants]
    labels = [e.label or e.name for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError("variants: two entries share a label; give each a distinct label")
    return entries


def _model_for(cfg: SweepConfig, entry: VariantEntry, knobs, where: str):
    model = load_variant(entry.name).model
    for key, value in [*cfg.sets.items(), *entry.sets.items(), *knobs]:
        model = override(model, key, value, where=f"{where}: variant {entry.name}")
    if cfg.match is not None:
        model = match(model, cfg.match.target, cfg.match.knob, cfg.match.tolerance).cfg
    return model


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    cfg = from_dict(SweepConfig, load_yaml(path), str(path))
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=path.stem)
    if not cfg.variants:
        raise ConfigError(f"{path}: key 'variants' is empty; list at least one variant")
    grid_keys = list(cfg.grid)
    runs = {}
    for entry in _entries(cfg):
        for values in itertools.product(*(cfg.grid[k] for k in grid_keys)):
            knobs = tuple(zip(grid_keys, values, strict=True))
            try:
                model = _model_for(cfg, entry, knobs, str(path))
            except (ConfigError, ValueError) as err:
                raise ConfigError(f"{path}: {err}") from None
            for task, seed in itertools.product(cfg.tasks, cfg.seeds):
                point = Point(entry.label or entry.name, task, seed, knobs)
                recipe = dataclasses.replace(cfg.recipe, seed=seed)
                runs[point.id] = (point, RunConfig(variant=point.variant, model=model, task=task,
                                                   recipe=recipe, mqar=cfg.mqar, text=cfg.text))
    return Sweep(cfg, path, runs)
