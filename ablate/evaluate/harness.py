"""Recall, commonsense and perplexity through lm-evaluation-harness, on the local benchmark files.

In a run or sweep file (after training, every run; the run is finished only when this is done,
so an interrupted evaluation is redone on the next start and a finished one never is):

    evaluate:
      lm_eval: {tasks: [commonsense, recall], limit: null, batch_size: 16}

or on a finished run: ``ablate eval RUN_DIR --tasks commonsense,recall``. Either way lm-eval's
results JSON and per-item samples go to ``RUN_DIR/eval/``, and the run record gains the metrics
``eval/lm_eval/TASK/METRIC`` plus ``eval/lm_eval/commonsense_avg`` and ``recall_avg`` (each the
mean of its tasks' headline metric, computed only when every task of the average was run), so
tables read them without lm-eval. Task names, groups and the local data are in
``ablate.evaluate.lm_tasks`` (its README says what each task is and how it differs from lm-eval's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ablate.config import ConfigError, knob, require
from ablate.evaluate.base import Evaluation
from ablate.evaluate.lm_tasks import AVERAGED, GROUPS, HEADLINE, INCLUDE_PATH, METRICS, TASKS, data_dir
from ablate.registry import EVALUATIONS
from ablate.tasks.base import Metric

LOWER_IS_BETTER = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def task_names(requested) -> list[str]:
    """Group names (commonsense, recall, lm, all) and task names, short or as lm-eval names them
    (piqa or ablate_piqa) -> short task names, in order."""
    names = []
    for item in requested:
        item = item.removeprefix("ablate_")  # lm-eval's names of the same tasks and groups
        for name in GROUPS.get(item, (item,)):
            if name not in TASKS:
                raise ConfigError(f"lm_eval task '{name}'; allowed: groups {', '.join(GROUPS)} or tasks "
                                  f"{', '.join(TASKS)}")
            if name not in names:
                names.append(name)
    return names


@dataclass(frozen=True, kw_only=True)
class HarnessConfig:
    tasks: tuple[str, ...] = knob(("commonsense", "recall"),
                                  "groups (commonsense, recall, lm, all) or task names (ablate.evaluate.lm_tasks)")
    limit: int | None = knob(None, "items per task (none: all); a limited evaluation is recorded with its limit")
    batch_size: int = knob(16, "requests per forward (scores do not depend on it)", identity=False)
    data_dir: str | None = knob(None, "local benchmark files (default: $ABLATE_DATA_DIR, else ../shared/data "
                                      "beside the checkout)", identity=False)

    def __post_init__(self):
        require(self, limit=(1, None), batch_size=(1, None))
        task_names(self.tasks)  # unknown names fail when the config is read, not after training


def metric_specs(tasks) -> list[Metric]:
    """The metrics an evaluation of these tasks records (relative to eval/lm_eval/), averages first."""
    names = task_names(tasks)
    specs = []
    for avg, members in AVERAGED.items():
        if set(members) <= set(names):
            headlines = ", ".join(f"{t} {HEADLINE[t]}" for t in members)
            specs.append(Metric(f"{avg}_avg", "maximize", f"mean of {headlines}"))
    for task in names:
        for metric in METRICS[task]:
            direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
            specs.append(Metric(f"{task}/{metric}", direction, f"lm-eval {TASKS[task]} {metric}",
                                table=metric == HEADLINE[task]))  # the paper's tables: one column per task
    return specs


def offline_lm_eval():
    """lm-eval, imported with the Hugging Face libraries told to stay offline (read at their import)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)  # per-task notes about its own config defaults
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("evaluation lm_eval needs lm-eval: pip install 'ablate[eval]'") from None
    return lm_eval, TaskManager


def check_data_dir(data: str | None) -> Path:
    """The benchmark data directory, or a ConfigError before any model work (a missing file inside
    it is named by the task's loader)."""
    root = data_dir(data)
    if not root.is_dir():
        raise ConfigError(f"{root}: no benchmark data directory (give --data-dir / evaluate.lm_eval.data_dir "
                          "or set ABLATE_DATA_DIR)")
    return root


def run_harness(lm, tasks, out_dir: Path, limit: int | None = None, data: str | None = None) -> dict:
    """Evaluate ``lm`` (an lm-eval model) on ablate's local tasks; writes lm-eval's results JSON
    and samples to ``out_dir``; -> {"metrics": {TASK/METRIC: value}, "stderr": {...}, "info": {...}}."""
    lm_eval, TaskManager = offline_lm_eval()
    from lm_eval.utils import handle_non_serializable

    names = task_names(tasks)
    root = check_data_dir(data)
    manager = TaskManager(include_path=str(INCLUDE_PATH), metadata={"data_dir": str(root)})
    started = time.time()
    with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints its bootstrap progress; stdout is our table
        results = lm_eval.simple_evaluate(model=lm, tasks=[TASKS[t] for t in names], task_manager=manager,
                                          limit=limit, log_samples=True, bootstrap_iters=1000)
    seconds = time.time() - started
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("samples_*.jsonl"):  # the directory holds one evaluation: this one
        old.unlink()
    samples = results.pop("samples")
    for task, items in samples.items():
        with open(out_dir / f"samples_{task}.jsonl", "w") as f:
            for item in items:
                f.write(json.dumps(item, default=handle_non_serializable) + "\n")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=handle_non_serializable))
    metrics, stderr = {}, {}
    for task in names:
        reported = results["results"][TASKS[task]]
        for metric in METRICS[task]:
            metrics[f"{task}/{metric}"] = float(reported[f"{metric},none"])
            err = reported.get(f"{metric}_stderr,none")
            stderr[f"{task}/{metric}"] = float(err) if isinstance(err, (int, float)) and err == err else None
    for avg, members in AVERAGED.items():
        if set(members) <= set(names):
            metrics[f"{avg}_avg"] = sum(metrics[f"{t}/{HEADLINE[t]}"] for t in members) / len(members)
    info = {"tasks": names, "limit": limit, "data_dir": str(root), "seconds": round(seconds, 1),
            "lm_eval_version": metadata.version("lm-eval"),
            "items": {t: len(samples.get(TASKS[t], [])) for t in names}}
    (out_dir / "summary.json").write_text(json.dumps({"metrics": metrics, "stderr": stderr, "info": info}, indent=2))
    return {"metrics": metrics, "stderr": stderr, "info": info}


@EVALUATIONS.register("lm_eval")
class Harness(Evaluation):
    """lm-evaluation-harness on the local recall, commonsense and perplexity sets (text runs)."""

    config = HarnessConfig
    metrics = ()  # they depend on the tasks chosen: metrics_for

    @classmethod
    def metrics_for(cls, cfg: HarnessConfig) -> list[Metric]:
        return metric_specs(cfg.tasks)

    @classmethod
    def check(cls, cfg: HarnessConfig) -> None:
        """Before training: lm-eval is installed and the data directory is there. (Not imported
        here: that sets the Hugging Face libraries offline, and the training data may be hf:...)"""
        import importlib.util

        if importlib.util.find_spec("lm_eval") is None:
            raise ConfigError("evaluation lm_eval needs lm-eval: pip install 'ablate[eval]'")
        check_data_dir(cfg.data_dir)

    @classmethod
    def versions(cls) -> dict[str, str]:
        try:
            return {"lm_eval": metadata.version("lm-eval")}
        except metadata.PackageNotFoundError:  # the run fails at evaluation with the install hint
            return {}

    @classmethod
    def run(cls, cfg: HarnessConfig, model, data, run_dir: Path) -> dict[str, float]:
        from ablate.evaluate.lm_eval_model import AblateLM
        from ablate.train.run import rank_zero

        if not rank_zero():  # a multi-GPU run evaluates once, on its first process, which records it
            return {m.name: float("nan") for m in cls.metrics_for(cfg)}
        tokenizer = getattr(data, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("evaluation lm_eval needs a task with a tokenizer (the text task)")
        lm = AblateLM(model=model, tokenizer=tokenizer, max_length=data.seq_len, batch_size=cfg.batch_size)
        # the lm-eval version, items per task and limit are in RUN_DIR/eval/summary.json
        return run_harness(lm, cfg.tasks, Path(run_dir) / "eval", cfg.limit, cfg.data_dir)["metrics"]


def evaluate_run(run_dir: str | Path, tasks, limit: int | None = None, batch_size: int = 16,
                 data: str | None = None, device: str | None = None) -> dict:
    """``ablate eval``: evaluate a finished run, write RUN_DIR/eval/ and add the metrics (and
    their specs) to its run.json, beside its training metrics; -> run_harness's result."""
    from ablate.evaluate.lm_eval_model import AblateLM
    from ablate.train.run import read_record, write_record

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record is None or record.get("status") != "finished":
        status = "no run.json" if record is None else f"status '{record.get('status')}'"
        raise ConfigError(f"{run_dir}: not a finished run ({status}); train it first (ablate train / sweep)")
    cfg = HarnessConfig(tasks=tuple(tasks), limit=limit, batch_size=batch_size, data_dir=data)  # checks values
    check_data_dir(data)
    lm = AblateLM(run_dir=str(run_dir), batch_size=batch_size, device=device)
    result = run_harness(lm, tasks, run_dir / "eval", limit, data)
    record = read_record(run_dir)  # re-read: keep whatever changed while evaluating
    # this evaluation replaces an earlier one: the record never mixes two (other tasks, another limit)
    prefix = "eval/lm_eval/"
    record["metrics"] = {**{k: v for k, v in record.get("metrics", {}).items() if not k.startswith(prefix)},
                         **{prefix + k: v for k, v in result["metrics"].items()}}
    record["metric_specs"] = [m for m in record.get("metric_specs", []) if not m["name"].startswith(prefix)] + [
        m.as_dict() for m in Harness.recorded(cfg)]
    record.setdefault("evaluations", {})["lm_eval"] = {**result["info"], "device": str(lm.device)}
    write_record(run_dir, record)
    return result
