"""Sweeps: strict files, exactly-once execution across workers, failures recorded, stale retries."""

from __future__ import annotations

import json
import multiprocessing as mp
import time

import optuna
import pytest
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from ablate.config import ConfigError
from ablate.sweep.grid import load_sweep
from ablate.sweep.launch import launch
from ablate.sweep.study import claim, open_storage, open_study, redact, worker
from tests.helpers import write_sweep


def test_grid_expands_variants_tasks_seeds_and_knobs(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, grid={"mlp.hidden": [32, 64]}))
    assert len(sweep.runs) == 2 * 2 * 2
    point, cfg = sweep.runs["llama|mqar|s1|mlp.hidden=64"]
    assert cfg.model.mlp.hidden == 64 and cfg.recipe.seed == 1 and cfg.model.size.d_model == 32
    assert sweep.labels == ["llama", "mamba"]


def test_grid_keys_may_set_the_recipe_and_the_task_section(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, grid={"recipe.lr": [0.001, 0.01], "mqar.eval_split": ["selection"]}))
    point, cfg = sweep.runs['llama|mqar|s0|recipe.lr=0.01,mqar.eval_split="selection"']
    assert cfg.recipe.lr == 0.01 and cfg.data.eval_split == "selection"
    assert cfg.model.mlp.hidden == 64  # a recipe knob is not a model override


def test_task_grid_keys_need_their_own_task_and_no_lr_search(tmp_path):
    with pytest.raises(ConfigError, match="every run of the grid must be of that task"):
        load_sweep(write_sweep(tmp_path, tasks=["mqar", "text"], grid={"mqar.vocab_size": [32, 64]}))
    with pytest.raises(ConfigError, match="lr_search' sets the evaluation split itself"):
        load_sweep(write_sweep(tmp_path, name="u", grid={"mqar.eval_split": ["test", "selection"]},
                               lr_search={"values": [0.001, 0.003]}))


def test_a_variant_entry_sets_its_own_recipe(tmp_path):
    variants = ["llama", {"name": "mamba", "recipe": {"lr": 0.01}}]
    sweep = load_sweep(write_sweep(tmp_path, variants=variants, recipe={"lr": 0.002, "max_steps": 10,
                                                                         "eval_every": 5, "batch_size": 8}))
    assert sweep.runs["llama|mqar|s0"][1].recipe.lr == 0.002
    assert sweep.runs["mamba|mqar|s0"][1].recipe.lr == 0.01  # the point id stays the variant's
    with pytest.raises(ConfigError, match="lr_search"):
        load_sweep(write_sweep(tmp_path, name="u", variants=variants, lr_search={"values": [0.001, 0.003]}))
    with pytest.raises(ConfigError, match="'seed' in variant mamba's recipe: the sweep sets it for every run"):
        load_sweep(write_sweep(tmp_path, name="v", variants=["llama", {"name": "mamba", "recipe": {"seed": 3}}]))


def test_per_task_values_set_only_that_tasks_runs(tmp_path):
    (tmp_path / "a.txt").write_text("some text to model. " * 50)
    text = {"train": [str(tmp_path / "a.txt")], "vocab_size": 300, "seq_len": 16}
    per_task = {"mqar": {"sets": {"embed_init_std": 1.0}, "recipe": {"max_steps": 20, "schedule": "wsd"}}}
    plain = load_sweep(write_sweep(tmp_path, name="plain", tasks=["mqar", "text"], text=text))
    sweep = load_sweep(write_sweep(tmp_path, tasks=["mqar", "text"], text=text, per_task=per_task,
                                   variants=["llama", {"name": "mamba", "recipe": {"max_steps": 30}}]))
    mqar, txt = sweep.runs["llama|mqar|s0"][1], sweep.runs["llama|text|s0"][1]
    assert (mqar.model.embed_init_std, mqar.recipe.max_steps, mqar.recipe.schedule) == (1.0, 20, "wsd")
    assert txt.model == plain.runs["llama|text|s0"][1].model and txt.recipe.max_steps == 10
    # the other task's runs are the same runs as without per_task: their identities do not move
    assert sweep.config_hash("llama|text|s1") == plain.config_hash("llama|text|s1")
    assert sweep.config_hash("llama|mqar|s1") != plain.config_hash("llama|mqar|s1")
    assert sweep.runs["mamba|mqar|s0"][1].recipe.max_steps == 30  # the variant entry is more specific


def test_the_dry_run_shows_what_a_task_sets_for_its_runs(tmp_path, capsys):
    from ablate.sweep.launch import dry_run

    dry_run(str(write_sweep(tmp_path, per_task={"mqar": {"recipe": {"max_steps": 20, "schedule": "wsd"}}})))
    out = capsys.readouterr().out
    assert "llama|mqar|s0:" in out and "20 steps of 8 (wsd)" in out
    assert out.count('per_task.mqar: {"recipe": {"max_steps": 20, "schedule": "wsd"}}') == 4


@pytest.mark.parametrize("per_task,expected", [
    ({"text": {"sets": {}}}, ["per_task.text", "not one of this sweep's tasks", "mqar"]),
    ({"mqar": {"model": {}}}, ["per_task.mqar", "'sets'", "'recipe'"]),
    ({"mqar": {"sets": [1]}}, ["per_task.mqar.sets", "a mapping"]),
    ({"mqar": {"sets": {"size.width": 3}}}, ["per_task.mqar.sets.size.width", "d_model"]),
    ({"mqar": {"recipe": {"lr": "fast"}}}, ["recipe.lr", "float"]),
    ({"mqar": {"recipe": {"seed": 7}}}, ["'seed' in per_task.mqar.recipe", "'seeds'"]),
])
def test_bad_per_task_sections(tmp_path, per_task, expected):
    with pytest.raises(ConfigError) as err:
        load_sweep(write_sweep(tmp_path, per_task=per_task))
    for piece in ["t.yaml", *expected]:
        assert piece in str(err.value)
    with pytest.raises(ConfigError, match="lr_search' picks each variant's lr"):
        load_sweep(write_sweep(tmp_path, name="u", per_task={"mqar": {"recipe": {"lr": 0.01}}},
                               lr_search={"values": [0.001, 0.003]}))


def test_match_puts_every_variant_on_one_budget(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, match={"target": 40000, "knob": "mlp.hidden"}))
    from ablate.sizing import count_params

    for _, cfg in sweep.runs.values():
        assert abs(count_params(cfg.model).non_embedding - 40000) / 40000 < 0.01


@pytest.mark.parametrize("more,expected", [
    ({"variant": ["llama"]}, ["unknown key 'variant'", "variants"]),
    ({"variants": ["lama"]}, ["unknown variant 'lama'"]),
    ({"sets": {"size.width": 3}}, ["t.yaml", "size.width", "d_model"]),
    ({"recipe": {"lr": "fast"}}, ["t.yaml", "recipe.lr", "float"]),
    ({"tasks": ["wiki"]}, ["t.yaml", "tasks[0]", "'mqar'"]),
    ({"match": {"target": 10, "knob": "mlp.hidden"}}, ["t.yaml", "tolerance"]),
    ({"variants": []}, ["t.yaml", "variants"]),
])
def test_bad_sweep_files(tmp_path, more, expected):
    path = write_sweep(tmp_path, **more)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    for piece in expected:
        assert piece in str(err.value)


def _worker(path, url):
    worker(path, url, threads=1)


def test_two_workers_run_each_point_exactly_once(tmp_path):
    path = write_sweep(tmp_path)
    sweep = load_sweep(path)
    url = sweep.storage
    open_study(sweep, open_storage(url))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(path), url)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="t", storage=url)
    trials = study.get_trials()
    assert sorted(t.user_attrs["point"] for t in trials) == sorted(sweep.runs)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for point, _ in sweep.runs.values():
        record = json.loads((sweep.run_dir(point) / "run.json").read_text())
        assert record["status"] == "finished" and record["attempts"] == 1


def test_a_failing_run_is_recorded_and_the_sweep_completes(tmp_path, capsys):
    variants = ["llama", {"name": "llama", "label": "broken", "sets": {"init_std": 1.0e30}}]
    path = write_sweep(tmp_path, variants=variants, seeds=[0])
    assert launch(str(path), workers=1) == 1
    out = capsys.readouterr().out
    assert "FAILED broken|mqar|s0: FloatingPointError: loss is" in out
    assert "done   llama|mqar|s0" in out and "| llama" in out
    sweep = load_sweep(path)
    assert json.loads((sweep.results / "runs" / "broken-mqar-s0" / "run.json").read_text())["status"] == "failed"
    assert (sweep.results / "table.md").exists() and (sweep.results / "headline_vs_cache.png").exists()


def test_a_dead_worker_point_is_requeued_and_run(tmp_path):
    path = write_sweep(tmp_path, variants=["llama"], seeds=[0])
    sweep = load_sweep(path)
    storage = open_storage(sweep.storage, heartbeat_s=1, grace_s=1)
    study = open_study(sweep, storage)
    claimed = claim(study, storage)  # a worker takes the point ... and dies without a heartbeat
    assert claimed is not None and claim(study, storage) is None
    time.sleep(2.5)
    fail_stale_trials(study)
    states = sorted(t.state.name for t in study.get_trials())
    assert states == ["FAIL", "WAITING"]
    assert worker(str(path), sweep.storage, threads=1) == 1
    assert [t.state for t in study.get_trials()][-1] == TrialState.COMPLETE


@pytest.mark.parametrize("url,shown", [
    ("postgresql://ablate:s3cret@db:5432/studies", "postgresql://ablate:***@db:5432/studies"),
    ("postgresql://:s3cret@db/studies", "postgresql://:***@db/studies"),
    ("postgresql://ablate:p@ss@db/studies", "postgresql://ablate:***@db/studies"),
    ("postgresql://ablate@db/studies?sslmode=require&password=s3cret",
     "postgresql://ablate@db/studies?sslmode=require&password=***"),
    ("sqlite:///results/t/study.db", "sqlite:///results/t/study.db"),
])
def test_redact_hides_every_form_of_password(url, shown):
    assert redact(url) == shown


def test_every_shipped_sweep_loads():
    from pathlib import Path

    files = sorted(Path(__file__).resolve().parents[1].glob("sweeps/*.yaml"))
    assert {f.stem for f in files} >= {"default", "roadmap"}
    for f in files:
        sweep = load_sweep(f)
        assert (sweep.runs or sweep.search) and sweep.cfg.name == f.stem


def _claim_all(path, url, out):
    sweep = load_sweep(path)
    storage = open_storage(url)
    study = open_study(sweep, storage)
    with open(out, "w") as f:
        while (claimed := claim(study, storage)) is not None:
            f.write(claimed[2].rpartition("#")[0] + "\n")  # the key is point id#config hash


def test_concurrent_claims_never_hand_out_a_point_twice(tmp_path):
    path = write_sweep(tmp_path, seeds=list(range(20)))  # 2 variants x 20 seeds = 40 points
    sweep = load_sweep(path)
    open_study(sweep, open_storage(sweep.storage))
    ctx = mp.get_context("spawn")
    outs = [tmp_path / f"claimed{i}.txt" for i in range(4)]
    procs = [ctx.Process(target=_claim_all, args=(str(path), sweep.storage, str(o))) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    claimed = [line for o in outs for line in o.read_text().split()]
    assert sorted(claimed) == sorted(sweep.runs)  # every point once, none twice


def test_a_changed_sweep_file_reruns_exactly_the_changed_points(tmp_path, capsys):
    path = write_sweep(tmp_path, seeds=[0])
    assert launch(str(path), workers=1) == 0
    sweep = load_sweep(path)
    before = {p: json.loads((sweep.run_dir(pt) / "run.json").read_text()) for p, (pt, _) in sweep.runs.items()}
    # the same file again: nothing runs, nothing is redone
    assert launch(str(path), workers=1) == 0
    assert "changed since their last run" not in capsys.readouterr().out
    # only mamba's runs change (a model override for that variant alone)
    path = write_sweep(tmp_path, seeds=[0], variants=["llama", {"name": "mamba", "sets": {"mamba.d_state": 8}}])
    assert launch(str(path), workers=1) == 0
    out = capsys.readouterr().out
    assert "1 point(s) changed" in out and "mamba|mqar|s0: config.model.mamba.d_state: 4 -> 8" in out
    sweep = load_sweep(path)
    after = {p: json.loads((sweep.run_dir(pt) / "run.json").read_text()) for p, (pt, _) in sweep.runs.items()}
    assert after["llama|mqar|s0"] == before["llama|mqar|s0"]  # untouched
    assert after["mamba|mqar|s0"]["config"]["model"]["mamba"]["d_state"] == 8
    assert after["mamba|mqar|s0"]["config_hash"] != before["mamba|mqar|s0"]["config_hash"]
    moved = sweep.results / "runs" / ".replaced" / f"mamba-mqar-s0-{before['mamba|mqar|s0']['config_hash']}"
    assert json.loads((moved / "run.json").read_text()) == before["mamba|mqar|s0"]  # kept, not deleted
    import ablate

    runs = ablate.load_results(sweep.results)  # what the table is made of: the current runs only
    assert sorted(runs["run"]) == ["llama-mqar-s0", "mamba-mqar-s0"]
    assert set(runs["dir"]) == {str(sweep.run_dir(p)) for p, _ in sweep.runs.values()}


def test_a_sweep_logs_every_run_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    path = write_sweep(tmp_path, seeds=[0], wandb={"project": "ablate-test", "tags": ["ci"]})
    sweep = load_sweep(path)
    for point, cfg in sweep.runs.values():
        assert cfg.wandb.group == "t" and {"ci", point.variant, "seed=0"} <= set(cfg.wandb.tags)
    assert launch(str(path), workers=1) == 0
    for point, _ in sweep.runs.values():
        runs = list((sweep.run_dir(point) / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, point.id
        (data,) = runs[0].glob("*.wandb")
        assert b"val/acc" in data.read_bytes() and b"train/loss" in data.read_bytes()  # the metrics, logged


def _records(sweep):
    return {p: json.loads((sweep.run_dir(pt) / "run.json").read_text()) for p, (pt, _) in sweep.runs.items()}


def test_a_killed_sweep_resumes_from_its_checkpoints_and_completes(tmp_path):
    kill_and_resume(tmp_path)


def kill_and_resume(tmp_path, storage_url=None):
    """kill -9 of the launcher and its workers mid-run, then the same command again: every point
    completes once, the killed run resumes from its last evaluation (not step 0), the metrics equal
    an uninterrupted sweep's, and the launcher exits 0 although an attempt failed."""
    import os
    import signal
    import subprocess
    import sys

    more = {"recipe": {"max_steps": 200, "eval_every": 50, "batch_size": 8, "warmup_steps": 2},
            "heartbeat_s": 1, "grace_s": 3}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = load_sweep(write_sweep(tmp_path / "a", variants=["llama"], seeds=[0], **more))
    assert launch(str(straight.path), workers=1) == 0
    path = write_sweep(tmp_path / "b", variants=["llama"], seeds=[0], **more)
    sweep = load_sweep(path)
    (point, _), = sweep.runs.values()
    ckpt = sweep.run_dir(point) / "checkpoints" / "last.ckpt"
    storage = ["--storage", storage_url] if storage_url else []
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", str(path), *storage],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its worker, mid-run
    proc.wait()
    killed = json.loads((sweep.run_dir(point) / "run.json").read_text())
    assert killed["status"] == "running"
    assert launch(str(path), workers=1, storage_url=storage_url) == 0  # waits out the dead worker, re-runs it
    record = _records(sweep)[point.id]
    assert record["status"] == "finished" and record["attempts"] == 2
    import pandas as pd

    second = pd.read_csv(sweep.run_dir(point) / "logs" / "attempt2" / "metrics.csv")
    assert second["step"].min() >= 50  # resumed from a checkpoint, not from step 0
    assert record["metrics"] == pytest.approx(_records(straight)[point.id]["metrics"], rel=1e-6)
    from ablate.sweep.study import open_storage

    trials = optuna.load_study(study_name="t", storage=open_storage(storage_url or sweep.storage)).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 1 and TrialState.FAIL in states


def test_workers_are_pinned_to_gpus_round_robin(tmp_path):
    from ablate.sweep.launch import gpu_assignment

    assert gpu_assignment(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert gpu_assignment(2, []) == [None, None]
    assert gpu_assignment(3, ["0", "1", "2", "3"], per_run=2) == ["0,1", "2,3", "0,1"]  # a 2-device run each
    from ablate.sweep.launch import gpu_shares

    # workers sharing a GPU split its memory; one alone, a CPU worker or a multi-GPU block: no cap
    assert gpu_shares(["0", "1", "0", "0"]) == [0.3, None, 0.3, 0.3]  # 0.9 of the GPU: contexts lie outside
    assert gpu_shares([None, None]) == [None, None] and gpu_shares(["0,1", "0,1"]) == [None, None]
    path = write_sweep(tmp_path, seeds=[0])
    assert launch(str(path), workers=2, gpus=["3", "5"]) == 0  # a fake device list: no GPU is touched
    sweep = load_sweep(path)
    records = [json.loads((sweep.run_dir(p) / "run.json").read_text()) for p, _ in sweep.runs.values()]
    pinned = {r["visible_devices"] for r in records}
    assert pinned <= {"3", "5"} and pinned


def test_four_launchers_on_a_new_sqlite_study_run_every_point_once(tmp_path):
    """Four `ablate sweep` commands started together on a study that does not exist yet: the schema
    is created once, the grid enqueued once, every point trained once, and all four exit 0."""
    import subprocess
    import sys

    path = write_sweep(tmp_path, seeds=[0, 1, 2, 3])  # 2 variants x 4 seeds
    procs = [subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    sweep = load_sweep(path)
    trials = optuna.load_study(study_name="t", storage=sweep.storage).get_trials()
    assert sorted(t.user_attrs["point"] for t in trials) == sorted(sweep.runs)  # enqueued once each
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for record in _records(sweep).values():
        assert record["status"] == "finished" and record["attempts"] == 1  # trained once each


def test_a_half_created_study_recovers_on_the_next_start(tmp_path):
    """A launcher killed between creating the study and enqueuing its grid leaves an empty study;
    the next start enqueues and runs it instead of waiting for a creator that is gone."""
    path = write_sweep(tmp_path, seeds=[0])
    sweep = load_sweep(path)
    optuna.create_study(study_name="t", storage=open_storage(sweep.storage), direction="maximize")
    assert launch(str(path), workers=1) == 0
    assert len(optuna.load_study(study_name="t", storage=sweep.storage).get_trials()) == 2


def test_an_out_of_memory_run_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    variants = ["llama", {"name": "llama", "label": "huge", "sets": {"size.d_model": 4_000_000}}]
    path = write_sweep(tmp_path, variants=variants, seeds=[0])
    assert launch(str(path), workers=1) == 1
    out = capsys.readouterr().out
    assert "FAILED huge|mqar|s0" in out and "done   llama|mqar|s0" in out
    record = json.loads((load_sweep(path).results / "runs" / "huge-mqar-s0" / "run.json").read_text())
    assert record["status"] == "failed" and "allocate" in record["reason"].lower()


@pytest.mark.slow
def test_ten_random_kills_of_launcher_and_workers_lose_nothing(tmp_path):
    """kill -9 of the whole launcher group at random moments, ten times, restarting each time, then
    once more to the end: every point has exactly one completed trial and run, with the metrics of
    an uninterrupted sweep."""
    import os
    import random
    import signal
    import subprocess
    import sys

    more = {"recipe": {"max_steps": 60, "eval_every": 20, "batch_size": 8, "warmup_steps": 2},
            "heartbeat_s": 1, "grace_s": 2}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = load_sweep(write_sweep(tmp_path / "a", seeds=[0, 1], **more))
    assert launch(str(straight.path), workers=2) == 0
    path = write_sweep(tmp_path / "b", seeds=[0, 1], **more)
    rng = random.Random(0)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "sweep", str(path), "--workers", "2"],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 9.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert launch(str(path), workers=2) == 0
    sweep = load_sweep(path)
    trials = optuna.load_study(study_name="t", storage=sweep.storage).get_trials()
    for point_id in sweep.runs:
        assert [t.state for t in trials if t.user_attrs["point"] == point_id].count(TrialState.COMPLETE) == 1
    expected = _records(straight)
    for point_id, record in _records(sweep).items():
        assert record["status"] == "finished"
        assert record["metrics"] == pytest.approx(expected[point_id]["metrics"], rel=1e-6), point_id
