"""A run: one variant trained on one task under the recipe, in its own directory.

    RUN_DIR/run.json            resolved config, layer plan, parameters, cache bytes, backends,
                                precision, seed, versions, git revision, status, final metrics,
                                measured training tokens/s
    RUN_DIR/logs/attemptN/      Lightning CSV metrics of each (re)start
    RUN_DIR/checkpoints/last.ckpt

Starting the same run again resumes from last.ckpt (checkpoints are written at every evaluation,
which is also where the deterministic batch order restarts cleanly); a finished run is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

import ablate
import ablate.evaluate  # noqa: F401  (fills the evaluation registry)
from ablate.config import ConfigError, ModelConfig, from_dict, knob, nested, override, parse_assignment, to_dict
from ablate.ops.backends import resolve
from ablate.plan import expand
from ablate.registry import EVALUATIONS, TASKS
from ablate.sizing import cache_bytes, count_params
from ablate.tasks import default_task
from ablate.train.module import LitLM
from ablate.train.recipe import RecipeConfig
from ablate.variants import load_variant


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
    wandb: bool = knob(False, "also log to Weights & Biases (offline without network)")

    def __post_init__(self):  # resolve the task's and the evaluations' sections through the registries
        task = TASKS.get(self.task)
        object.__setattr__(self, "data", section(task.config, self.data, self.task, "run config"))
        evaluate = {name: section(EVALUATIONS.get(name).config, value, f"evaluate.{name}", "run config")
                    for name, value in self.evaluate.items()}
        object.__setattr__(self, "evaluate", evaluate)


class Throughput(L.Callback):
    """Training tokens per second, timed from the end of the first `skip` steps (compilation,
    warm-up) to the end of training, with validation left out. The GPU is synchronised only
    where the clock starts, pauses and stops, not at every step, so timing does not slow the
    training it measures."""

    def __init__(self, skip: int = 3):
        self.skip, self.seen, self.tokens, self.seconds = skip, 0, 0, 0.0
        self.started: float | None = None

    def _start(self, module) -> None:
        self._sync(module)
        self.started = time.perf_counter()

    def _stop(self, module) -> None:
        if self.started is not None:
            self._sync(module)
            self.seconds += time.perf_counter() - self.started
            self.started = None

    @staticmethod
    def _sync(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.seen += 1
        if self.seen == self.skip:
            self._start(module)
        elif self.seen > self.skip:
            self.tokens += batch[0].numel() * trainer.world_size

    def on_validation_start(self, trainer, module):
        self._stop(module)

    def on_validation_end(self, trainer, module):
        if self.seen >= self.skip and not trainer.sanity_checking:
            self._start(module)

    def on_train_end(self, trainer, module):
        self._stop(module)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.tokens and self.seconds else None


def git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(ablate.__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def build_data(cfg: RunConfig, steps_per_epoch: int):
    """-> (datamodule, vocab size the model must have, tokens per training sequence)."""
    data = TASKS.get(cfg.task).build_data(cfg.data, cfg.recipe.batch_size, steps_per_epoch, cfg.recipe.seed)
    return data, data.vocab_size, data.seq_len


def metric_specs(cfg: RunConfig) -> list[dict]:
    """The summary metrics this run reports, each with its direction, headline first; recorded so
    that analysis and studies read them without task or evaluation code."""
    specs = list(TASKS.get(cfg.task).metrics)
    for name in cfg.evaluate:
        specs += EVALUATIONS.get(name).recorded()
    return [m.as_dict() for m in specs]


def evaluate(cfg: RunConfig, model: torch.nn.Module, data, run_dir: Path) -> dict[str, float]:
    """Run the configured evaluations on the trained model; -> eval/NAME/key metrics."""
    metrics = {}
    model.eval()
    for name, section_cfg in cfg.evaluate.items():
        results = EVALUATIONS.get(name).run(section_cfg, model, data, run_dir)
        expected = {m.name for m in EVALUATIONS.get(name).metrics}
        if set(results) != expected:
            raise RuntimeError(f"evaluation '{name}' returned {sorted(results)}; it declares {sorted(expected)}")
        metrics.update({f"eval/{name}/{k}": float(v) for k, v in results.items()})
    return metrics


def resolve_steps(cfg: RunConfig, seq_len: int) -> int:
    r = cfg.recipe
    steps = r.max_steps if r.token_budget is None else r.token_budget // (r.batch_size * seq_len)
    if steps < r.eval_every or steps % r.eval_every:
        raise ValueError(f"recipe: {steps} training steps must be a positive multiple of "
                         f"recipe.eval_every = {r.eval_every}")
    return steps


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_record(run_dir: Path, record: dict) -> None:
    path = Path(run_dir) / "run.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def _loggers(cfg: RunConfig, run_dir: Path, attempt: int) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version=f"attempt{attempt}")]
    if cfg.wandb:
        from ablate.train.tracking import wandb_logger

        loggers.append(wandb_logger(cfg, run_dir))
    return loggers


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = False) -> dict:
    """Train (or resume, or skip if finished) one run; returns its record."""
    run_dir = Path(run_dir)
    previous = read_record(run_dir)
    if previous and previous.get("status") == "finished":
        return previous
    run_dir.mkdir(parents=True, exist_ok=True)
    steps_per_epoch = cfg.recipe.eval_every
    data, vocab, seq_len = build_data(cfg, steps_per_epoch)
    max_steps = resolve_steps(cfg, seq_len)
    model_cfg = dataclasses.replace(cfg.model, size=dataclasses.replace(cfg.model.size, vocab_size=vocab))
    accelerator = cfg.recipe.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.recipe.precision
    if precision == "auto":
        precision = "bf16-mixed" if on_gpu else "32-true"
    backends = resolve(cfg.recipe.backend, "cuda" if on_gpu else "cpu", cfg.recipe.compile)
    attempt = (previous or {}).get("attempts", 0) + 1
    record = {
        "name": run_dir.name, "variant": cfg.variant, "task": cfg.task, "seed": cfg.recipe.seed,
        "status": "running", "attempts": attempt,
        "config": to_dict(dataclasses.replace(cfg, model=model_cfg)),
        "plan": [spec.describe().strip() for spec in expand(model_cfg)],
        "params": count_params(model_cfg).as_dict(),
        "cache_bytes": {dtype: cache_bytes(model_cfg, seq_len, dtype) for dtype in ("fp16", "fp32")},
        "cache_seq_len": seq_len, "max_steps": max_steps, "precision": precision, "val_parts": data.val_names,
        "metric_specs": metric_specs(cfg),
        "backends": backends.as_dict(),
        "versions": {"ablate": ablate.__version__, "torch": torch.__version__, "lightning": L.__version__,
                     "python": platform.python_version()},
        "git": git_revision(), "host": platform.node(),
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
    }
    write_record(run_dir, record)
    try:
        L.seed_everything(cfg.recipe.seed, workers=True, verbose=False)
        module = LitLM(model_cfg, cfg.recipe, max_steps, data.val_names, backends)
        throughput = Throughput()
        ckpt_dir = run_dir / "checkpoints"
        trainer = L.Trainer(
            max_steps=max_steps, max_epochs=max_steps // steps_per_epoch,
            accelerator=cfg.recipe.accelerator, devices=cfg.recipe.devices, strategy=cfg.recipe.strategy,
            precision=precision, gradient_clip_val=cfg.recipe.grad_clip or None,
            logger=_loggers(cfg, run_dir, attempt), log_every_n_steps=min(10, steps_per_epoch),
            callbacks=[throughput, L.pytorch.callbacks.ModelCheckpoint(
                dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_epochs=1)],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            deterministic=not on_gpu,
        )
        last = ckpt_dir / "last.ckpt"
        started = time.time()
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
        if trainer.global_step < max_steps:
            raise RuntimeError(f"training stopped at step {trainer.global_step} of {max_steps}")
        if not any(k.startswith("val/") for k in trainer.callback_metrics):  # resumed at the very end
            trainer.validate(module, datamodule=data, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        metrics.update(evaluate(cfg, module.model, data, run_dir))
    except BaseException as err:
        record.update(status="failed", reason=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=8))
        write_record(run_dir, record)
        raise
    record.update(status="finished", metrics=metrics, tokens_per_s=throughput.tokens_per_s,
                  train_seconds=time.time() - started, steps=trainer.global_step)
    write_record(run_dir, record)
    return record


def run_config(variant: str, task: str | None = None, sets: list[str] = (), where: str = "--set") -> RunConfig:
    """RunConfig for VARIANT on TASK (default: the default task) with ``key=value`` overrides:
    model keys (``size.d_model=64``), ``recipe.KEY``, the task's own section (``TASK.KEY``),
    ``evaluate.NAME.KEY`` (adds evaluation NAME), or ``wandb``."""
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
        elif head in ("recipe", "wandb"):
            cfg = override(cfg, key, value, where)
        else:
            raise ConfigError(f"{where}: unknown key '{key}'; allowed: a model key ({', '.join(sorted(model_keys))}"
                              f"; `ablate keys` lists them), recipe.KEY, {task}.KEY, evaluate.NAME.KEY, wandb")
    return cfg


def _override_evaluation(cfg: RunConfig, key: str, value: Any, where: str) -> RunConfig:
    name, _, rest = key.partition(".")
    evaluation = EVALUATIONS.get(name)
    current = cfg.evaluate.get(name) or evaluation.config()
    new = override(current, rest, value, where, _prefix=f"evaluate.{name}.") if rest else value
    return dataclasses.replace(cfg, evaluate={**cfg.evaluate, name: new})
