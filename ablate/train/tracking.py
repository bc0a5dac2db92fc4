"""Experiment tracking beside the CSV logs every run writes: Weights & Biases and TensorBoard,
through Lightning's own loggers. Tracking is not part of a run's identity (``knob(identity=False)``
on the RunConfig fields that hold it): watching a run differently does not make it another run.

W&B runs offline by default (the run directory's wandb/ folder; ``wandb sync`` uploads it later);
``mode: online`` logs live when the service is reachable and falls back to offline, with a note,
when it is not, so a run never fails for lack of network. WANDB_MODE in the environment wins.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ablate.config import knob, to_dict


@dataclass(frozen=True, kw_only=True)
class WandbConfig:
    project: str = knob("ablate", "W&B project (WANDB_PROJECT overrides)")
    group: str | None = knob(None, "W&B group (a sweep sets its name; a single run: its variant)")
    tags: tuple[str, ...] = knob((), "W&B tags (a sweep adds the point's variant, task, seed and knobs)")
    mode: Literal["offline", "online"] = knob("offline", "offline (sync later) or online when reachable")


def _reachable(host: str = "api.wandb.ai", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_logger(cfg, wandb: WandbConfig, run_dir: Path):
    from lightning.pytorch.loggers import WandbLogger

    mode = os.environ.get("WANDB_MODE") or wandb.mode
    if mode == "online" and not _reachable():
        print(f"{run_dir}: W&B is not reachable; logging offline (wandb sync {run_dir / 'wandb'} later)",
              file=sys.stderr)
        mode = "offline"
    return WandbLogger(project=os.environ.get("WANDB_PROJECT", wandb.project), name=run_dir.name,
                       group=wandb.group or cfg.variant, tags=list(wandb.tags), save_dir=str(run_dir), mode=mode,
                       config=to_dict(cfg))


def tensorboard_logger(run_dir: Path, attempt: int):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir, name="tensorboard", version=f"attempt{attempt}", default_hp_metric=False)


def finish_tracking(loggers: list, failed: bool) -> None:
    """End the run's W&B run (marked failed if the run failed): wandb keeps one active run per
    process, and the next run of a sweep worker would otherwise log into this one."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish(exit_code=1 if failed else 0)
