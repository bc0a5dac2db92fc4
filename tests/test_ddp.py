"""One run across two processes (Lightning DDP, and FSDP2 through Lightning's ModelParallelStrategy;
gloo on the CPU): the same global batch order split between the ranks, the loss normalised over the
global batch, validation sharded without double counting, so the run matches one process at the
same global batch within float noise; a killed run resumes; a sweep hands such a run to a process
of its own (Lightning re-runs the command line for the other ranks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

TINY = ["size.d_model=32", "size.n_layers=2", "attention.n_heads=2", "attention.n_kv_heads=2", "mlp.hidden=64",
        "mqar.vocab_size=32", "recipe.max_steps=40", "recipe.eval_every=20", "recipe.batch_size=16",
        "recipe.warmup_steps=5", "recipe.weight_decay=0.0", "recipe.accelerator=cpu",
        "mqar.train=[{seq_len: 16, n_pairs: 2, n_examples: 2000}, {seq_len: 16, n_pairs: 3, n_examples: 1000}]",
        "mqar.test=[{seq_len: 16, n_pairs: 2, n_examples: 201}, {seq_len: 32, n_pairs: 4, n_examples: 200}]"]


def run(tmp_path, name, *extra):
    sets = [item for s in [*TINY, f"mqar.cache_dir={tmp_path / 'cache'}", *extra] for item in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "ablate.cli", "train", "llama", "--quiet", "--out", str(tmp_path),
                           "--name", name, *sets], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / name / "run.json").read_text())
    frame = pd.read_csv(tmp_path / name / "logs" / "attempt1" / "metrics.csv")
    return record, frame.dropna(subset=["train/loss"]).set_index("step")["train/loss"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process_at_the_same_global_batch(tmp_path, strategy):
    # weight decay on: FSDP2 replaces every parameter, and the no-decay tags must follow them
    one, one_losses = run(tmp_path, "one", "recipe.weight_decay=0.1")
    two, two_losses = run(tmp_path, "two", f"recipe.strategy={strategy}", "recipe.devices=2", "recipe.weight_decay=0.1")
    assert two["world_size"] == 2 and two["global_batch"] == one["global_batch"] == 16 and one["world_size"] == 1
    assert list(two_losses.index) == list(one_losses.index) and len(one_losses) >= 4
    assert two_losses.tolist() == pytest.approx(one_losses.tolist(), rel=1e-4)
    # 201 examples: an odd count that a padding sampler would double-count on one rank
    assert two["metrics"] == pytest.approx(one["metrics"], rel=1e-5)
    assert (tmp_path / "two" / "checkpoints" / "last.ckpt").exists()
    assert [p.name for p in (tmp_path / "two" / "logs").iterdir()] == ["attempt1"]  # one rank wrote
    # the checkpoint holds the full weights under the model's own names: it loads without the strategy
    from ablate.api import load_run

    model = load_run(tmp_path / "two").model
    state = torch.load(tmp_path / "two" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {k.removeprefix("model.") for k in state} == set(model.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_two_process_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path, strategy):
    import os
    import signal
    import time

    straight, _ = run(tmp_path, "straight", f"recipe.strategy={strategy}", "recipe.devices=2",
                      "recipe.max_steps=200", "recipe.eval_every=50")
    sets = [item for s in [*TINY, f"mqar.cache_dir={tmp_path / 'cache'}", f"recipe.strategy={strategy}",
                           "recipe.devices=2",
                           "recipe.max_steps=200", "recipe.eval_every=50"] for item in ("--set", s)]
    command = [sys.executable, "-m", "ablate.cli", "train", "llama", "--quiet", "--out", str(tmp_path), "--name",
               "killed", *sets]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # both ranks
    proc.wait()
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert record["attempts"] == 2 and record["world_size"] == 2
    second = pd.read_csv(tmp_path / "killed" / "logs" / "attempt2" / "metrics.csv")
    assert second["step"].min() >= 50  # from the step-50 checkpoint, the data order continuing per rank
    assert record["metrics"] == pytest.approx(straight["metrics"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_sweep_runs_a_two_process_run_once_in_a_process_of_its_own(tmp_path, strategy):
    """Lightning starts a run's second rank by re-running the command line; from a sweep worker that
    was the sweep's, and the second rank's sweep hung the run. One point, two processes, then a
    second start that finds it done."""
    sets = dict(s.split("=", 1) for s in TINY)
    model = {k: yaml.safe_load(v) for k, v in sets.items() if not k.startswith(("recipe.", "mqar."))}
    doc = {"name": "two", "variants": ["llama"], "tasks": ["mqar"], "seeds": [0], "results": str(tmp_path / "results"),
           "sets": model, "recipe": {**{k.removeprefix("recipe."): yaml.safe_load(v) for k, v in sets.items()
                                        if k.startswith("recipe.")}, "strategy": strategy, "devices": 2},
           "mqar": {**{k.removeprefix("mqar."): yaml.safe_load(v) for k, v in sets.items() if k.startswith("mqar.")},
                    "cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(doc))
    for _attempt in range(2):
        done = subprocess.run([sys.executable, "-m", "ablate.cli", "sweep", str(path)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        assert "1 of 1 points complete" in done.stdout
    record = json.loads((tmp_path / "results" / "runs" / "llama-mqar-s0" / "run.json").read_text())
    assert record["status"] == "finished" and record["world_size"] == 2 and record["attempts"] == 1
    single, _ = run(tmp_path, "single")  # the same model and data in one process
    assert record["metrics"] == pytest.approx(single["metrics"], rel=1e-5)
    assert not list((tmp_path / "results" / "runs").glob(".*.json"))  # the hand-over file is gone


@pytest.mark.parametrize("devices,spans", [("auto", False), (1, False), ("1", False), (2, True), ("2", True),
                                           ([0], False), ([0, 1], True), ("0,1", True), ("0,", False)])
def test_a_run_spans_devices_as_lightning_counts_them(devices, spans):
    import dataclasses

    from ablate.train.own_process import spans_devices
    from ablate.train.recipe import RecipeConfig

    assert spans_devices(dataclasses.replace(RecipeConfig(), devices=devices)) is spans


def test_all_devices_span_when_more_than_one_gpu_is_visible(monkeypatch):
    import dataclasses

    from ablate.train.own_process import spans_devices
    from ablate.train.recipe import RecipeConfig

    for count, spans in ((1, False), (2, True)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        assert spans_devices(dataclasses.replace(RecipeConfig(), devices=-1)) is spans
        assert spans_devices(dataclasses.replace(RecipeConfig(), devices="-1")) is spans
