"""Run identity: a run directory belongs to one configuration. Its record keeps the hash of what
the run computes; starting a run of another configuration in that directory is refused with the
differing keys (or, asked to replace, moves the old run aside), so a table never mixes runs of
two configurations under one name."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import ablate
from ablate.config import ConfigError, to_dict
from ablate.train.config import RunConfig


class RunConflict(ConfigError):
    """A run directory holds a run of another configuration; the message lists the differences."""


def identity(cfg: RunConfig) -> tuple[dict, str]:
    """What a run computes (its configuration without where files live or how it is logged, and
    the ablate version) and a hash of it: two runs are the same run exactly when the hashes match."""
    ident = {"config": to_dict(cfg, identity=True), "ablate": ablate.__version__}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return ident, digest


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two identity dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for k in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(k, "(absent)"), new.get(k, "(absent)"), f"{key}.{k}" if key else k)]
    return [] if old == new else [f"{key}: {json.dumps(old, default=str)} -> {json.dumps(new, default=str)}"]


def check_identity(run_dir: Path, previous: dict | None, cfg: RunConfig, replace: bool) -> dict | None:
    """The previous record if it is a run of this configuration; None if there is none (or it was
    moved aside because ``replace``); otherwise RunConflict naming the differing keys."""
    if previous is None:
        return None
    ident, digest = identity(cfg)
    if previous.get("config_hash") == digest:
        return previous
    if replace:
        move_aside(run_dir, previous.get("config_hash", "unhashed"))
        return None
    if "identity" in previous:
        changed = differences(previous["identity"], ident)
    else:
        changed = ["(the run was made by an ablate that did not record its configuration's identity)"]
    shown = "\n  ".join(changed[:20]) + (f"\n  ... and {len(changed) - 20} more" if len(changed) > 20 else "")
    raise RunConflict(f"{run_dir} holds a run of a different configuration:\n  {shown}\n"
                      "Give this run another name (ablate train --name NEW), or replace the old one "
                      f"(--overwrite: it is moved to {aside_path(run_dir, previous.get('config_hash', 'unhashed'))}, "
                      "not deleted).")


def aside_path(run_dir: Path, digest: str) -> Path:
    """Where a replaced run goes: beside its siblings' parent in .replaced/, one level deeper, so
    result tables (which read RESULTS/runs/*/run.json) never count it."""
    return run_dir.parent / ".replaced" / f"{run_dir.name}-{digest}"


def move_aside(run_dir: Path, digest: str) -> Path:
    aside, n = aside_path(run_dir, digest), 1
    while aside.exists():
        aside, n = aside.with_name(f"{aside_path(run_dir, digest).name}-{n}"), n + 1
    aside.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(aside)
    return aside
