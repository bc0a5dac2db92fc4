"""The recipe: real Lightning training that learns, is reproducible, resumes exactly, and records."""

from __future__ import annotations

import json

import lightning as L
import pandas as pd
import pytest
import torch

from ablate.train.run import train
from tests.helpers import tiny_mqar


def losses(run_dir):
    frames = [pd.read_csv(p) for p in sorted(run_dir.glob("logs/*/metrics.csv"))]
    df = pd.concat(frames)
    return df.dropna(subset=["train/loss"]).drop_duplicates("step", keep="last")["train/loss"].tolist()


@pytest.mark.slow
def test_tiny_attention_learns_mqar_far_above_chance(tmp_path):
    """A 2-layer attention model learns associative recall (an induction circuit) in a few hundred
    steps: with 4 pairs, copying any value seen in the context scores 0.25 and chance is 1/128."""
    sets = ["size.d_model=64", "mlp.kind=none", "mqar.vocab_size=256", "recipe.batch_size=64",
            "recipe.weight_decay=0.1", "recipe.warmup_steps=50",
            "mqar.train=[{seq_len: 64, n_pairs: 2, n_examples: 10000}, {seq_len: 64, n_pairs: 4, n_examples: 10000}]",
            "mqar.test=[{seq_len: 64, n_pairs: 4, n_examples: 500}]"]
    record = train(tiny_mqar(tmp_path, steps=500, every=100, extra=sets), tmp_path / "run")
    assert record["metrics"]["val/L64_kv4/acc"] > 0.8, record["metrics"]
    assert record["tokens_per_s"] > 0


def test_record_holds_what_analysis_needs(tmp_path):
    record = train(tiny_mqar(tmp_path, steps=10, every=5), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    assert on_disk["status"] == "finished" and on_disk == json.loads(json.dumps(record, default=str))
    for key in ("config", "plan", "params", "cache_bytes", "backends", "precision", "versions", "seed",
                "tokens_per_s", "metrics"):
        assert key in on_disk, key
    assert on_disk["precision"] == "32-true" and on_disk["config"]["model"]["size"]["vocab_size"] == 32
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_same_seed_same_losses_and_finished_runs_are_not_redone(tmp_path):
    a = train(tiny_mqar(tmp_path), tmp_path / "a")
    b = train(tiny_mqar(tmp_path), tmp_path / "b")
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert a["metrics"] == b["metrics"]
    again = train(tiny_mqar(tmp_path), tmp_path / "a")
    assert again["attempts"] == 1 and len(list((tmp_path / "a" / "logs").iterdir())) == 1


class SimulatedKill(Exception):
    pass


class Crash(L.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 25:
            raise SimulatedKill("simulated kill")


def run_with_crash(run_dir, tmp_path):
    """Train the tiny run with a simulated kill at step 25 (after the step-20 evaluation)."""
    import ablate.train.run as run_mod

    real_trainer = L.Trainer

    def crashing_trainer(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Crash()]
        return real_trainer(*args, **kwargs)

    run_mod.L.Trainer = crashing_trainer
    try:
        train(tiny_mqar(tmp_path), run_dir)
    finally:
        run_mod.L.Trainer = real_trainer


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    uninterrupted = train(tiny_mqar(tmp_path), tmp_path / "straight")
    import ablate.train.run as run_mod

    real_trainer = L.Trainer

    def crashing_trainer(*args, **kwargs):
        kwargs["callbacks"] = [*kwargs["callbacks"], Crash()]
        return real_trainer(*args, **kwargs)

    monkeypatch.setattr(run_mod.L, "Trainer", crashing_trainer)
    with pytest.raises(SimulatedKill):
        train(tiny_mqar(tmp_path), tmp_path / "resumed")
    record = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert record["status"] == "failed" and "simulated kill" in record["reason"]
    monkeypatch.setattr(run_mod.L, "Trainer", real_trainer)
    resumed = train(tiny_mqar(tmp_path), tmp_path / "resumed")
    assert resumed["attempts"] == 2 and resumed["steps"] == 40
    # it resumed from its last evaluation (step 20 of 40, killed at 25), not from step 0
    second = pd.read_csv(tmp_path / "resumed" / "logs" / "attempt2" / "metrics.csv")
    assert second["step"].min() >= 20
    assert resumed["metrics"] == pytest.approx(uninterrupted["metrics"], rel=1e-6)
    assert losses(tmp_path / "resumed") == pytest.approx(losses(tmp_path / "straight"), rel=1e-6)


def test_nan_loss_fails_with_a_reason(tmp_path):
    with pytest.raises(FloatingPointError):
        train(tiny_mqar(tmp_path, extra=["init_std=1.0e30"]), tmp_path / "nan")
    record = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert record["status"] == "failed" and "loss is" in record["reason"]


@pytest.mark.parametrize("variant", ["mamba2", "samba", "roadmap-e-meta"])
def test_every_kind_of_variant_trains(tmp_path, variant):
    extra = ["layout.window=4"] if variant in ("samba", "roadmap-e-meta") else []
    if variant == "roadmap-e-meta":
        extra += ["size.n_layers=6", "n_meta=4"]
    if variant == "mamba2":
        extra += ["mamba2.head_dim=16", "mamba2.d_state=8"]
    record = train(tiny_mqar(tmp_path, variant=variant, steps=10, every=5, extra=extra), tmp_path / variant)
    assert record["variant"] == variant
    assert record["status"] == "finished" and record["metrics"]["val/loss"] > 0


def test_throughput_counts_timed_steps_and_leaves_validation_out():
    import time
    from types import SimpleNamespace

    import torch

    from ablate.train.callbacks import Throughput

    module = SimpleNamespace(device=torch.device("cpu"))
    trainer = SimpleNamespace(world_size=1, sanity_checking=False)
    batch = (torch.zeros(2, 8),)
    meter = Throughput(skip=1)
    for step in range(3):
        time.sleep(0.02)
        meter.on_train_batch_end(trainer, module, None, batch, step)
        if step == 1:  # a slow validation between steps is not training time
            meter.on_validation_start(trainer, module)
            time.sleep(0.3)
            meter.on_validation_end(trainer, module)
    meter.on_train_end(trainer, module)
    assert meter.tokens == 2 * 16  # the steps after the skipped one
    assert 0.03 < meter.seconds < 0.2


def test_a_changed_configuration_under_an_existing_run_name_is_refused(tmp_path):
    from ablate.train.identity import RunConflict

    first = json.loads(json.dumps(train(tiny_mqar(tmp_path, steps=10, every=5), tmp_path / "run"), default=str))
    with pytest.raises(RunConflict) as err:
        train(tiny_mqar(tmp_path, steps=20, every=5, extra=["size.d_model=16"]), tmp_path / "run")
    message = str(err.value)
    assert "config.recipe.max_steps: 10 -> 20" in message and "config.model.size.d_model: 32 -> 16" in message
    assert "--name" in message and "--overwrite" in message
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == first  # untouched
    # where files live is not part of a run's identity
    moved_cache = tiny_mqar(tmp_path, steps=10, every=5, extra=[f"mqar.cache_dir={tmp_path / 'elsewhere'}"])
    assert train(moved_cache, tmp_path / "run") == first
    # replace: the old run is moved aside, the new one runs
    second = train(tiny_mqar(tmp_path, steps=20, every=5), tmp_path / "run", replace=True)
    assert second["steps"] == 20 and second["attempts"] == 1
    aside = tmp_path / ".replaced" / f"run-{first['config_hash']}"
    assert json.loads((aside / "run.json").read_text())["steps"] == 10


def test_the_progress_bar_counts_the_runs_steps(tmp_path, capsys):
    train(tiny_mqar(tmp_path, steps=20, every=5), tmp_path / "run", progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "20/20" in text and "train" in text  # one bar over all 20 steps, not one per evaluation interval
    assert "Epoch" not in text and "GPU available" not in text and "Tip" not in text


def test_tensorboard_logs_beside_the_csv_when_asked(tmp_path):
    import dataclasses

    cfg = dataclasses.replace(tiny_mqar(tmp_path, steps=10, every=5), tensorboard=True)
    first = train(cfg, tmp_path / "run")
    assert list((tmp_path / "run" / "tensorboard" / "attempt1").glob("events.out.tfevents.*"))
    # how a run is watched is not what it computes: the same run, not a conflict
    assert train(dataclasses.replace(cfg, tensorboard=False), tmp_path / "run")["config_hash"] == first["config_hash"]


def test_a_corrupted_checkpoint_or_an_unwritable_directory_is_a_clear_error(tmp_path):
    import os

    from ablate.config import ConfigError

    with pytest.raises(SimulatedKill):
        run_with_crash(tmp_path / "run", tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()  # written at the evaluation before the kill
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated
    with pytest.raises(RuntimeError, match="last.ckpt: the run's checkpoint cannot be read"):
        train(tiny_mqar(tmp_path), tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):  # running as a user whom permissions do not stop
            pytest.skip("cannot make an unwritable directory here")
        with pytest.raises(ConfigError, match="cannot be written"):
            train(tiny_mqar(tmp_path), locked / "run")
    finally:
        os.chmod(locked, 0o700)


def test_a_checkpoint_with_a_pickled_payload_is_refused(tmp_path, capsys):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("this ran",))

    with pytest.raises(SimulatedKill):
        run_with_crash(tmp_path / "run", tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    state["evil"] = Payload()
    with open(ckpt, "wb") as f:
        pickle.dump(state, f)  # not even torch's format: any unpickling would run the payload
    with pytest.raises(RuntimeError, match="cannot be read"):
        train(tiny_mqar(tmp_path), tmp_path / "run")
    assert "this ran" not in capsys.readouterr().out
