"""A run's configuration: the variant's model, the task and its section, the recipe, the
evaluations and the loggers; and building one from a variant name with ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import ablate.evaluate  # noqa: F401  (fills the evaluation registry)
from ablate.config import ConfigError, ModelConfig, from_dict, knob, nested, override, parse_assignment
from ablate.registry import EVALUATIONS, TASKS
from ablate.tasks import default_task
from ablate.train.recipe import RecipeConfig
from ablate.train.tracking import WandbConfig
from ablate.variants import check_shapes, load_variant


def section(cls: type, value: Any, key: str, where: str) -> Any:
    """A registered task's or evaluation's config section: an instance of ``cls`` as it is, a
    mapping converted strictly (errors name ``key``), None for the defaults."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return from_dict(cls, value, where, prefix=f"{key}.")
    raise ConfigError(f"{where}: key '{key}' must be a mapping of {cls.__name__} fields, got {type(value).__name__}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    variant: str = knob("llama", "variant name (variants/NAME.yaml)")
    model: ModelConfig = nested(ModelConfig, "the variant's model config after overrides")
    task: str = knob(default_task(), "task to train and evaluate on (a name in the task registry)")
    recipe: RecipeConfig = nested(RecipeConfig, "the training recipe")
    data: Any = knob(None, "the task's config section (None: the task's defaults)")
    evaluate: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "evaluations after training: name -> its config section (see ablate.evaluate)"})
    wandb: WandbConfig | None = knob(None, "also log to Weights & Biases (null: off)", identity=False)
    tensorboard: bool = knob(False, "also log to TensorBoard (RUN_DIR/tensorboard; needs tensorboard)",
                             identity=False)
    # a sweep point's grid assignment (model key -> value), recorded so that result tables can key
    # rows by the knobs without the sweep file; the values are in `model` already, so not identity
    grid: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "the sweep grid's knobs of this run: model key -> value (set by the sweep)", "identity": False})
    # a sweep's lr_search: the candidates' selection-split values and the chosen LR (in `recipe`)
    lr_selection: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "how the sweep chose recipe.lr (lr_search): metric, candidates -> value, chosen", "identity": False})

    def __post_init__(self):  # resolve the task's and the evaluations' sections through the registries
        task = TASKS.get(self.task)
        object.__setattr__(self, "data", section(task.config, self.data, self.task, "run config"))
        evaluate = {name: section(EVALUATIONS.get(name).config, value, f"evaluate.{name}", "run config")
                    for name, value in self.evaluate.items()}
        object.__setattr__(self, "evaluate", evaluate)
        if self.wandb is True or isinstance(self.wandb, dict):  # `wandb: true` or a mapping: the section
            object.__setattr__(self, "wandb", section(WandbConfig, None if self.wandb is True else self.wandb,
                                                      "wandb", "run config"))


def run_config(variant: str, task: str | None = None, sets: list[str] = (), where: str = "--set") -> RunConfig:
    """RunConfig for VARIANT on TASK (default: the default task) with ``key=value`` overrides:
    model keys (``size.d_model=64``), ``recipe.KEY``, the task's own section (``TASK.KEY``),
    ``evaluate.NAME.KEY`` (adds evaluation NAME), ``wandb.KEY`` / ``wandb=true`` or ``tensorboard``."""
    task = task or default_task()
    cfg = RunConfig(variant=variant, model=load_variant(variant).model, task=task)
    model_keys = {f.name for f in dataclasses.fields(ModelConfig)}
    for text in sets:
        key, value = parse_assignment(text, where)
        head, _, rest = key.partition(".")
        if head in model_keys:
            cfg = dataclasses.replace(cfg, model=override(cfg.model, key, value, where))
        elif head == task and rest:
            cfg = dataclasses.replace(cfg, data=override(cfg.data, rest, value, where, _prefix=f"{task}."))
        elif head in TASKS:
            raise ConfigError(f"{where}: key '{key}' is for task '{head}'; this run's task is '{task}'")
        elif head == "evaluate" and rest:
            cfg = _override_evaluation(cfg, rest, value, where)
        elif head == "wandb" and rest:  # wandb.mode=online: the section, created on first use
            cfg = dataclasses.replace(cfg, wandb=override(cfg.wandb or WandbConfig(), rest, value, where, "wandb."))
        elif head == "wandb" and isinstance(value, bool):  # wandb=true / false
            cfg = dataclasses.replace(cfg, wandb=(cfg.wandb or WandbConfig()) if value else None)
        elif head in ("recipe", "wandb", "tensorboard"):
            cfg = override(cfg, key, value, where)
        else:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: a model key ({', '.join(sorted(model_keys))}; "
                              f"`ablate keys` lists them), recipe.KEY, {task}.KEY, evaluate.NAME.KEY, wandb.KEY, "
                              "tensorboard")
    cfg.recipe.check(where)
    TASKS.get(task).check(cfg.data, where)
    check_model(cfg.model, where)
    return cfg


def check_model(model: ModelConfig, where: str) -> None:
    """The overridden model's layer plan and shapes, checked before anything runs."""
    from ablate.plan import PlanError, expand

    try:
        expand(model)
    except PlanError as err:
        raise ConfigError(f"{where}: {err}") from None
    check_shapes(model, where)


def _override_evaluation(cfg: RunConfig, key: str, value: Any, where: str) -> RunConfig:
    name, _, rest = key.partition(".")
    evaluation = EVALUATIONS.get(name)
    current = cfg.evaluate.get(name) or evaluation.config()
    new = override(current, rest, value, where, _prefix=f"evaluate.{name}.") if rest else value
    return dataclasses.replace(cfg, evaluate={**cfg.evaluate, name: new})
