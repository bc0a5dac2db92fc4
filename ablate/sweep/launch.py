"""`ablate sweep FILE --workers N` (`make study STUDY=FILE`): enqueue the grid (or the search's
trial slots), start N local workers, show progress, and end with the results table (a search: also
its Pareto front and the optuna-dashboard command). The same command on another machine with the
same storage URL joins the study and takes points from it."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from ablate.config import ConfigError
from ablate.sweep.grid import load_sweep
from ablate.sweep.search import params_text, write_study_files
from ablate.sweep.study import (
    choose_lrs,
    objectives,
    open_storage,
    open_study,
    point_states,
    redact,
    requeue_failed,
    trial_key,
    trial_keys,
    worker,
)


def _describe(trial) -> str:
    point = trial.user_attrs.get("point", "?")
    if "slot" in trial.user_attrs:  # a search trial: its number and proposed values
        point = f"trial {trial.number} ({params_text(trial.params)})"
    if trial.state == TrialState.FAIL:
        return f"FAILED {point}: {trial.user_attrs.get('reason', 'worker died; retried if it was stale')}"
    if trial.state == TrialState.PRUNED:
        return f"pruned {point}: {trial.user_attrs.get('reason', '')}"
    metrics = trial.user_attrs.get("metrics", {})
    shown = {k: metrics[k] for k in trial.user_attrs.get("shown", []) if k in metrics}  # the task's first two
    tps = trial.user_attrs.get("tokens_per_s")
    extra = f", {tps:,.0f} tok/s" if tps else ""
    return f"done   {point}: " + ", ".join(f"{k}={v:.4f}" for k, v in shown.items()) + extra


def best_so_far(study) -> str:
    """The best value (one objective) or the Pareto front's size (several), for the status line."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return ""
    if len(study.directions) == 1:
        best = study.best_trial
        return f"; best {best.value:.4g} (trial {best.number})"
    return f"; Pareto front: {len(study.best_trials)} trial(s)"


def monitor(study, procs, current: set[str], every_s: float = 3.0) -> dict[str, int]:
    """Print each trial of this file's points as it finishes; -> counts by state (those points only)."""
    reported: set[int] = set()
    last_status, started = 0.0, time.time()
    done_before: int | None = None  # trials finished before this launch (not in its rate)
    while True:
        alive = any(p.is_alive() for p in procs)
        trials = [t for t in study.get_trials(deepcopy=False) if trial_key(t) in current]
        finished = [t for t in trials if t.state.is_finished()]
        for t in finished:
            if t.number not in reported:
                reported.add(t.number)
                best = best_so_far(study) if "slot" in t.user_attrs else ""  # a search: how it stands
                print(f"[{len(reported)}/{len(trials)}] {_describe(t)}{best}", flush=True)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        done_before = len(finished) if done_before is None else done_before
        if time.time() - last_status > 60 and alive:
            running = [t.user_attrs.get("point") for t in trials if t.state == TrialState.RUNNING]
            here, elapsed = len(finished) - done_before, time.time() - started
            left = counts["waiting"] + counts["running"]
            eta = f"; ETA ~{left * elapsed / here / 60:.0f} min" if here else ""
            pruned = f", {counts['pruned']} pruned" if counts["pruned"] else ""
            print(f"  {counts['complete']} done{pruned}, {counts['fail']} failed, running: "
                  f"{', '.join(map(str, running)) or '-'}; waiting: {counts['waiting']}{eta}{best_so_far(study)}",
                  flush=True)
            last_status = time.time()
        if not alive:
            return counts
        time.sleep(every_s)


GPU_SHARED = 0.9  # of a shared GPU's memory the workers' caps add up to: each CUDA context lies outside its cap


def gpu_shares(pinned: list[str | None]) -> list[float | None]:
    """Each worker's share of its GPU's memory: 0.9/k where k workers are pinned to one GPU (None
    alone on it, on the CPU, or for a multi-GPU block, whose run takes its devices for itself)."""
    return [GPU_SHARED / pinned.count(gpu) if gpu is not None and "," not in gpu and pinned.count(gpu) > 1 else None
            for gpu in pinned]


def gpu_assignment(workers: int, gpus: list[str] | None = None, per_run: int = 1) -> list[str | None]:
    """The GPUs each local worker is pinned to (its CUDA_VISIBLE_DEVICES), round robin over blocks
    of ``per_run`` GPUs (a run with recipe.devices = N takes N for itself) from ``gpus`` (default:
    every GPU this host has; empty: no pinning, e.g. a CPU host)."""
    if gpus is None:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    blocks = [",".join(gpus[j : j + per_run]) for j in range(0, len(gpus) - per_run + 1, per_run)]
    if gpus and not blocks:
        raise ConfigError(f"recipe.devices = {per_run} per run, but the workers have {len(gpus)} GPU(s): {gpus}")
    return [blocks[i % len(blocks)] if blocks else None for i in range(workers)]


def dry_run(sweep_path: str) -> int:
    """Every run of a sweep file as it would train: variant, task, seed, parameters, attn:ssm, the
    matched knob's value and the resolved layer plan; nothing is trained or written."""
    import functools

    from ablate.plan import expand
    from ablate.sizing import count_params

    sweep = load_sweep(sweep_path, phase="lr")  # an lr_search file: its selection runs (the seeds follow)
    knob = sweep.cfg.match.knob if sweep.cfg.match is not None else None
    target = f", matched to {sweep.cfg.match.target:,} non-embedding via {knob}" if knob else ""
    size = f"a search of {sweep.search.n_trials} trials" if sweep.search is not None else f"{len(sweep.runs)} runs"
    print(f"sweep '{sweep.cfg.name}': {size}{target} (the embedding at each task's vocab_size, as a run "
          "sets it; a tokenizer's may end below its target)")
    runs = {point_id: cfg for point_id, (_, cfg) in sweep.runs.items()}
    if sweep.search is not None:  # a search: its space, and the runs at both ends of every range
        search = sweep.search
        print(f"search: {search.n_trials} trials, sampler {search.sampler.name} (seed {search.sampler.seed}), "
              f"pruner {search.pruner.name}; objectives: "
              + ", ".join(f"{o.direction} {o.metric}" for o in search.objectives))
        for key, dist in search.space.items():
            print(f"  {key}: {dist}")
        for end in ("low", "high"):
            params = {k: d.choices[0 if end == "low" else -1] if hasattr(d, "choices") else getattr(d, end)
                      for k, d in search.space.items()}
            point, cfg = sweep.trial_run(params)
            runs[f"{end} end: {point.id}"] = cfg
    for point_id, cfg in runs.items():
        counts = count_params(task_vocab(cfg))
        matched = f", {knob} = {functools.reduce(getattr, knob.split('.'), cfg.model)}" if knob else ""
        print(f"\n{point_id}: {counts.total / 1e6:,.3f}M parameters, {counts.non_embedding:,} non-embedding, "
              f"attn:ssm {counts.attn_ssm_ratio}{matched}, n_meta {cfg.model.n_meta}, lr {cfg.recipe.lr:g}, "
              f"{cfg.recipe.max_steps} steps of {cfg.recipe.batch_size} ({cfg.recipe.schedule})")
        if cfg.task in sweep.cfg.per_task:  # what this task's runs set beyond the file's sets and recipe
            print(f"  per_task.{cfg.task}: {json.dumps(sweep.cfg.per_task[cfg.task], sort_keys=True)}")
        for spec in expand(cfg.model):
            print("  " + spec.describe().rstrip())
    return 0


def task_vocab(cfg):
    """The run's model at its task's vocabulary (ablate/train/run.py sets the model's vocab from the
    task's data), so a dry run's total parameter count is the one the run trains."""
    vocab = getattr(cfg.data, "vocab_size", None)
    if vocab is None:
        return cfg.model
    return dataclasses.replace(cfg.model, size=dataclasses.replace(cfg.model.size, vocab_size=vocab))


def launch(sweep_path: str, workers: int = 1, storage_url: str | None = None,
           gpus: list[str] | None = None) -> int:
    """Run a sweep file to the end. With ``lr_search``: first its selection sweep (every candidate
    LR per variant at one seed, on the selection split), then the seeds at each chosen LR."""
    first = load_sweep(sweep_path, phase="lr")
    if first.cfg.lr_search is None:
        return _launch(first, sweep_path, workers, storage_url, gpus)
    code = _launch(first, sweep_path, workers, storage_url, gpus, phase="lr")
    storage = open_storage(storage_url or first.storage, first.cfg.heartbeat_s, first.cfg.grace_s)
    chosen = choose_lrs(first, open_study(first, storage))
    print(f"\nlearning rates chosen on the selection split ({next(iter(chosen.values()))['metric']}):")
    for key, choice in chosen.items():
        values = ", ".join(f"{lr}: {v:.4g}" for lr, v in choice["candidates"].items())
        print(f"  {' '.join(map(str, json.loads(key)[:2]))} {json.loads(key)[2] or ''}: lr {choice['lr']}  ({values})")
    main = load_sweep(sweep_path, chosen=chosen)
    return max(code, _launch(main, sweep_path, workers, storage_url, gpus, chosen=chosen))


def _launch(sweep, sweep_path: str, workers: int, storage_url: str | None, gpus: list[str] | None,
            phase: str = "main", chosen: dict | None = None) -> int:
    changed = sweep.changed_points()
    if changed:
        print(f"sweep '{sweep.cfg.name}': {len(changed)} point(s) changed since their last run; they run again "
              "(old runs moved to runs/.replaced/):")
        for point_id, what in changed.items():
            print(f"  {point_id}: {what}")
    url = storage_url or sweep.storage
    storage = open_storage(url, sweep.cfg.heartbeat_s, sweep.cfg.grace_s)
    study = open_study(sweep, storage)
    fail_stale_trials(study)
    retried = requeue_failed(study, storage, sweep)
    if retried:
        print(f"sweep '{sweep.cfg.name}': {len(retried)} point(s) failed in an earlier start and run again "
              f"(resuming their checkpoints): {', '.join(retried)}")
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    devices = sweep.cfg.recipe.devices
    pinned = gpu_assignment(workers, gpus, devices if isinstance(devices, int) and devices > 1 else 1)
    on_gpus = f", GPUs {', '.join(g or '-' for g in pinned)}" if any(pinned) else ""
    if sweep.search is not None:
        search = sweep.search
        goals = ", ".join(f"{o.direction} {o.metric}" for o in search.objectives)
        size = (f"{search.n_trials} trials of a {search.sampler.name} search over {', '.join(search.space)} "
                f"({goals}; pruner {search.pruner.name})")
    else:
        size = (f"{len(sweep.runs)} runs ({len(sweep.labels)} variants x {len(sweep.cfg.tasks)} tasks x "
                f"{len(sweep.cfg.seeds)} seeds)")
    print(f"sweep '{sweep.cfg.name}': {size}, {workers} worker(s) x "
          f"{threads} thread(s){on_gpus}\n  storage: {redact(url)}\n  results: {sweep.results}", flush=True)
    started = time.time()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(str(sweep_path), url, threads),
                         kwargs={"gpu": gpu, "phase": phase, "chosen": chosen, "gpu_share": share})
             for gpu, share in zip(pinned, gpu_shares(pinned), strict=True)]
    for p in procs:
        p.start()
    monitor(study, procs, set(trial_keys(sweep)))
    for p in procs:
        p.join()
    states = list(point_states(study, sweep).values())
    counts = {s.name.lower(): states.count(s) for s in TrialState}
    dead = [p.exitcode for p in procs if p.exitcode != 0]
    pruned = f", {counts['pruned']} pruned" if counts["pruned"] else ""
    print(f"\n{counts['complete']} of {len(states)} points complete{pruned}, {counts['fail']} failed, "
          f"{counts['running']} running elsewhere, {counts['waiting']} waiting; {time.time() - started:.0f} s"
          + (f"; {len(dead)} worker(s) exited with an error (codes {dead})" if dead else ""), flush=True)
    from ablate.analysis.tables import write_tables

    paths = write_tables(sweep.results, order=sweep.labels, scope=sweep.cfg.scope)
    print("\n" + Path(paths["markdown"]).read_text())
    if sweep.search is not None:
        study_paths = write_study_files(study, sweep.search, sweep.results)
        title = "Pareto front" if len(objectives(sweep)) > 1 else "best trial"
        print(f"{title} ({', '.join(o.metric for o in objectives(sweep))}):\n"
              f"{Path(study_paths['pareto']).read_text().strip()}\n")
        paths.update({f"study_{k}": v for k, v in study_paths.items()})
    print("files:\n" + "\n".join(f"  {k}: {v}" for k, v in paths.items()))
    print(f"\nexplore the study: optuna-dashboard {redact(url)}   (pip install 'ablate[dashboard]')")
    print(f"report (notebooks, figures, maps): make report RESULTS={sweep.results}  (ablate report DIR)")
    settled = counts["complete"] + counts["pruned"]  # a pruned trial is a finished one
    return 0 if settled == len(states) and not dead else 1
