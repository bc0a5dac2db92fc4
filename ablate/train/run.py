"""A run: one variant trained on one task under the recipe, in its own directory.

    RUN_DIR/run.json            resolved config, layer plan, parameters, cache bytes, backends,
                                precision, seed, versions, git revision, status, final metrics,
                                measured training tokens/s
    RUN_DIR/logs/attemptN/      Lightning CSV metrics of each (re)start
    RUN_DIR/checkpoints/last.ckpt

    RUN_DIR/variant.yaml        the resolved model (loadable by ablate.variants.load_variant)
    RUN_DIR/tokenizer.json      for tasks with a tokenizer

Starting the same run again resumes from last.ckpt (written at every evaluation, which is also
where the deterministic batch order restarts cleanly); a finished run is not redone; a run of
another configuration in the directory is refused (``train.identity``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import time
import traceback
import warnings
from pathlib import Path

import lightning as L
import torch

import ablate
import ablate.evaluate  # noqa: F401  (fills the evaluation registry)
from ablate.config import ConfigError, ModelConfig, to_dict
from ablate.model import LM
from ablate.ops.backends import BackendError, resolve
from ablate.plan import expand
from ablate.registry import EVALUATIONS, TASKS
from ablate.sizing import cache_bytes, count_params
from ablate.train.allocator import keep_freed_memory
from ablate.train.callbacks import EvalCheckpoint, StepProgressBar, StopCheck, Throughput
from ablate.train.config import RunConfig
from ablate.train.identity import check_identity, identity
from ablate.train.module import LitLM, fsdp2
from ablate.train.tracking import finish_tracking, tensorboard_logger, wandb_logger


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
    for name, section in cfg.evaluate.items():
        specs += EVALUATIONS.get(name).recorded(section)
    return [m.as_dict() for m in specs]


def evaluate(cfg: RunConfig, model: torch.nn.Module, data, run_dir: Path) -> dict[str, float]:
    """Run the configured evaluations on the trained model; -> eval/NAME/key metrics."""
    metrics = {}
    model.eval()
    for name, section_cfg in cfg.evaluate.items():
        results = EVALUATIONS.get(name).run(section_cfg, model, data, run_dir)
        expected = {m.name for m in EVALUATIONS.get(name).metrics_for(section_cfg)}
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


def write_self_contained(run_dir: Path, cfg: RunConfig, model_cfg: ModelConfig, data) -> None:
    """What a run needs besides run.json to be used without the code's caches or variant files:
    the resolved variant (``variant.yaml``, loadable by ``load_variant``) and, for a task with a
    tokenizer, ``tokenizer.json``."""
    import yaml

    if not rank_zero():
        return
    variant = {"name": cfg.variant, "description": f"resolved model of run {run_dir.name}", **to_dict(model_cfg)}
    (run_dir / "variant.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
    tokenizer = getattr(data, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save(str(run_dir / "tokenizer.json"))


def check_writable(run_dir: Path) -> None:
    """A run directory that cannot be written is a clear error before any data or training."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run directory {run_dir} cannot be written: {err.strerror or err}") from None


def check_checkpoint(path: Path) -> None:
    """A checkpoint that cannot be read (corrupted, or not a checkpoint) is a clear error naming it,
    not a traceback from inside Lightning; it is never silently ignored (that would restart at 0)."""
    if not path.exists():
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{path}: the run's checkpoint cannot be read ({type(err).__name__}: {err}); "
                           "move it away to restart the run from step 0") from None


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text()) if path.exists() else None


def rank_zero() -> bool:
    """Whether this process is the first of a multi-device run (Lightning's launcher and torchrun
    start the others with these variables); only it writes the run's files."""
    return all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def write_record(run_dir: Path, record: dict) -> None:
    if not rank_zero():
        return
    path = Path(run_dir) / "run.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)


def quiet_lightning() -> None:
    """Lightning's start-up notes (accelerators found, tips) and known third-party deprecation
    noise are not about the run; warnings about the run itself still show."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # lightning on new torch
    # FSDP2 warns that a block returns views (a mixer's K/V for the layers sharing them); the model
    # never writes into a block's outputs in place (tests/test_ddp.py: fsdp equals one process)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    # validation metrics are summed over the ranks by hand (LitLM.on_validation_epoch_end)
    warnings.filterwarnings("ignore", message=r".*It is recommended to use `self.log\('val/.*sync_dist=True")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")  # in-memory data needs none
    warnings.filterwarnings("ignore", message=r".*LitModelCheckpoint|.*litmodels")


def _loggers(cfg: RunConfig, run_dir: Path, attempt: int) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(run_dir, name="logs", version=f"attempt{attempt}")]
    if cfg.wandb is not None:
        loggers.append(wandb_logger(cfg, cfg.wandb, run_dir))
    if cfg.tensorboard:
        loggers.append(tensorboard_logger(run_dir, attempt))
    return loggers


def make_trainer(**kwargs) -> L.Trainer:
    """Lightning's Trainer; settings it refuses (an accelerator, devices or strategy this machine
    cannot give) are a ConfigError naming the recipe, not a traceback."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError, MisconfigurationException) as err:
        raise ConfigError(f"recipe (accelerator, devices, strategy, precision): {err}") from None


def lightning_strategy(strategy: str, devices: int | str | list, on_gpu: bool):
    """recipe.strategy -> what the Trainer takes. ``fsdp`` is FSDP2 (``fully_shard``, applied to each
    block and the root in ``LitLM.configure_model``) through Lightning's ModelParallelStrategy:
    one data-parallel dimension over every device, no tensor parallelism, and ``last.ckpt`` one
    file of full (unsharded) weights and optimizer state gathered on rank 0, so it resumes on any
    number of devices and loads without the strategy. FSDP2 runs on the CPU too (gloo), which
    Lightning's older FSDPStrategy refuses, so the CPU tests cover it."""
    if strategy != "fsdp":
        return strategy
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(devices, list):
        count = len(devices)
    elif devices in ("auto", -1, "-1"):
        count = torch.cuda.device_count() if on_gpu else 1
    elif isinstance(devices, int) or str(devices).isdigit():
        count = int(devices)
    else:
        raise ConfigError(f"recipe.devices = {devices!r}: with recipe.strategy fsdp give a count, a list or auto")
    return ModelParallelStrategy(data_parallel_size=count, tensor_parallel_size=1, save_distributed_checkpoint=False)


def trained_model(module: LitLM, device: torch.device) -> torch.nn.Module:
    """The trained LM for the evaluations, on ``device``. Under fsdp its full weights are gathered
    from the shards into a plain LM (a collective: every rank calls it), so that an evaluation runs
    ordinary forwards with no collectives of its own."""
    model = module.model
    if not isinstance(model, fsdp2()[1]):
        return model.to(device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    plain = LM(model.cfg, model.backends)
    plain.load_state_dict(full)
    return plain.to(device)


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = False, replace: bool = False,
          should_stop=None) -> dict:
    """Train (or resume, or skip if finished) one run; returns its record. A directory that holds
    a run of another configuration is a RunConflict, or with ``replace`` is moved aside first.
    ``should_stop(step, val metrics) -> bool``, asked after every evaluation, ends training early
    (a study's pruner): the record then has status "pruned", its metrics so far and its checkpoint,
    and no evaluations run."""
    run_dir = Path(run_dir)
    previous = check_identity(run_dir, read_record(run_dir), cfg, replace)
    if previous and previous.get("status") == "finished":
        return previous
    check_writable(run_dir)
    for name, section in cfg.evaluate.items():  # an evaluation that cannot run fails now, not after training
        EVALUATIONS.get(name).check(section)
    quiet_lightning()
    steps_per_epoch = cfg.recipe.eval_every
    data, vocab, seq_len = build_data(cfg, steps_per_epoch)
    try:
        max_steps = resolve_steps(cfg, seq_len)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    model_cfg = dataclasses.replace(cfg.model, size=dataclasses.replace(cfg.model.size, vocab_size=vocab))
    accelerator = cfg.recipe.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and not torch.cuda.is_available():
        raise ConfigError(f"recipe.accelerator = {accelerator!r}, but this machine has no CUDA GPU that torch "
                          f"{torch.__version__} can use; allowed here: auto, cpu")
    if not on_gpu:
        keep_freed_memory()  # the step's few-MB activations are reused, not page-faulted in anew
    precision = cfg.recipe.precision
    if precision == "auto":
        precision = "bf16-mixed" if on_gpu else "32-true"
    try:
        backends = resolve(cfg.recipe.backend, "cuda" if on_gpu else "cpu", cfg.recipe.compile)
    except BackendError as err:
        raise ConfigError(f"recipe.backend = {cfg.recipe.backend!r}: {err}") from None
    attempt = (previous or {}).get("attempts", 0) + 1
    ident, digest = identity(cfg)
    record = {
        "name": run_dir.name, "variant": cfg.variant, "task": cfg.task, "seed": cfg.recipe.seed,
        "status": "running", "attempts": attempt, "config_hash": digest, "identity": ident,
        "config": to_dict(dataclasses.replace(cfg, model=model_cfg)),
        "plan": [spec.describe().strip() for spec in expand(model_cfg)],
        "params": count_params(model_cfg).as_dict(),
        "cache_bytes": {dtype: cache_bytes(model_cfg, seq_len, dtype) for dtype in ("fp16", "fp32")},
        "cache_seq_len": seq_len, "max_steps": max_steps, "precision": precision, "val_parts": data.val_names,
        "metric_specs": metric_specs(cfg),
        "backends": backends.as_dict(),
        "versions": {"ablate": ablate.__version__, "torch": torch.__version__, "lightning": L.__version__,
                     "python": platform.python_version(),
                     **{k: v for name in cfg.evaluate for k, v in EVALUATIONS.get(name).versions().items()}},
        "git": git_revision(), "host": platform.node(),
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # a sweep worker's pinned GPU
    }
    write_record(run_dir, record)
    write_self_contained(run_dir, cfg, model_cfg, data)
    loggers = []
    # an attempt that trains no step (it resumed at the end, e.g. to redo a failed evaluation)
    # measures no speed: the attempt that trained keeps its figure
    throughput = Throughput()
    stop_check = StopCheck(should_stop) if should_stop is not None else None

    def tokens_per_s() -> float | None:
        return throughput.tokens_per_s or (previous or {}).get("tokens_per_s")

    try:
        L.seed_everything(cfg.recipe.seed, workers=True, verbose=False)
        loggers = _loggers(cfg, run_dir, attempt)
        module = LitLM(model_cfg, cfg.recipe, max_steps, data.val_names, backends)
        ckpt_dir = run_dir / "checkpoints"
        trainer = make_trainer(
            max_steps=max_steps, max_epochs=max_steps // steps_per_epoch,
            accelerator=cfg.recipe.accelerator, devices=cfg.recipe.devices,
            strategy=lightning_strategy(cfg.recipe.strategy, cfg.recipe.devices, on_gpu),
            precision=precision, gradient_clip_val=cfg.recipe.grad_clip or None,
            logger=loggers, log_every_n_steps=min(10, steps_per_epoch),
            callbacks=[throughput, EvalCheckpoint(ckpt_dir / "last.ckpt"),  # the checkpoint first, then
                       *([stop_check] if stop_check else []),        # a stop decision keeps it
                       *([StepProgressBar()] if progress else [])],
            enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0,
            enable_checkpointing=False,  # EvalCheckpoint writes the one checkpoint a run keeps
            deterministic=not on_gpu,
            use_distributed_sampler=False,  # the task's StepBatchSampler and shard() split the data per rank
        )
        last = ckpt_dir / "last.ckpt"
        started = time.time()
        ckpt_dir.mkdir(exist_ok=True)
        check_checkpoint(last)
        # weights_only: a checkpoint holds tensors and plain values only, so none can run code on load
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None, weights_only=True)
        if stop_check is not None and stop_check.stopped_at is not None:
            record.update(status="pruned", reason=f"stopped at step {stop_check.stopped_at} of {max_steps} "
                          "(the study's pruner)", tokens_per_s=tokens_per_s(), steps=trainer.global_step,
                          metrics={k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
            write_record(run_dir, record)
            return record
        if trainer.global_step < max_steps:
            raise RuntimeError(f"training stopped at step {trainer.global_step} of {max_steps}")
        if not any(k.startswith("val/") for k in trainer.callback_metrics):  # resumed at the very end
            trainer.validate(module, datamodule=data, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # Lightning's teardown has moved the model back to the CPU: evaluate where training ran
        # (every rank gathers under fsdp; the first evaluates and writes, as it writes the record)
        model = trained_model(module, trainer.strategy.root_device) if cfg.evaluate else None
        evaluations = evaluate(cfg, model, data, run_dir) if model is not None and rank_zero() else {}
        for logger in loggers:  # the evaluations' metrics go wherever the training curves went
            logger.log_metrics(evaluations, step=trainer.global_step)
        metrics.update(evaluations)
    except BaseException as err:
        record.update(status="failed", reason=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=8),
                      tokens_per_s=tokens_per_s())
        write_record(run_dir, record)
        raise
    finally:
        finish_tracking(loggers, failed=record["status"] == "failed")
    record.update(status="finished", metrics=metrics,
                  tokens_per_s=tokens_per_s(),
                  world_size=trainer.world_size, global_batch=cfg.recipe.batch_size,
                  train_seconds=time.time() - started, steps=trainer.global_step)
    write_record(run_dir, record)
    return record


