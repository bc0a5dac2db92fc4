"""Load run records into a flat pandas DataFrame (one row per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def load_runs(results: str | Path) -> pd.DataFrame:
    """Every RESULTS/runs/*/run.json (or RESULTS/*/run.json) as one row with dotted columns."""
    results = Path(results)
    paths = sorted(results.glob("runs/*/run.json")) or sorted(results.glob("*/run.json"))
    rows = []
    for path in paths:
        rec = json.loads(path.read_text())
        row = {
            "run": rec["name"], "variant": rec["variant"], "task": rec["task"], "seed": rec["seed"],
            "status": rec["status"], "reason": rec.get("reason"),
            "params": rec["params"]["total"], "params_non_embedding": rec["params"]["non_embedding"],
            "attn_ssm_ratio": rec["params"]["attn_ssm_ratio"],
            "cache_mb": rec["cache_bytes"]["fp16"]["total"] / 1e6, "cache_seq_len": rec["cache_seq_len"],
            "tokens_per_s": rec.get("tokens_per_s"), "precision": rec.get("precision"),
            "device": rec.get("device"), "dir": str(path.parent),
        }
        row.update({k: v for k, v in rec.get("metrics", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)
