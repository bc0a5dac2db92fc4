"""Sweep files and the grid of runs they define.

    name: default
    variants: [llama, mamba, {name: hymba, label: hymba-w16, sets: {layout.window: 16}}]
    tasks: [TASK, ...]                    # names in the task registry (default: the default task)
    seeds: [0, 1]
    sets: {size.d_model: 64}              # model keys applied to every variant
    grid: {attention.n_heads: [2, 4]}     # optional knob grid (model keys)
    match: {target: 200000, knob: mlp.hidden}   # optional: equal non-embedding parameters
    recipe: {...}                         # shared by every run
    TASK: {...}                           # each registered task's section, shared by its runs
    evaluate: {NAME: {...}}               # evaluations after training (ablate.evaluate), every run
    storage: null   # Optuna RDB URL; default sqlite:///RESULTS/study.db
    results: null   # default results/NAME

Loading builds and validates every run's config, so a bad sweep file fails before any training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablate.config import ConfigError, from_dict, knob, load_yaml, nested, override
from ablate.registry import TASKS
from ablate.sizing import match
from ablate.tasks import default_task
from ablate.train.config import RunConfig, check_model, section
from ablate.train.identity import differences, identity
from ablate.train.recipe import RecipeConfig
from ablate.train.run import read_record
from ablate.train.tracking import WandbConfig
from ablate.variants import load_variant


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
    knob: str = knob("mlp.hidden", "the one knob solved per variant (ablate.sizing.match_knobs)")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    name: str = knob("", "study name (also the Optuna study name)")
    description: str = knob("", "one line for humans")
    variants: tuple[str | VariantEntry, ...] = knob((), "variants to compare")
    tasks: tuple[str, ...] = knob((default_task(),), "tasks every variant runs (names in the task registry)")
    seeds: tuple[int, ...] = knob((0,), "seeds (init and batch order) every variant runs")
    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": "model overrides for all variants"})
    grid: dict[str, tuple] = field(default_factory=dict, metadata={"help": "model key -> values to cross"})
    match: MatchConfig | None = knob(None, "match every variant to one parameter budget")
    recipe: RecipeConfig = nested(RecipeConfig, "the recipe shared by all runs")
    evaluate: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "evaluations after training for every run: name -> its config section"})
    wandb: WandbConfig | None = knob(None, "log every run to W&B (group: the sweep; tags: the point)", identity=False)
    tensorboard: bool = knob(False, "log every run to TensorBoard too", identity=False)
    storage: str | None = knob(None, "Optuna storage URL (default sqlite:///RESULTS/study.db)")
    heartbeat_s: int = knob(20, "seconds between a running point's heartbeats")
    grace_s: int = knob(90, "seconds without a heartbeat after which a point's worker counts as dead and "
                        "the point is re-queued")
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

    @functools.cached_property
    def hashes(self) -> dict[str, str]:
        """Point id -> the identity hash of its run (``train.identity``), computed once: a trial is
        for this file's version of the point exactly when it carries this hash."""
        return {point_id: identity(cfg)[1] for point_id, (_, cfg) in self.runs.items()}

    def config_hash(self, point_id: str) -> str:
        return self.hashes[point_id]

    def changed_points(self) -> dict[str, str]:
        """Points whose run directory holds a run of another configuration (the file changed
        since): point id -> what changed. Their runs are redone, the old ones moved aside."""
        changed = {}
        for point_id, (point, cfg) in self.runs.items():
            record = read_record(self.run_dir(point))
            ident, digest = identity(cfg)
            if record is not None and record.get("config_hash") != digest:
                diff = differences(record.get("identity", {}), ident) if "identity" in record else ["(no identity)"]
                changed[point_id] = "; ".join(diff[:3]) + (" ..." if len(diff) > 3 else "")
        return changed

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
    check_model(model, f"{where}: variant {entry.label or entry.name}")
    return model


def _wandb_for(cfg: SweepConfig, point: Point) -> WandbConfig | None:
    """The sweep's W&B section for one point: grouped by sweep, tagged with what the point varies."""
    if cfg.wandb is None:
        return None
    tags = (*cfg.wandb.tags, point.variant, point.task, f"seed={point.seed}",
            *(f"{k}={json.dumps(v)}" for k, v in point.knobs))
    return dataclasses.replace(cfg.wandb, group=cfg.wandb.group or cfg.name, tags=tags)


def _task_sections(raw: dict, path: Path) -> dict[str, Any]:
    """Take each registered task's section out of the file's mapping, strictly converted."""
    return {name: section(TASKS.get(name).config, raw.pop(name), name, str(path))
            for name in TASKS.names() if name in raw}


SWEEPS_DIR = Path(__file__).resolve().parent.parent / "presets" / "sweeps"  # shipped; sweeps/ links here


def sweep_path(name_or_path: str | Path) -> Path:
    """A sweep file's path: a path as given, or the name of a shipped sweep (``default``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = SWEEPS_DIR / f"{name_or_path}.yaml"
    if not shipped.exists():
        names = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise ConfigError(f"no sweep file '{name_or_path}'; give a path or a shipped sweep: {names}")
    return shipped


def load_sweep(path: str | Path) -> Sweep:
    path = sweep_path(path)
    raw = load_yaml(path)
    sections = _task_sections(raw, path)
    cfg = from_dict(SweepConfig, raw, str(path), also_allowed=TASKS.names())
    if not cfg.name:
        cfg = dataclasses.replace(cfg, name=path.stem)
    if not cfg.variants:
        raise ConfigError(f"{path}: key 'variants' is empty; list at least one variant")
    cfg.recipe.check(str(path))
    for task in cfg.tasks:
        if task in TASKS:
            TASKS.get(task).check(sections.get(task) or TASKS.get(task).config(), str(path))
    for key in ("seeds", "tasks"):
        values = getattr(cfg, key)
        if not values:
            raise ConfigError(f"{path}: key '{key}' is empty; list at least one")
        if len(set(values)) != len(values):
            raise ConfigError(f"{path}: key '{key}' lists {sorted({v for v in values if values.count(v) > 1})} "
                              "more than once")
    for i, task in enumerate(cfg.tasks):
        if task not in TASKS:
            allowed = " | ".join(repr(t) for t in TASKS.names())
            raise ConfigError(f"{path}: key 'tasks[{i}]' = {task!r}; allowed: {allowed}")
    for key, values in cfg.grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{path}: key 'grid.{key}' = {values!r}; allowed: a non-empty list of values")
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
                try:
                    run = RunConfig(variant=point.variant, model=model, task=task, recipe=recipe,
                                    data=sections.get(task), evaluate=cfg.evaluate,
                                    wandb=_wandb_for(cfg, point), tensorboard=cfg.tensorboard,
                                    grid=dict(knobs))
                except ConfigError as err:
                    raise ConfigError(f"{path}: {err}") from None
                runs[point.id] = (point, run)
    return Sweep(cfg, path, runs)
