"""The evaluation protocol: scoring a trained model after its run's training ends.

An evaluation is one file that registers an ``Evaluation`` subclass with
``@EVALUATIONS.register("NAME")``. A run (or a sweep, for all its runs) asks for it with a section
``evaluate: {NAME: {...its config...}}``; when training ends, the run calls ``run`` on the trained
model and records each returned value as the metric ``eval/NAME/<key>`` in ``run.json`` (the
directions come from ``metrics``, recorded with them), where tables, plots and Optuna objectives
read it like any other metric. A failing evaluation fails the run with its reason; the checkpoint
stays, so the next start resumes at the end of training and evaluates again.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from torch import nn

from ablate.tasks.base import Metric, TaskData


class Evaluation(ABC):
    name: ClassVar[str]  # set by EVALUATIONS.register
    config: ClassVar[type]  # the frozen dataclass of its section under `evaluate:`
    metrics: ClassVar[tuple[Metric, ...]]  # names relative to eval/NAME/ (or metrics_for, if they depend on cfg)

    @classmethod
    def metrics_for(cls, cfg) -> list[Metric]:
        """The metrics ``run`` returns for this config; the fixed ``metrics`` unless overridden."""
        return list(cls.metrics)

    @classmethod
    @abstractmethod
    def run(cls, cfg, model: nn.Module, data: TaskData, run_dir: Path) -> dict[str, float]:
        """Score ``model`` (an ``ablate.model.LM`` in eval mode, on the device training used) with
        ``cfg`` (an instance of ``config``); ``data`` is the run's task data (its tokenizer, if the
        task has one). Returns one value per name in ``metrics_for(cfg)``."""

    @classmethod
    def check(cls, cfg) -> None:
        """Called before training: raise a ConfigError for what would make ``run`` fail after it
        (a missing package or data directory), so no training is spent on a run that cannot end."""
        return None

    @classmethod
    def versions(cls) -> dict[str, str]:
        """Versions of the packages the evaluation scores with, recorded in the run's ``versions``."""
        return {}

    @classmethod
    def recorded(cls, cfg) -> list[Metric]:
        """The metrics as the run records them (prefixed eval/NAME/)."""
        return [dataclasses.replace(m, name=f"eval/{cls.name}/{m.name}") for m in cls.metrics_for(cfg)]
