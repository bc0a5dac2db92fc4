"""Search studies: a sweep file's ``search:`` section, where a sampler proposes each trial's values.

    search:                                   # key -> its range; model, recipe.* or TASK.* keys
      n_meta: {type: int, low: 0, high: 128, step: 16}
      attention.n_heads: {type: categorical, choices: [2, 4, 8]}
      recipe.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
    objectives:                               # one or more; default: the task's headline metric
      - {metric: val/acc}                     # a run-record metric: direction from its spec
      - {metric: cache_mb, direction: minimize}   # or a run property (RUN_VALUES)
    sampler: {name: nsga2, seed: 0}           # tpe | nsga2 | gp | random | qmc | grid
    pruner: {name: median}                    # median | hyperband | none (one objective only)
    n_trials: 12

A trial is one run: the values are applied to the variant (before parameter matching, so the
search never buys quality with size), the recipe or the task section; more than one variant makes
the variant a categorical parameter too. The study holds ``n_trials`` slots, enqueued once as
WAITING trials; a worker claims one exactly once (``study.claim``), and the sampler proposes its
values when the worker opens it as an ``optuna.Trial``. A killed worker's trial is re-queued by
the heartbeat callback with the same parameters, so its run resumes its checkpoint; a trial whose
values repeat a finished one's reuses that run (same configuration, same run directory).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ablate.config import ConfigError, from_dict, knob, override

Direction = Literal["maximize", "minimize"]


@dataclass(frozen=True, kw_only=True)
class ParamSpec:
    type: Literal["int", "float", "categorical"] = knob("float", "int | float | categorical")
    low: float | None = knob(None, "lowest value (int, float)")
    high: float | None = knob(None, "highest value (int, float)")
    log: bool = knob(False, "sample on a log scale (int, float)")
    step: float | None = knob(None, "grid step (int: default 1; float: none)")
    choices: tuple[Any, ...] = knob((), "the values (categorical): numbers, strings, booleans or null")

    def distribution(self, key: str, where: str) -> BaseDistribution:
        at = f"{where}: key 'search.{key}'"
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError(f"{at}: a categorical parameter needs 'choices' (a non-empty list)")
            bad = [c for c in self.choices if not isinstance(c, (int, float, str, bool, type(None)))]
            if bad:
                raise ConfigError(f"{at}: choice {bad[0]!r}; allowed: numbers, strings, booleans, null")
            return CategoricalDistribution(list(self.choices))
        if self.low is None or self.high is None or self.low > self.high:
            raise ConfigError(f"{at}: {self.type} needs 'low' <= 'high'; got low={self.low}, high={self.high}")
        if self.choices:
            raise ConfigError(f"{at}: 'choices' is for type categorical; this one is {self.type}")
        try:
            if self.type == "int":
                if self.low != int(self.low) or self.high != int(self.high):
                    raise ValueError("low and high of an int parameter must be whole numbers")
                return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        except ValueError as err:  # Optuna's own checks (log with low <= 0, log with a step, ...)
            raise ConfigError(f"{at}: {err}") from None


# Objectives that are properties of the run rather than metrics it logs: name -> (value, direction)
RUN_VALUES: dict[str, tuple[Any, Direction]] = {
    "cache_mb": (lambda rec: rec["cache_bytes"]["fp16"]["total"] / 1e6, "minimize"),
    "params": (lambda rec: rec["params"]["total"], "minimize"),
    "params_non_embedding": (lambda rec: rec["params"]["non_embedding"], "minimize"),
    "tokens_per_s": (lambda rec: rec["tokens_per_s"], "maximize"),
}


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    metric: str = knob("", "a run-record metric (val/acc, eval/lm_eval/recall_avg) or one of "
                       + ", ".join(RUN_VALUES))
    direction: Direction | None = knob(None, "maximize | minimize (default: the metric's own direction)")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Direction

    def value(self, record: dict) -> float:
        if self.metric in RUN_VALUES:
            value = RUN_VALUES[self.metric][0](record)
        else:
            value = record.get("metrics", {}).get(self.metric)
        if value is None or not math.isfinite(float(value)):
            raise RuntimeError(f"objective '{self.metric}': the run recorded {value!r}")
        return float(value)


def resolve_objectives(given: tuple[ObjectiveConfig, ...], specs: list[dict], where: str) -> list[Objective]:
    """The study's objectives with their directions; ``specs``: the runs' metric specs (headline
    first). None given: the headline metric alone."""
    if not given:
        return [Objective(specs[0]["name"], specs[0]["direction"])]
    directions = {m["name"]: m["direction"] for m in specs} | {k: d for k, (_, d) in RUN_VALUES.items()}
    out = []
    for i, o in enumerate(given):
        if o.metric not in directions:
            raise ConfigError(f"{where}: key 'objectives[{i}].metric' = {o.metric!r}; allowed: "
                              + ", ".join(directions))
        out.append(Objective(o.metric, o.direction or directions[o.metric]))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError(f"{where}: key 'objectives' names a metric twice")
    return out


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    name: Literal["tpe", "nsga2", "gp", "random", "qmc", "grid"] = knob("tpe", "Optuna sampler")
    seed: int = knob(0, "sampler seed: with one worker, the same seed gives the same trials")
    n_startup_trials: int = knob(4, "tpe / gp: random trials before the model takes over")
    population_size: int = knob(8, "nsga2: trials per generation")

    def build(self, trial_number: int, space: dict[str, BaseDistribution]) -> optuna.samplers.BaseSampler:
        """The sampler for one trial. Samplers that read everything they need from the study's
        trials (tpe, nsga2, gp, random) are seeded per trial from (seed, trial number): each
        trial's proposal is reproducible, and workers on other machines never propose the same
        values from the same random state. qmc and grid walk one sequence and keep the seed."""
        seed = self.seed * 1_000_003 + trial_number
        if self.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials,
                                              multivariate=True, constant_liar=True)
        if self.name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=self.population_size)
        if self.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup_trials)
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if self.name == "qmc":
            return optuna.samplers.QMCSampler(seed=self.seed, scramble=True)
        # grid: every slot was enqueued with its grid point (``grid_points``); nothing left to propose
        return optuna.samplers.RandomSampler(seed=seed)


def grid_points(space: dict[str, BaseDistribution], seed: int, where: str) -> list[dict]:
    """The grid sampler's trials: every combination of the parameters' values, in an order shuffled
    by the seed (so a study cut short by n_trials still spreads over the grid). They are enqueued
    as the slots' parameters, so each is run exactly once however many workers share the study
    (Optuna's GridSampler picks points at ask time, which refuses enqueued trials)."""
    import itertools
    import random

    values = grid_values(space, where)
    points = [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]
    random.Random(seed).shuffle(points)
    return points


def grid_values(space: dict[str, BaseDistribution], where: str) -> dict[str, list]:
    """Every value of each parameter, for the grid sampler: choices, or int/float ranges with a step."""
    out = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = list(dist.choices)
        elif dist.step is not None and not getattr(dist, "log", False):
            n = int(round((dist.high - dist.low) / dist.step))
            out[key] = [dist.low + i * dist.step for i in range(n + 1)]
        else:
            raise ConfigError(f"{where}: key 'search.{key}': the grid sampler needs categorical choices or "
                              "a stepped, linear int/float range")
    return out


@dataclass(frozen=True, kw_only=True)
class PrunerConfig:
    name: Literal["none", "median", "hyperband"] = knob("none", "Optuna pruner, fed at every evaluation")
    n_startup_trials: int = knob(2, "median: trials that finish before any is pruned")
    n_warmup_steps: int = knob(0, "median: steps before a trial can be pruned")
    reduction_factor: int = knob(3, "hyperband: keep 1/factor of the trials at each rung")

    def build(self) -> optuna.pruners.BasePruner:
        if self.name == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.n_startup_trials,
                                               n_warmup_steps=self.n_warmup_steps)
        if self.name == "hyperband":
            # resources are training steps; "auto": the first trial's last reported step
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto",
                                                  reduction_factor=self.reduction_factor)
        return optuna.pruners.NopPruner()


@dataclass
class Search:
    """A sweep file's search, resolved: the distributions, objectives, sampler and pruner."""

    space: dict[str, BaseDistribution]
    objectives: list[Objective]
    sampler: SamplerConfig
    pruner: PrunerConfig
    n_trials: int

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def parse_space(raw: dict, where: str) -> dict[str, BaseDistribution]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: key 'search' must map keys to ranges, e.g. "
                          "{n_meta: {type: int, low: 0, high: 64}}")
    space = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: key 'search.{key}' must be a mapping (type, low, high, ...)")
        space[key] = from_dict(ParamSpec, spec, where, prefix=f"search.{key}.").distribution(key, where)
    return space


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The trial's value of every parameter: proposed by the sampler, or the ones it already has
    (a re-queued trial keeps its parameters)."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return values


def pareto_front(study: optuna.Study, objectives: list[Objective]) -> list[dict]:
    """The study's best trials (its Pareto front with several objectives): number, values, params
    and run directory, one row each."""
    rows = []
    for t in sorted(study.best_trials, key=lambda t: t.number):
        row = {"trial": t.number, **{o.metric: v for o, v in zip(objectives, t.values, strict=True)}}
        row.update({f"param/{k}": v for k, v in t.params.items()})
        row["run_dir"] = t.user_attrs.get("run_dir")
        rows.append(row)
    return rows


def write_study_files(study: optuna.Study, search: Search, results: Path) -> dict[str, Path]:
    """RESULTS/study/: trials.csv (Optuna's trials_dataframe), pareto.csv (the best trial, or the
    Pareto front with several objectives) and the study's figures (``analysis.study.study_plots``)."""
    import pandas as pd

    from ablate.analysis.study import study_plots

    out = results / "study"
    out.mkdir(parents=True, exist_ok=True)
    paths = {"trials": out / "trials.csv", "pareto": out / "pareto.csv"}
    study.trials_dataframe().to_csv(paths["trials"], index=False)
    done = any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False))
    pd.DataFrame(pareto_front(study, search.objectives) if done else []).to_csv(paths["pareto"], index=False)
    figures, _ = study_plots(study, out)
    return {**paths, **{f"plot_{name}": path for name, path in figures.items()}}


def params_text(params: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v) if not isinstance(v, float) else f'{v:.4g}'}" for k, v in params.items())


def split_keys(params: dict[str, Any], tasks: list[str]) -> tuple[dict, dict, dict, Any]:
    """A trial's values by where they go: model keys, recipe.KEY, TASK.KEY; and the variant."""
    model, recipe, task, variant = {}, {}, {}, None
    for key, value in params.items():
        head, _, rest = key.partition(".")
        if key == "variant":
            variant = value
        elif head == "recipe":
            recipe[rest] = value
        elif head in tasks:
            task[key] = value
        else:
            model[key] = value
    return model, recipe, task, variant


def replace_recipe(recipe, values: dict, where: str):
    for key, value in values.items():
        recipe = override(recipe, key, value, where=where, _prefix="recipe.")
    return recipe


def replace_section(section, key: str, value, where: str):
    task, _, rest = key.partition(".")
    if section is None or not dataclasses.is_dataclass(section):
        raise ConfigError(f"{where}: key 'search.{key}': task '{task}' has no section to set '{rest}' in")
    return override(section, rest, value, where=where, _prefix=f"{task}.")
