"""FSDP (recipe.strategy fsdp: FSDP2 through Lightning's ModelParallelStrategy) on a GPU, against the
same run without it, and a killed FSDP run resumed; one table. Run by benchmarks/gpu_fsdp.sh on
the device (one GPU: FSDP over a world of one, which still takes every FSDP code path but the
collectives' traffic: sharding, the gathered checkpoint, compiled blocks under fully_shard).

    python -m benchmarks.gpu_fsdp OUT_DIR [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

DATA = Path("../shared/data")


def command(out: Path, name: str, strategy: str, steps: int, variant: str, d_model: int = 512,
            seq_len: int = 512) -> list[str]:
    text = {"train": [str(DATA / "tinyshakespeare" / "input.txt"), str(DATA / "gutenberg" / "2701-0.txt"),
                      str(DATA / "gutenberg" / "1342-0.txt")],
            "val": [str(DATA / "gutenberg" / "98-0.txt")], "vocab_size": 8192, "seq_len": seq_len,
            "max_val_tokens": 65536, "cache_dir": str(out / "cache")}
    model = [f"size.d_model={d_model}", "size.n_layers=8", "attention.n_heads=8", "attention.n_kv_heads=4"]
    sets = [*model, *(f"text.{k}={json.dumps(v)}" for k, v in text.items()),
            f"recipe.max_steps={steps}", f"recipe.eval_every={steps // 3}", "recipe.batch_size=32",
            "recipe.warmup_steps=30", "recipe.lr=0.001", f"recipe.strategy={strategy}", "recipe.devices=1"]
    return [sys.executable, "-m", "ablate.cli", "train", variant, "--task", "text", "--quiet", "--out", str(out),
            "--name", name, *(x for s in sets for x in ("--set", s))]


def curve(run_dir: Path) -> pd.Series:
    frames = [pd.read_csv(p) for p in sorted((run_dir / "logs").glob("attempt*/metrics.csv"))]
    frame = pd.concat(frames)
    return frame.dropna(subset=["val/loss"]).groupby("step")["val/loss"].last()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variant", default="roadmap-e-meta")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=512, help="(a CPU smoke test: --d-model 64 --seq-len 64)")
    args = parser.parse_args()
    out = args.out
    rows = []
    for name, strategy in [("plain", "auto"), ("fsdp", "fsdp")]:
        started = time.time()
        done = subprocess.run(command(out, name, strategy, args.steps, args.variant, args.d_model, args.seq_len),
                              capture_output=True, text=True)
        print(f"{name}: rc {done.returncode}, {time.time() - started:.0f} s", flush=True)
        if done.returncode:
            print(done.stderr[-4000:], flush=True)
            continue
        rows.append(name)
    # the FSDP run killed after its first checkpoint, then started again
    cmd = command(out, "fsdp-killed", "fsdp", args.steps, args.variant, args.d_model, args.seq_len)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = out / "fsdp-killed" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 400
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    killed_at = time.time()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, capture_output=True, text=True)
    print(f"fsdp-killed: killed {'after its first checkpoint' if ckpt.exists() else 'before any checkpoint'}"
          f" ({killed_at:.0f}), resumed rc {resumed.returncode}", flush=True)
    if resumed.returncode:
        print(resumed.stderr[-4000:], flush=True)
    else:
        rows.append("fsdp-killed")
    table = []
    for name in rows:
        record = json.loads((out / name / "run.json").read_text())
        losses = curve(out / name)
        second = None
        if record["attempts"] > 1:
            second = pd.read_csv(out / name / "logs" / "attempt2" / "metrics.csv")["step"].min()
        table.append({"run": name, "strategy": record["config"]["recipe"]["strategy"], "world": record["world_size"],
                      "attempts": record["attempts"], "precision": record["precision"],
                      "compile": record["backends"].get("compile"), "params (M)": record["params"]["total"] / 1e6,
                      "tokens/s": round(record["tokens_per_s"] or 0),
                      **{f"val loss @{step}": round(v, 4) for step, v in losses.items()},
                      "attempt 2 first logged step": second})
    frame = pd.DataFrame(table)
    try:
        shown = frame.to_markdown(index=False)
    except ImportError:  # no tabulate on this machine
        shown = frame.to_string(index=False)
    print(shown)
    (out / "fsdp_table.md").write_text(shown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
