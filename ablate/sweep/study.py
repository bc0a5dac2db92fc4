"""Running a sweep's grid through an Optuna study in RDB storage.

- Every grid point is enqueued once as a WAITING trial carrying its point id and config hash
  (user attrs); any start enqueues the points that have no trial yet (idempotent, serialised).
- A worker claims a point by moving one WAITING trial to RUNNING with the storage's
  ``set_trial_state_values``, which succeeds for exactly one caller (PostgreSQL/MySQL lock the
  trial row; on SQLite a file lock serialises claims, see ``file_lock``), so concurrent workers
  run each point once.
- While a point runs, a thread records Optuna heartbeats. A worker that dies stops beating; once
  the grace period passes, any worker (``fail_stale_trials``) fails its trial and
  ``RetryHeartbeatStaleTrialCallback`` re-enqueues the point, however often that happens; its run
  resumes from its last evaluation's checkpoint. Workers wait for points running elsewhere, so a
  launcher ends only when every point of its file is finished.
- A run that raises (NaN loss, out of memory, bad config) is told FAIL with its reason and the
  worker moves on.
- Every trial carries its values as Optuna parameters (a grid point's variant, task, seed and
  knobs as categorical ones), so optuna-dashboard, ``trials_dataframe`` and Optuna's plots show
  them, and its values are the file's objectives (default: the task's headline metric).
- A search study (``sweep.search``) enqueues ``n_trials`` empty slots instead of points; the
  sampler proposes a slot's values when a worker opens it (``run_trial``), and the pruner can
  stop it at any evaluation (told PRUNED, with its partial metrics and checkpoint kept).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import re
import threading
import time
import warnings

import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from ablate.config import ConfigError
from ablate.sweep.grid import Sweep, load_sweep
from ablate.sweep.search import Objective, grid_points, resolve_objectives, suggest
from ablate.train.identity import identity
from ablate.train.own_process import spans_devices, train_in_own_process
from ablate.train.run import metric_specs, read_record, train

HEARTBEAT_S = 20
GRACE_S = 90


def redact(url: str) -> str:
    """Storage URL without its password (in the user info, or a password= query parameter), for
    anything printed or recorded. The user info ends at the last '@' before the path, so a
    password that contains '@' is hidden whole."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    address, has_query, query = rest.partition("?")
    at = address.rfind("@")
    if at >= 0 and ":" in address[:at]:
        address = address[:at].split(":", 1)[0] + ":***" + address[at:]
    query = re.sub(r"(?i)((?:^|&)(?:password|pass|pwd)=)[^&]*", r"\1***", query)
    return f"{scheme}://{address}" + (f"?{query}" if has_query else "")


def sqlalchemy_url(url: str) -> str:
    """The SQLAlchemy URL for Optuna: a plain postgresql:// URL gets the psycopg (3) driver when
    that is what is installed (SQLAlchemy's default is psycopg2); no driver is a clear error."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    if importlib.util.find_spec("psycopg2") is not None:
        return url
    if importlib.util.find_spec("psycopg") is None:
        raise ConfigError(f"storage {redact(url)}: PostgreSQL needs a driver: pip install 'ablate[postgres]'")
    return "postgresql+psycopg://" + url.partition("://")[2]


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> RDBStorage:
    # heartbeats and their retry callback are marked experimental by Optuna; the note is not about the study
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])), exist_ok=True)
    with file_lock(url, "schema"):  # Optuna's schema creation races between processes on a new file
        # max_retry=None: a point whose worker is killed is re-queued however often that happens
        return RDBStorage(sqlalchemy_url(url), engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                          grace_period=grace_s,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=None))


def objectives(sweep: Sweep) -> list[Objective]:
    if sweep.search is not None:
        return sweep.search.objectives
    first = next(iter(sweep.runs.values()))[1]
    return resolve_objectives(sweep.cfg.objectives, metric_specs(first), str(sweep.path))


def open_study(sweep: Sweep, storage: RDBStorage) -> optuna.Study:
    """Create or join the study and enqueue every point (a grid) or trial slot (a search) of this
    file that has no trial yet. Enqueuing is idempotent and serialised (``file_lock``), so any
    start may do it: a launcher killed between creating the study and enqueuing leaves nothing
    wedged. A stored study with other objective directions is an error, not a silent mix."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [o.direction for o in objectives(sweep)]
    search = sweep.search
    study = optuna.create_study(study_name=sweep.cfg.name, storage=storage, directions=directions,
                                load_if_exists=True,
                                pruner=search.pruner.build() if search else None)
    if study.metric_names is None:  # Optuna's plots and the dashboard label the values with them
        study.set_metric_names([o.metric for o in objectives(sweep)])
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise ConfigError(f"{sweep.path}: study '{sweep.cfg.name}' in {redact(storage.url)} optimises {stored}; "
                          f"this file's objectives ask {directions}. Give the study another name (key 'name') "
                          "or another storage (key 'storage').")
    if search is not None:
        if len(slots(study)) < search.n_trials:
            grid = grid_points(search.space, search.sampler.seed, str(sweep.path)) \
                if search.sampler.name == "grid" else None
            with file_lock(storage.url, "enqueue"):
                for slot in sorted(set(range(search.n_trials)) - slots(study)):
                    study.enqueue_trial(grid[slot] if grid else {}, user_attrs={"slot": slot})
    elif not set(trial_keys(sweep)) <= set(study.user_attrs.get("points", [])):  # new, or the file changed
        with file_lock(storage.url, "enqueue"):
            _enqueue_missing(study, sweep)
    return study


def slots(study: optuna.Study) -> set[int]:
    return {t.user_attrs["slot"] for t in study.get_trials(deepcopy=False) if "slot" in t.user_attrs}


def trial_keys(sweep: Sweep) -> dict[str, str]:
    """'point id#config hash' of every point: a changed configuration is a new key, so its point
    runs again and a trial of the old version is never taken for it. A search study: its slots."""
    if sweep.search is not None:
        return {f"slot{i}": f"slot{i}" for i in range(sweep.search.n_trials)}
    return {f"{point_id}#{sweep.config_hash(point_id)}": point_id for point_id in sweep.runs}


def trial_key(trial) -> str:
    if "slot" in trial.user_attrs:
        return f"slot{trial.user_attrs['slot']}"
    return f"{trial.user_attrs.get('point')}#{trial.user_attrs.get('config_hash')}"


def _enqueue_missing(study: optuna.Study, sweep: Sweep) -> None:
    known = {trial_key(t) for t in study.get_trials(deepcopy=False)}
    keys = trial_keys(sweep)
    for key, point_id in keys.items():
        if key not in known:
            study.enqueue_trial({}, user_attrs={"point": point_id, "config_hash": sweep.config_hash(point_id)})
    study.set_user_attr("points", sorted(set(study.user_attrs.get("points", [])) | set(keys)))


def requeue_failed(study: optuna.Study, storage: RDBStorage, sweep: Sweep) -> list[str]:
    """A new start retries the points (or search slots) whose runs failed before (an evaluation's
    data missing, an out-of-memory): each gets one new WAITING trial with the same parameters and
    its run resumes from its checkpoint. Within one start a failed point is not retried, so a run
    that always fails costs one attempt per start. -> the re-queued point ids."""
    with file_lock(storage.url, "enqueue"):
        failed = [p for p, state in point_states(study, sweep).items() if state == TrialState.FAIL]
        last = {trial_key(t): t for t in study.get_trials(deepcopy=False)}  # the newest attempt of each
        for point_id in failed:
            if sweep.search is not None:
                t = last.get(point_id)
                study.enqueue_trial(t.params if t else {}, user_attrs={"slot": int(point_id[len("slot"):])})
            else:
                study.enqueue_trial({}, user_attrs={"point": point_id, "config_hash": sweep.config_hash(point_id)})
    return failed


@contextlib.contextmanager
def file_lock(url: str, what: str):
    """Serialise one kind of study operation between processes on SQLite (a file local to one
    machine, so an exclusive lock file next to it does it). Claims: server databases lock the
    trial row (SELECT ... FOR UPDATE) so only one claim of a WAITING trial succeeds, while SQLite
    has no row locks and two processes can both read WAITING before either writes. Schema
    creation and enqueuing: check-then-write sequences. On a server database enqueuing is not
    serialised: a point enqueued twice by racing launchers is still trained once (``_claim``
    skips a trial whose point already has a running or complete trial)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    with open(url[len("sqlite:///"):] + f".{what}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(study: optuna.Study, storage: RDBStorage) -> tuple[int, int, str] | None:
    """Move one WAITING trial to RUNNING; -> (trial id, number, trial key) or None when none left."""
    with file_lock(storage.url, "claim"):
        return _claim(study, storage)


def _claim(study: optuna.Study, storage: RDBStorage) -> tuple[int, int, str] | None:
    study_id = storage.get_study_id_from_name(study.study_name)
    trials = study.get_trials(deepcopy=False)
    taken = {trial_key(t) for t in trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)}
    for frozen in [t for t in trials if t.state == TrialState.WAITING]:
        if trial_key(frozen) in taken:  # enqueued twice by racing launchers: the point is in hand
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                storage.record_heartbeat(trial_id)
                return trial_id, frozen.number, trial_key(frozen)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished by someone else between the listing and the claim
    return None


class Heartbeat:
    """Record Optuna heartbeats for a trial from a background thread while its run trains."""

    def __init__(self, storage: RDBStorage, trial_id: int, every_s: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.every_s = storage, trial_id, every_s
        self.stop = threading.Event()

    def _beat(self):
        while not self.stop.wait(self.every_s):
            self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def finish(study, storage, trial_id: int, number: int, record: dict, sweep: Sweep) -> None:
    """Tell the trial its values (or PRUNED) and keep what the progress lines and tables show."""
    storage.set_trial_user_attr(trial_id, "metrics", record.get("metrics", {}))
    storage.set_trial_user_attr(trial_id, "shown", [m["name"] for m in record["metric_specs"][:2]])
    storage.set_trial_user_attr(trial_id, "tokens_per_s", record.get("tokens_per_s"))
    if record["status"] == "pruned":
        storage.set_trial_user_attr(trial_id, "reason", record.get("reason"))
        study.tell(number, state=TrialState.PRUNED)
        return
    study.tell(number, [o.value(record) for o in objectives(sweep)])


def failed(study, storage, trial_id: int, number: int, err: Exception) -> None:
    storage.set_trial_user_attr(trial_id, "reason", f"{type(err).__name__}: {err}"[:2000])
    study.tell(number, state=TrialState.FAIL)


def run_point(study, storage, sweep: Sweep, claimed: tuple[int, int, str]) -> None:
    """A grid point: its variant, task, seed and knobs become the trial's (categorical) parameters."""
    trial_id, number, key = claimed
    point_id = trial_keys(sweep).get(key)
    if point_id is None:
        storage.set_trial_user_attr(trial_id, "reason", "point (or this configuration of it) is not in this "
                                    "worker's sweep file")
        study.tell(number, state=TrialState.FAIL)
        return
    point, cfg = sweep.runs[point_id]
    for name, (value, choices) in sweep.grid_params(point).items():
        dist = CategoricalDistribution(choices)
        storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
    storage.set_trial_user_attr(trial_id, "run_dir", str(sweep.run_dir(point)))
    with Heartbeat(storage, trial_id, sweep.cfg.heartbeat_s):
        try:  # the file is authoritative: a run of an older version of the point is moved aside
            if spans_devices(cfg.recipe):  # its other ranks re-run a command line: not the sweep's
                record = train_in_own_process(cfg, sweep.run_dir(point), replace=True, threads=torch.get_num_threads())
            else:
                record = train(cfg, sweep.run_dir(point), replace=True)
        except Exception as err:  # the sweep goes on; the reason stays in the study and run.json
            failed(study, storage, trial_id, number, err)
            return
    finish(study, storage, trial_id, number, record, sweep)


def run_trial(study, storage, sweep: Sweep, claimed: tuple[int, int, str]) -> None:
    """A search slot: the sampler proposes its values (a re-queued slot keeps its old ones), the
    run trains with the pruner watching its first objective at every evaluation."""
    trial_id, number, _ = claimed
    search = sweep.search
    study.sampler = search.sampler.build(number, search.space)
    trial = optuna.Trial(study, trial_id)
    try:
        params = suggest(trial, search.space)
        point, cfg = sweep.trial_run(params)
    except Exception as err:  # e.g. a proposed size that the heads do not divide
        failed(study, storage, trial_id, number, err)
        return
    run_dir = sweep.run_dir(point)
    storage.set_trial_user_attr(trial_id, "point", point.id)
    storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir))
    previous = read_record(run_dir)
    if previous is not None and previous.get("status") == "pruned" and previous.get("config_hash") == \
            identity(cfg)[1]:  # these values were tried and pruned: the same run, not run twice
        finish(study, storage, trial_id, number, previous, sweep)
        return
    metric = search.objectives[0]

    def should_stop(step: int, metrics: dict) -> bool:
        if metric.metric not in metrics:
            return False
        trial.report(metrics[metric.metric], step)
        return trial.should_prune()

    with Heartbeat(storage, trial_id, sweep.cfg.heartbeat_s):
        try:  # a finished run of the same values is returned as it is (train skips it)
            if spans_devices(cfg.recipe):  # in a process of its own, which the pruner cannot reach
                record = train_in_own_process(cfg, run_dir, replace=True, threads=torch.get_num_threads())
            else:
                record = train(cfg, run_dir, replace=True,
                               should_stop=should_stop if search.pruner.name != "none" else None)
        except Exception as err:
            failed(study, storage, trial_id, number, err)
            return
    finish(study, storage, trial_id, number, record, sweep)


def quiet_training_logs() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", category=UserWarning)


def worker(sweep_path: str, storage_url: str | None = None, threads: int | None = None,
           poll_s: float = 5.0, gpu: str | None = None, phase: str = "main", chosen: dict | None = None,
           gpu_share: float | None = None) -> int:
    """Take points until every point of the file is finished; returns how many this worker ran.
    A worker outlives points running elsewhere: if their worker died, their heartbeat goes stale
    after the grace period, the point is re-queued, and this worker runs (resumes) it. ``gpu``
    pins the worker to one GPU (set before CUDA starts in this process; runs record it). ``phase``
    and ``chosen``: which sweep of an lr_search file (``load_sweep``). ``gpu_share``: the fraction of
    the GPU's memory this worker may hold, when several workers share one GPU. Without it, each
    process's caching allocator keeps what its largest step (an evaluation at the longest sequence)
    reserved, and a few such processes starve the others into out-of-memory failures (measured:
    16 workers on one H200, sweeps/roadmap-small.yaml); with it, a worker frees its own cache at
    its share before it fails."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import torch

    if gpu_share is not None and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(gpu_share, 0)

    if threads:
        torch.set_num_threads(threads)
    quiet_training_logs()
    sweep = load_sweep(sweep_path, phase, chosen)
    storage = open_storage(storage_url or sweep.storage, sweep.cfg.heartbeat_s, sweep.cfg.grace_s)
    study = open_study(sweep, storage)
    done = 0
    while True:
        fail_stale_trials(study)  # a dead worker's point goes back to WAITING (heartbeat grace passed)
        claimed = claim(study, storage)
        if claimed is not None:
            (run_trial if sweep.search is not None else run_point)(study, storage, sweep, claimed)
            done += 1
        elif unfinished(study, sweep):  # running elsewhere, or dead and not yet stale: wait for it
            time.sleep(min(poll_s, sweep.cfg.grace_s))
        else:
            return done


def point_states(study: optuna.Study, sweep: Sweep) -> dict[str, TrialState]:
    """Each point (search slot) of this file: COMPLETE or PRUNED if a trial of it ended so, else
    RUNNING or WAITING if one is, else FAIL (its trials failed). Failed attempts of a point that
    later completed (a killed worker's, a re-queued one's) do not make the point failed."""
    by_key: dict[str, set[TrialState]] = {}
    for t in study.get_trials(deepcopy=False):
        by_key.setdefault(trial_key(t), set()).add(t.state)
    states = {}
    for key, point_id in trial_keys(sweep).items():
        seen = by_key.get(key, set())
        states[point_id] = next((s for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                             TrialState.WAITING) if s in seen), TrialState.FAIL)
    return states


def unfinished(study: optuna.Study, sweep: Sweep) -> bool:
    return any(s in (TrialState.RUNNING, TrialState.WAITING) for s in point_states(study, sweep).values())


def choose_lrs(sweep: Sweep, study: optuna.Study) -> dict[str, dict]:
    """Each group's (variant, task, grid knobs) best candidate LR of an lr_search's selection sweep,
    by the task's headline metric on the selection split: lr_key -> {lr, metric, direction,
    candidates: {lr: value}}. A candidate that failed (diverged) is left out; a group with none
    left is an error."""
    first = next(iter(sweep.runs.values()))[1]
    head = metric_specs(first)[0]
    values: dict[str, dict[float, float]] = {}
    for t in study.get_trials(deepcopy=False):
        point_id = trial_keys(sweep).get(trial_key(t))
        if t.state == TrialState.COMPLETE and point_id is not None:
            point, cfg = sweep.runs[point_id]
            values.setdefault(sweep.lr_key(point), {})[cfg.recipe.lr] = t.user_attrs["metrics"][head["name"]]
    chosen = {}
    for point, _ in sweep.runs.values():
        key = sweep.lr_key(point)
        candidates = values.get(key)
        if not candidates:
            raise RuntimeError(f"lr_search: every candidate learning rate of {key} failed; see {sweep.results}")
        pick = (max if head["direction"] == "maximize" else min)(candidates, key=candidates.get)
        chosen[key] = {"lr": pick, "metric": head["name"], "direction": head["direction"],
                       "candidates": {str(lr): v for lr, v in sorted(candidates.items())}}
    return chosen
