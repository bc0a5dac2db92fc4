"""The kill suite, measured: kill -9 of the whole `ablate sweep` process group (launcher and
workers) at random moments, N times, restarting each time, then once more to the end; then count
kills, trials, duplicates and lost points, and compare every run's metrics with an uninterrupted
sweep of the same file. Prints one markdown row for benchmarks/NOTES.md.

    python -m benchmarks.kill_suite [--kills 10] [--storage URL]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from ablate.sweep.grid import load_sweep
from ablate.sweep.launch import launch
from ablate.sweep.study import open_storage


def sweep_file(folder: Path) -> Path:
    folder.mkdir(parents=True)
    doc = {"name": "kills", "variants": ["llama", "mamba"], "seeds": [0, 1], "results": str(folder / "results"),
           "sets": {"size.d_model": 32, "size.n_layers": 2, "attention.n_heads": 2, "attention.n_kv_heads": 2,
                    "mlp.hidden": 64, "mamba.d_state": 4},
           "recipe": {"max_steps": 60, "eval_every": 20, "batch_size": 8, "warmup_steps": 2},
           "mqar": {"vocab_size": 32, "cache_dir": str(folder / "cache"),
                    "train": [{"seq_len": 16, "n_pairs": 2, "n_examples": 200}],
                    "test": [{"seq_len": 16, "n_pairs": 2, "n_examples": 50}]},
           "heartbeat_s": 1, "grace_s": 2}
    path = folder / "kills.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--storage", help="Optuna storage URL (default: SQLite in a temporary folder)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kill-suite-"))
    straight = load_sweep(sweep_file(root / "straight"))
    assert launch(str(straight.path), workers=2) == 0
    path = sweep_file(root / "killed")
    rng, killed, started = random.Random(0), 0, time.time()
    for _ in range(args.kills):
        storage = ["--storage", args.storage] if args.storage else []
        command = [sys.executable, "-m", "ablate.cli", "sweep", str(path), "--workers", "2", *storage]
        proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(2.0, 9.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed += 1
    code = launch(str(path), workers=2, storage_url=args.storage)
    sweep = load_sweep(path)
    trials = optuna.load_study(study_name="kills", storage=open_storage(args.storage or sweep.storage)).get_trials()
    complete = [t.user_attrs["point"] for t in trials if t.state == TrialState.COMPLETE]
    records = {pid: json.loads((sweep.run_dir(pt) / "run.json").read_text()) for pid, (pt, _) in sweep.runs.items()}
    expected = {pid: json.loads((straight.run_dir(pt) / "run.json").read_text())
                for pid, (pt, _) in straight.runs.items()}
    same = all(abs(records[p]["metrics"][k] - v) <= 1e-6 * abs(v) for p in records
               for k, v in expected[p]["metrics"].items())
    attempts = sum(r["attempts"] for r in records.values())
    print("| kills | restarts | points | trials | failed attempts | run attempts | duplicates | lost | "
          "metrics equal | final exit | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {killed} | {args.kills} | {len(sweep.runs)} | {len(trials)} | "
          f"{sum(t.state == TrialState.FAIL for t in trials)} | {attempts} | {len(complete) - len(set(complete))} | "
          f"{len(set(sweep.runs) - set(complete))} | {'yes' if same else 'NO'} | {code} | "
          f"{time.time() - started:.0f} |")


if __name__ == "__main__":
    main()
