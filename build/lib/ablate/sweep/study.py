"""Running a sweep's grid through an Optuna study in RDB storage.

- Every grid point is enqueued once as a WAITING trial carrying its point id (user attr).
  The process that creates the study enqueues; processes that join wait until it is done.
- A worker claims a point by moving one WAITING trial to RUNNING with the storage's
  ``set_trial_state_values``, which succeeds for exactly one caller (PostgreSQL/MySQL lock the
  trial row; on SQLite a file lock serialises claims, see ``claim_lock``), so concurrent workers
  run each point once.
- While a point runs, a thread records Optuna heartbeats. A worker that dies stops beating; the
  next start (``fail_stale_trials``) fails its trial and ``RetryHeartbeatStaleTrialCallback``
  re-enqueues the point, whose run then resumes from its checkpoint.
- A run that raises (NaN loss, out of memory, bad config) is told FAIL with its reason and the
  worker moves on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import threading
import time
import warnings

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from ablate.registry import TASKS
from ablate.sweep.grid import Sweep, load_sweep
from ablate.train.run import train

HEARTBEAT_S = 20
GRACE_S = 90


def redact(url: str) -> str:
    """Storage URL without its password, for anything printed or recorded."""
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> RDBStorage:
    # heartbeats and their retry callback are marked experimental by Optuna; the note is not about the study
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])), exist_ok=True)
    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_s, grace_period=grace_s,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


def open_study(sweep: Sweep, storage: RDBStorage, wait_s: float = 300) -> optuna.Study:
    """Create the study and enqueue the grid, or join it once its creator has enqueued."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=sweep.cfg.name, storage=storage, direction="maximize")
        _enqueue_missing(study, sweep)
        return study
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=sweep.cfg.name, storage=storage)
    deadline = time.time() + wait_s
    while "points" not in study.user_attrs:
        if time.time() > deadline:
            raise TimeoutError(f"study '{sweep.cfg.name}' exists but its grid was never enqueued")
        time.sleep(1)
    if not set(trial_keys(sweep)) <= set(study.user_attrs["points"]):  # the file gained or changed points
        _enqueue_missing(study, sweep)
    return study


def trial_keys(sweep: Sweep) -> dict[str, str]:
    """'point id#config hash' of every point: a changed configuration is a new key, so its point
    runs again and a trial of the old version is never taken for it."""
    return {f"{point_id}#{sweep.config_hash(point_id)}": point_id for point_id in sweep.runs}


def trial_key(trial) -> str:
    return f"{trial.user_attrs.get('point')}#{trial.user_attrs.get('config_hash')}"


def _enqueue_missing(study: optuna.Study, sweep: Sweep) -> None:
    known = {trial_key(t) for t in study.get_trials(deepcopy=False)}
    keys = trial_keys(sweep)
    for key, point_id in keys.items():
        if key not in known:
            study.enqueue_trial({}, user_attrs={"point": point_id, "config_hash": sweep.config_hash(point_id)})
    study.set_user_attr("points", sorted(set(study.user_attrs.get("points", [])) | set(keys)))


@contextlib.contextmanager
def claim_lock(storage: RDBStorage):
    """Serialise claims on SQLite. Server databases lock the trial row (SELECT ... FOR UPDATE) so
    only one claim of a WAITING trial succeeds; SQLite has no row locks, and two processes can
    both read WAITING before either writes. A SQLite file is local to one machine, so an
    exclusive file lock next to it makes the claim atomic there."""
    url = storage.url
    if not url.startswith("sqlite:///"):
        yield
        return
    with open(url[len("sqlite:///"):] + ".claim.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim(study: optuna.Study, storage: RDBStorage) -> tuple[int, int, str] | None:
    """Move one WAITING trial to RUNNING; -> (trial id, number, trial key) or None when none left."""
    with claim_lock(storage):
        return _claim(study, storage)


def _claim(study: optuna.Study, storage: RDBStorage) -> tuple[int, int, str] | None:
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
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


def objective(record: dict) -> float:
    """The run's task headline metric as a value to maximise (the study's one direction)."""
    return TASKS.get(record["task"]).objective(record["metrics"])


def run_point(study, storage, sweep: Sweep, claimed: tuple[int, int, str]) -> None:
    trial_id, number, key = claimed
    point_id = trial_keys(sweep).get(key)
    if point_id is None:
        storage.set_trial_user_attr(trial_id, "reason", "point (or this configuration of it) is not in this "
                                    "worker's sweep file")
        study.tell(number, state=TrialState.FAIL)
        return
    point, cfg = sweep.runs[point_id]
    storage.set_trial_user_attr(trial_id, "run_dir", str(sweep.run_dir(point)))
    with Heartbeat(storage, trial_id):
        try:  # the file is authoritative: a run of an older version of the point is moved aside
            record = train(cfg, sweep.run_dir(point), replace=True)
        except Exception as err:  # the sweep goes on; the reason stays in the study and run.json
            storage.set_trial_user_attr(trial_id, "reason", f"{type(err).__name__}: {err}"[:2000])
            study.tell(number, state=TrialState.FAIL)
            return
    storage.set_trial_user_attr(trial_id, "metrics", record["metrics"])
    storage.set_trial_user_attr(trial_id, "shown", [m["name"] for m in record["metric_specs"][:2]])
    storage.set_trial_user_attr(trial_id, "tokens_per_s", record["tokens_per_s"])
    study.tell(number, objective(record))


def quiet_training_logs() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", category=UserWarning)


def worker(sweep_path: str, storage_url: str | None = None, threads: int | None = None) -> int:
    """Take points until none is left; returns how many this worker ran."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    quiet_training_logs()
    sweep = load_sweep(sweep_path)
    storage = open_storage(storage_url or sweep.storage)
    study = open_study(sweep, storage)
    fail_stale_trials(study)
    done = 0
    while (claimed := claim(study, storage)) is not None:
        run_point(study, storage, sweep, claimed)
        done += 1
    return done
