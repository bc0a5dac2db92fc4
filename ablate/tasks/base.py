"""The task protocol: what a task tells the rest of ablate.

A task is one file that defines a config section and a LightningDataModule and registers a
``Task`` subclass with ``@TASKS.register("NAME")``. Everything else reads the task from the
registry by name:

- ``config``: the frozen dataclass of its section: ``NAME:`` in a sweep file, ``--set NAME.key=``
  on the command line, ``config.data`` in a run record.
- ``build_data``: the datamodule a run trains and validates on (``TaskData`` below).
- ``metrics``: the summary metrics its runs report, each with a direction; the first one is the
  headline (the Optuna objective of a sweep, the first metric column of a table, the y axis of
  the headline-vs-cache plot). Runs record them, so analysis needs no task code.

Validation is the recipe's (``train.module.LitLM``): per validation part ("val_names") it logs
val/<part>/acc and val/<part>/loss over the labelled positions (labels != -100), and val/acc
(mean over parts), val/loss and val/ppl (token-weighted); a task chooses which of them matter
through ``metrics`` and what "labelled" means through its labels.
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal, Protocol

import lightning as L


@dataclass(frozen=True)
class Metric:
    name: str  # a key of the run record's metrics, e.g. "val/acc"
    direction: Literal["maximize", "minimize"]
    help: str = ""
    table: bool = True  # a column of the printed table (every metric is in table.csv and runs.csv)

    def as_dict(self) -> dict:
        return asdict(self)


class TaskData(Protocol):
    """The datamodule a task builds (a ``LightningDataModule``) and three facts the run needs."""

    vocab_size: int  # the model's vocabulary (tied embedding and head)
    seq_len: int  # tokens of the longest training sequence (cache bytes are reported at this length)
    val_names: list[str]  # one name per validation dataloader, in order


class Task(ABC):
    name: ClassVar[str]  # set by TASKS.register
    config: ClassVar[type]  # the section's frozen dataclass (every field a ``knob``)
    metrics: ClassVar[tuple[Metric, ...]]  # headline first
    default: ClassVar[bool] = False  # the task a sweep or `ablate train` uses when none is named

    @classmethod
    @abstractmethod
    def build_data(cls, cfg, batch_size: int, steps_per_epoch: int, seed: int) -> L.LightningDataModule:
        """The datamodule (also a ``TaskData``) for ``cfg``, an instance of ``config``. Batches are
        (inputs, labels) int64 (B, T) with -100 where no loss is taken; the training order must be
        a function of (seed, step) (``tasks.batches.StepBatchSampler``) so resume is exact."""

    @classmethod
    def check(cls, cfg, where: str) -> None:
        """What the section's fields say together (checked once all overrides are in); a
        ConfigError naming ``where`` and the key. Single-field bounds belong in the config's
        ``__post_init__``."""
        return None  # nothing to check by default

    @classmethod
    def headline(cls) -> Metric:
        return cls.metrics[0]

    @classmethod
    def objective(cls, metrics: dict[str, float]) -> float:
        """The headline as a value to maximise (negated when the headline is minimised)."""
        m = cls.headline()
        value = metrics[m.name]
        return value if m.direction == "maximize" else -value



def save_atomically(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: workers sharing a cache never read a half-written
    file. The temporary name is unique per process and call (seeded RNGs are not: two workers of a
    study draw the same numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write(str(tmp))
    os.replace(tmp, path)
