"""Sweep files and the grid of runs they define.

    name: default
    variants: [llama, mamba, {name: hymba, label: hymba-w16, sets: {layout.window: 16}}]
    tasks: [TASK, ...]                    # names in the task registry (default: the default task)
    seeds: [0, 1]
    sets: {size.d_model: 64}              # model keys applied to every variant
    grid: {attention.n_heads: [2, 4]}     # optional knob grid (model keys, recipe.KEY, TASK.KEY)
    match: {target: 200000, knob: mlp.hidden}   # optional: equal non-embedding parameters
    recipe: {...}                         # shared by every run
    TASK: {...}                           # each registered task's section, shared by its runs
    per_task: {mqar: {sets: {embed_init_std: 1.0}, recipe: {max_steps: 1500}}}
        # optional: model and recipe values for one task's runs only (a task that needs its own
        # schedule); the other tasks' runs, and so their identities, are untouched
    evaluate: {NAME: {...}}               # evaluations after training (ablate.evaluate), every run
    storage: null   # Optuna RDB URL; default sqlite:///RESULTS/study.db
    results: null   # default results/NAME
    objectives: [{metric: val/acc}, {metric: cache_mb}]   # the study's values (default: the headline)
    search: {...}; sampler: {...}; pruner: {...}; n_trials: N    # a search study (sweep/search.py)
    lr_search: {values: [3.0e-4, 1.0e-3, 3.0e-3], seed: 0}   # each variant at its own best LR:
        # first every candidate LR per variant (and grid point) at one seed, validated on the task's
        # selection split (eval_split: selection); then the seeds at the LR whose headline was best,
        # validated on the test split. The chosen LR is a row key of the table and in every record.

Loading builds and validates every run's config, so a bad sweep file fails before any training
(a search study: its variants at the low and high end of every range).
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
from ablate.sweep.search import (
    ObjectiveConfig,
    PrunerConfig,
    SamplerConfig,
    Search,
    grid_points,
    parse_space,
    replace_recipe,
    replace_section,
    resolve_objectives,
    split_keys,
)
from ablate.tasks import default_task
from ablate.train.config import RunConfig, check_model, section
from ablate.train.identity import differences, identity
from ablate.train.recipe import RecipeConfig
from ablate.train.run import metric_specs, read_record
from ablate.train.tracking import WandbConfig
from ablate.variants import load_variant


@dataclass(frozen=True, kw_only=True)
class VariantEntry:
    name: str = knob("", "variant name (variants/NAME.yaml)")
    label: str | None = knob(None, "name in the results (default: name)")
    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": "model overrides for this variant"})
    recipe: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "recipe overrides for this variant (e.g. its calibrated lr)"})


@dataclass(frozen=True, kw_only=True)
class MatchConfig:
    target: int = knob(0, "non-embedding parameters every variant is matched to")
    tolerance: float = knob(0.01, "largest allowed relative residual")
    # last: the field name shadows the knob() helper inside this class body
    knob: str = knob("mlp.hidden", "the one knob solved per variant (ablate.sizing.match_knobs)")


@dataclass(frozen=True, kw_only=True)
class LRSearchConfig:
    values: tuple[float, ...] = knob((), "candidate peak learning rates")
    seed: int = knob(0, "the one seed every candidate trains with")

    def __post_init__(self):
        if len(self.values) < 2 or any(v <= 0 for v in self.values) or len(set(self.values)) != len(self.values):
            raise ValueError(f"values = {list(self.values)}: give two or more distinct positive learning rates")


@dataclass(frozen=True, kw_only=True)
class SweepConfig:
    name: str = knob("", "study name (also the Optuna study name)")
    description: str = knob("", "one line for humans")
    scope: str = knob("", "one line printed under the table: what this study's scale can and cannot support",
                      identity=False)
    variants: tuple[str | VariantEntry, ...] = knob((), "variants to compare")
    tasks: tuple[str, ...] = knob((default_task(),), "tasks every variant runs (names in the task registry)")
    seeds: tuple[int, ...] = knob((0,), "seeds (init and batch order) every variant runs")
    sets: dict[str, Any] = field(default_factory=dict, metadata={"help": "model overrides for all variants"})
    grid: dict[str, tuple] = field(default_factory=dict, metadata={
        "help": "key -> values to cross (model keys, recipe.KEY, TASK.KEY)"})
    match: MatchConfig | None = knob(None, "match every variant to one parameter budget")
    recipe: RecipeConfig = nested(RecipeConfig, "the recipe shared by all runs")
    per_task: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "TASK -> {sets: {...}, recipe: {...}}: model and recipe values for that task's runs only"})
    evaluate: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "evaluations after training for every run: name -> its config section"})
    wandb: WandbConfig | None = knob(None, "log every run to W&B (group: the sweep; tags: the point)", identity=False)
    tensorboard: bool = knob(False, "log every run to TensorBoard too", identity=False)
    storage: str | None = knob(None, "Optuna storage URL (default sqlite:///RESULTS/study.db)")
    heartbeat_s: int = knob(20, "seconds between a running point's heartbeats")
    grace_s: int = knob(90, "seconds without a heartbeat after which a point's worker counts as dead and "
                        "the point is re-queued")
    results: str | None = knob(None, "results directory (default results/NAME)")
    objectives: tuple[ObjectiveConfig, ...] = knob((), "the study's objectives (default: the task's headline)")
    search: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "key -> range: a search study, where a sampler proposes each trial (sweep/search.py)"})
    sampler: SamplerConfig = nested(SamplerConfig, "the search's Optuna sampler")
    pruner: PrunerConfig = nested(PrunerConfig, "the search's Optuna pruner")
    n_trials: int = knob(0, "trials of a search study")
    lr_search: LRSearchConfig | None = knob(None, "pick each variant's LR on the selection split first")


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
    runs: dict[str, tuple[Point, RunConfig]]  # point id -> (point, run config), in grid order (a grid)
    search: Search | None = None  # a search study: its trials' runs come from ``trial_run``
    sections: dict[str, Any] = field(default_factory=dict)  # each task's section

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
        if self.search is not None:
            return [e.label or e.name for e in _entries(self.cfg)]
        return list(dict.fromkeys(p.variant for p, _ in self.runs.values()))

    def grid_params(self, point: Point) -> dict[str, tuple[Any, list]]:
        """A grid point as trial parameters: name -> (value, every value this sweep gives it), with
        list or mapping values as their JSON text (Optuna's choices are scalars)."""
        return {name: (value, self.param_choices[name]) for name, value in _point_params(point).items()}

    @functools.cached_property
    def param_choices(self) -> dict[str, list]:
        """Every value each trial parameter takes over this sweep's points: variant, task, seed,
        the grid knobs and any LR an lr_search sets."""
        choices: dict[str, list] = {}
        for point, _ in self.runs.values():
            for name, value in _point_params(point).items():
                if value not in choices.setdefault(name, []):
                    choices[name].append(value)
        return choices

    def lr_key(self, point: Point) -> str:
        """The group of runs that share one chosen LR: variant, task and grid knobs (not the seed)."""
        knobs = [(k, v) for k, v in point.knobs if k != "recipe.lr" and not k.endswith(".eval_split")]
        return json.dumps([point.variant, point.task, knobs], default=str)

    def trial_run(self, params: dict[str, Any]) -> tuple[Point, RunConfig]:
        """The run of a search trial with these values (variant, model, recipe and task keys)."""
        return _search_run(self.cfg, self.path, self.sections, params)


def _point_params(point: Point) -> dict[str, Any]:
    params = {"variant": point.variant, "task": point.task, "seed": point.seed}
    params.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in point.knobs})
    return params


def _entries(cfg: SweepConfig) -> list[VariantEntry]:
    entries = [VariantEntry(name=v) if isinstance(v, str) else v for v in cfg.variants]
    labels = [e.label or e.name for e in entries]
    if len(set(labels)) != len(labels):
        raise ConfigError("variants: two entries share a label; give each a distinct label")
    return entries


def _model_for(cfg: SweepConfig, entry: VariantEntry, knobs, task: str, task_sets: dict, where: str):
    model = load_variant(entry.name).model
    # each value named by the section it came from (sets.KEY: the file's or the variant entry's;
    # per_task.TASK.sets.KEY; grid.KEY), applied in that order: the more specific wins
    sourced = [*(("sets.", kv) for kv in cfg.sets.items()),
               *((f"per_task.{task}.sets.", kv) for kv in task_sets.items()),
               *(("sets.", kv) for kv in entry.sets.items()), *(("grid.", kv) for kv in knobs)]
    for source, (key, value) in sourced:
        model = override(model, key, value, where=f"{where}: variant {entry.name}", _prefix=source)
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


def load_sweep(path: str | Path, phase: str = "main", chosen: dict | None = None) -> Sweep:
    """The sweep of a file. With ``lr_search``: phase "lr" is its selection sweep (every candidate
    LR, one seed, the task's selection split; study NAME-lr, results in RESULTS/lr_search); phase
    "main" needs ``chosen`` (``choose_lrs``: lr_key -> {lr, metric, candidates}) and runs the seeds
    at each group's chosen LR."""
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
    _check_per_task(cfg, path)
    for key, values in cfg.grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{path}: key 'grid.{key}' = {values!r}; allowed: a non-empty list of values")
    if cfg.search:
        return Sweep(cfg, path, {}, _check_search(cfg, path, sections), sections)
    if cfg.n_trials or cfg.pruner.name != "none":
        raise ConfigError(f"{path}: keys 'n_trials' and 'pruner' belong to a search study (a 'search' section)")
    if cfg.lr_search is not None and phase == "lr":
        base = Path(cfg.results or f"results/{cfg.name}")
        cfg = dataclasses.replace(cfg, name=f"{cfg.name}-lr", results=str(base / "lr_search"))
    if cfg.lr_search is not None:
        fixed = [f"variant {e.label or e.name}'s recipe" for e in _entries(cfg) if "lr" in e.recipe]
        fixed += [f"per_task.{t}'s recipe" for t, v in cfg.per_task.items() if "lr" in v.get("recipe", {})]
        splits = [k for k in cfg.grid if k.endswith(".eval_split")]
        if splits:
            raise ConfigError(f"{path}: key 'grid.{splits[0]}': 'lr_search' sets the evaluation split itself "
                              "(selection, then test); leave it out of the grid")
        if "recipe.lr" in cfg.grid or fixed:
            raise ConfigError(f"{path}: 'lr_search' picks each variant's lr; do not also set it in "
                              + ", ".join((["'grid'"] if "recipe.lr" in cfg.grid else []) + fixed))
    grid_keys = list(cfg.grid)
    runs, models = {}, {}
    for entry in _entries(cfg):
        for values in itertools.product(*(cfg.grid[k] for k in grid_keys)):
            knobs = tuple(zip(grid_keys, values, strict=True))
            for task in cfg.tasks:
                for point, run in _task_runs(cfg, path, sections, entry, knobs, task, phase, chosen, models):
                    runs[point.id] = (point, run)
    sweep = Sweep(cfg, path, runs, sections=sections)
    first = next(iter(runs.values()))[1]
    resolve_objectives(cfg.objectives, metric_specs(first), str(path))  # names checked before training
    return sweep


def _check_per_task(cfg: SweepConfig, path: Path) -> None:
    """The shape of ``per_task``: the sweep's own tasks, each a mapping of 'sets' and 'recipe'
    mappings (their keys are checked when the runs are built)."""
    for task, values in cfg.per_task.items():
        if task not in cfg.tasks:
            raise ConfigError(f"{path}: key 'per_task.{task}': not one of this sweep's tasks; allowed: "
                              + ", ".join(cfg.tasks))
        if not isinstance(values, dict) or not set(values) <= {"sets", "recipe"}:
            raise ConfigError(f"{path}: key 'per_task.{task}' = {values!r}; allowed: a mapping with the keys "
                              "'sets' (model values) and 'recipe' (recipe values)")
        for name, inner in values.items():
            if not isinstance(inner, dict):
                raise ConfigError(f"{path}: key 'per_task.{task}.{name}' = {inner!r}; allowed: a mapping of keys "
                                  "to values")
        _check_recipe_values(values.get("recipe", {}), f"per_task.{task}.recipe", path)
    for entry in _entries(cfg):
        _check_recipe_values(entry.recipe, f"variant {entry.label or entry.name}'s recipe", path)


def _check_recipe_values(values: dict, where: str, path: Path) -> None:
    """The file's seeds set every run's seed and the file's recipe its devices: a task's or a
    variant's recipe setting them would make runs named s0, s1 train one seed, or a run span
    devices its workers were not given."""
    for key in ("seed", "devices"):
        if key in values:
            raise ConfigError(f"{path}: key '{key}' in {where}: the sweep sets it for every run; give it as "
                              + ("'seeds' at the top level" if key == "seed" else "'devices' in the file's 'recipe'"))


def _run(cfg: SweepConfig, path: Path, sections: dict, entry: VariantEntry, knobs: tuple, task: str, seed: int,
         recipe_values: dict | None = None, task_values: dict | None = None,
         models: dict | None = None) -> tuple[Point, RunConfig]:
    """One run of the sweep: the variant with the model knobs (parameters matched after them), the
    recipe and the task section with their values set. ``models`` caches the matched model per
    (variant, knobs) across the tasks and seeds of a grid. -> (its point, its config)."""
    where = str(path)
    recipe_values, task_values = recipe_values or {}, task_values or {}
    try:
        own = cfg.per_task.get(task, {})
        task_sets, task_recipe = own.get("sets", {}), own.get("recipe", {})
        # tasks without their own sets share the matched model
        key = (entry.label or entry.name, json.dumps(knobs, default=str), json.dumps(task_sets, sort_keys=True))
        model = models.get(key) if models is not None else None
        if model is None:
            model = _model_for(cfg, entry, knobs, task, task_sets, where)
            if models is not None:
                models[key] = model
        recipe = dataclasses.replace(cfg.recipe, seed=seed)
        if task_recipe or entry.recipe or recipe_values:  # the task's recipe values, the variant's, the point's
            recipe = replace_recipe(recipe, task_recipe, f"{where}: per_task.{task}'s recipe")
            recipe = replace_recipe(recipe, entry.recipe, f"{where}: variant {entry.label or entry.name}'s recipe")
            recipe = replace_recipe(recipe, recipe_values, where)
            recipe.check(where)
        data = sections.get(task)
        for name, value in task_values.items():
            data = replace_section(data if data is not None else TASKS.get(task).config(), name, value, where)
        # the point names every value that makes it: model knobs, then recipe and task values
        varied = knobs + tuple((f"recipe.{k}", v) for k, v in recipe_values.items()) + tuple(task_values.items())
        point = Point(entry.label or entry.name, task, seed, varied)
        run = RunConfig(variant=point.variant, model=model, task=task, recipe=recipe, data=data,
                        evaluate=cfg.evaluate, wandb=_wandb_for(cfg, point), tensorboard=cfg.tensorboard,
                        grid=dict(point.knobs))
    except (ConfigError, ValueError) as err:
        raise ConfigError(str(err) if str(err).startswith(where) else f"{where}: {err}") from None
    return point, run


def _search_run(cfg: SweepConfig, path: Path, sections: dict, params: dict) -> tuple[Point, RunConfig]:
    entries = {e.label or e.name: e for e in _entries(cfg)}
    model_values, recipe_values, task_values, variant = split_keys(params, list(TASKS.names()))
    entry = entries[variant] if variant is not None else next(iter(entries.values()))
    return _run(cfg, path, sections, entry, tuple(model_values.items()), cfg.tasks[0], cfg.seeds[0],
                recipe_values, task_values)


def _check_search(cfg: SweepConfig, path: Path, sections: dict) -> Search:
    """The file's search, resolved and tried: every variant at the low and at the high end of all
    ranges (each categorical choice once), so a bad key or an impossible size fails now."""
    from optuna.distributions import CategoricalDistribution

    where = str(path)
    if cfg.grid:
        raise ConfigError(f"{path}: a search study has no 'grid'; make each grid key a categorical "
                          "parameter of 'search' instead")
    if len(cfg.tasks) != 1 or len(cfg.seeds) != 1:
        raise ConfigError(f"{path}: a search trial is one run: give one task and one seed "
                          f"(got tasks {list(cfg.tasks)}, seeds {list(cfg.seeds)}); repeat the best "
                          "configuration over seeds with a grid file")
    if cfg.n_trials < 1:
        raise ConfigError(f"{path}: key 'n_trials' = {cfg.n_trials}; allowed: >= 1 (trials of the search)")
    space = parse_space(cfg.search, where)
    if "variant" in space:
        raise ConfigError(f"{path}: key 'search.variant': list the variants under 'variants' instead")
    labels = [e.label or e.name for e in _entries(cfg)]
    if len(labels) > 1:
        space = {"variant": CategoricalDistribution(labels), **space}
    corners = []
    for end in ("low", "high"):
        corners.append({k: (d.choices[0 if end == "low" else -1] if isinstance(d, CategoricalDistribution)
                            else getattr(d, end)) for k, d in space.items()})
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            corners += [{**corners[0], key: choice} for choice in dist.choices[1:-1]]
    runs = [_search_run(cfg, path, sections, params) for params in corners]
    objectives = resolve_objectives(cfg.objectives, metric_specs(runs[0][1]), where)
    if cfg.pruner.name != "none":
        if len(objectives) > 1:
            raise ConfigError(f"{path}: key 'pruner': Optuna prunes single-objective studies only; "
                              f"this one has {len(objectives)} objectives (use pruner: {{name: none}})")
        if not objectives[0].metric.startswith("val/"):
            raise ConfigError(f"{path}: key 'pruner': the objective {objectives[0].metric!r} is not a "
                              "validation metric, so no value exists at each evaluation to prune on")
    if cfg.sampler.name == "grid":
        size = len(grid_points(space, cfg.sampler.seed, where))
        if cfg.n_trials > size:
            raise ConfigError(f"{path}: key 'n_trials' = {cfg.n_trials}; the grid sampler's grid has {size} points")
    return Search(space, objectives, cfg.sampler, cfg.pruner, cfg.n_trials)


def _task_runs(cfg: SweepConfig, path: Path, sections: dict, entry: VariantEntry, knobs: tuple, task: str,
               phase: str, chosen: dict | None, models: dict) -> list[tuple[Point, RunConfig]]:
    """The runs of one variant, grid point and task: one per seed, or with ``lr_search`` one per
    candidate LR (phase "lr") or one per seed at the chosen LR (phase "main"). Grid knobs named
    recipe.KEY or TASK.KEY set the recipe or the task section; the others are model keys."""
    model_knobs, recipe_values, task_values, _ = split_keys(dict(knobs), list(TASKS.names()))
    other = [t for t in task_values if not t.startswith(f"{task}.")]
    if other:
        raise ConfigError(f"{path}: key 'grid.{other[0]}' crosses the {other[0].partition('.')[0]} section, so every "
                          f"run of the grid must be of that task; this sweep also has tasks '{task}' (give "
                          "'tasks' that one task, or a sweep file per task)")
    model_knobs = tuple(model_knobs.items())
    if cfg.lr_search is None:
        return [_run(cfg, path, sections, entry, model_knobs, task, seed, recipe_values, task_values, models=models)
                for seed in cfg.seeds]
    if phase == "lr":
        return [_run(cfg, path, sections, entry, model_knobs, task, cfg.lr_search.seed, {**recipe_values, "lr": lr},
                     {**task_values, f"{task}.eval_split": "selection"}, models=models)
                for lr in cfg.lr_search.values]
    if chosen is None:
        raise ValueError("an lr_search sweep's main phase needs the chosen LRs (ablate.sweep.launch runs the "
                         "selection first)")
    # the group's key as Sweep.lr_key names it: the point's knobs in point order, less lr and eval_split
    group = [*model_knobs, *((f"recipe.{k}", v) for k, v in recipe_values.items()),
             *((k, v) for k, v in task_values.items() if not k.endswith(".eval_split"))]
    key = json.dumps([entry.label or entry.name, task, list(map(list, group))], default=str)
    choice = chosen[key]
    runs = []
    for seed in cfg.seeds:
        point, run = _run(cfg, path, sections, entry, model_knobs, task, seed, {**recipe_values, "lr": choice["lr"]},
                          task_values, models=models)
        runs.append((point, dataclasses.replace(run, lr_selection=choice)))
    return runs
