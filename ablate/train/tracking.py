"""Weights & Biases logging: online when the service is reachable (or WANDB_MODE says so),
offline otherwise, so a run never fails for lack of network."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _reachable(host: str = "api.wandb.ai", port: int = 443, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_logger(cfg, run_dir: Path):
    from lightning.pytorch.loggers import WandbLogger

    from ablate.config import to_dict

    mode = os.environ.get("WANDB_MODE") or ("online" if _reachable() else "offline")
    return WandbLogger(project=os.environ.get("WANDB_PROJECT", "ablate"), name=run_dir.name,
                       group=cfg.variant, save_dir=str(run_dir), mode=mode, config=to_dict(cfg))
