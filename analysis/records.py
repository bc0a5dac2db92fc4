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
        metrics = rec.get("metrics", {})
        # per-part metrics in the task's own order (e.g. the MQAR test grid), then the rest
        ordered = [f"val/{part}/{m}" for part in rec.get("val_parts", []) for m in ("acc", "loss")]
        row.update({k: metrics[k] for k in ordered if k in metrics})
        row.update(metrics)
        rows.append(row)
    return pd.DataFrame(rows)
