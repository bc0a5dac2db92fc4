"""A multi-device run started from a sweep worker, in a process of its own.

Lightning starts the other ranks of a multi-device run (recipe.devices > 1, ddp or fsdp) by running
again the command line of the process that called ``fit``. In a sweep worker that is the sweep
launcher's command, so each extra rank would start a whole sweep of its own (measured: the second
rank's sweep claimed nothing and the run hung). A worker therefore hands such a run to

    python -m ablate.train.own_process CONFIG.json RUN_DIR [--replace] [--threads N]

whose re-runs are exactly that run's other ranks. CONFIG.json is the resolved RunConfig
(``to_dict``), written by the worker outside the run directory (``--replace`` may move that aside).
A study's pruner cannot reach into another process, so such runs train without one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ablate.config import ConfigError, from_dict, to_dict
from ablate.train.config import RunConfig
from ablate.train.recipe import RecipeConfig


def spans_devices(recipe: RecipeConfig) -> bool:
    """Whether a run takes several devices for itself, read as Lightning reads ``devices``: N (or
    "N") devices, a list or "0,1" of device indices, -1 (or "-1") every visible GPU; ``auto`` is the
    one device its worker is pinned to."""
    devices = recipe.devices
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            devices = [part for part in text.split(",") if part.strip()]
        elif text.lstrip("-").isdigit():
            devices = int(text)
        else:
            return False  # "auto"
    if isinstance(devices, (list, tuple)):
        return len(devices) > 1
    if devices == -1:
        import torch

        return torch.cuda.device_count() > 1
    return isinstance(devices, int) and devices > 1


def train_in_own_process(cfg: RunConfig, run_dir: Path, replace: bool = False, threads: int | None = None) -> dict:
    """Train ``cfg`` in ``run_dir`` through this module's command line; -> its record. A failed run
    is a RuntimeError carrying the reason its record gives."""
    from ablate.train.run import read_record

    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fd, config_path = tempfile.mkstemp(prefix=f".{run_dir.name}-", suffix=".json", dir=run_dir.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_dict(cfg), f)
        command = [sys.executable, "-m", "ablate.train.own_process", config_path, str(run_dir)]
        command += ["--replace"] if replace else []
        command += ["--threads", str(threads)] if threads else []
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    finally:
        os.unlink(config_path)
    record = read_record(run_dir)
    if done.returncode != 0:
        reason = (record or {}).get("reason") if (record or {}).get("status") == "failed" else None
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"the run's processes exited with code {done.returncode}: {reason or tail[0]}")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablate.train.own_process", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the resolved run config (JSON, as to_dict writes it)")
    parser.add_argument("run_dir")
    parser.add_argument("--replace", action="store_true", help="move a run of another configuration aside")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of each rank")
    args = parser.parse_args(argv)
    from ablate.train.run import train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        cfg = from_dict(RunConfig, json.loads(Path(args.config).read_text()), args.config)
        train(cfg, args.run_dir, replace=args.replace)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
