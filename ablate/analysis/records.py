"""Load run records into a flat pandas DataFrame (one row per run)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


def summary_metrics(rec: dict) -> list[dict]:
    """The run's summary metrics with their directions, headline first (``metric_specs``, written
    by the run from its task and evaluations). Records from before ablate wrote them: every
    top-level val/NAME metric, no direction, no headline."""
    if "metric_specs" in rec:
        return rec["metric_specs"]
    return [{"name": k, "direction": None} for k in rec.get("metrics", {}) if k.count("/") == 1]


def evaluation_limit(rec: dict) -> int | None:
    """The item limit of the run's evaluations (in its config, or an ``ablate eval --limit``), if any:
    such columns are a quick look, not the full sets."""
    sections = list(rec.get("config", {}).get("evaluate", {}).values()) + list(rec.get("evaluations", {}).values())
    limits = [s["limit"] for s in sections if isinstance(s, dict) and s.get("limit")]
    return max(limits) if limits else None


GRID_PREFIX = "grid/"  # runs' grid-knob columns: grid/attention.n_heads (never a record field's name)


def grid_assignment(rec: dict) -> dict:
    """The run's sweep grid knobs and their values (``config.grid``, set by the sweep; empty for a
    run outside a grid and for records from before ablate wrote it). A list or mapping value is its
    JSON text, so that tables can group runs by it."""
    knobs = rec.get("config", {}).get("grid") or {}
    return {key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in knobs.items()}


def load_runs(results: str | Path) -> pd.DataFrame:
    """Every RESULTS/runs/*/run.json (or RESULTS/*/run.json) as one row with dotted columns.
    ``metric_specs`` holds the run's summary metrics (JSON), ``headline`` its headline metric,
    ``grid/KEY`` the value of the run's sweep grid knob KEY (only for runs of a grid)."""
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
            "device": rec.get("device"), "dir": str(path.parent), "eval_limit": evaluation_limit(rec),
        }
        row.update({GRID_PREFIX + key: value for key, value in grid_assignment(rec).items()})
        specs = summary_metrics(rec)
        row["metric_specs"] = json.dumps(specs)
        row["headline"] = specs[0]["name"] if specs and specs[0]["direction"] else None
        metrics = rec.get("metrics", {})
        # summary metrics in the task's order, per-part ones in its part order (e.g. the MQAR test
        # grid), then the rest
        ordered = [m["name"] for m in specs]
        ordered += [f"val/{part}/{m}" for part in rec.get("val_parts", []) for m in ("acc", "loss")]
        row.update({k: metrics[k] for k in ordered if k in metrics})
        row.update(metrics)
        rows.append(row)
    return pd.DataFrame(rows)


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Training and validation curves of the runs (``load_runs`` rows) from the CSV logs each run
    writes (RUN/logs/attemptN/metrics.csv): one row per (run, step, metric) with its value. A later
    attempt (a resume) replaces the steps an earlier one logged after its last checkpoint."""
    frames = []
    for _, run in runs.iterrows():
        attempts = sorted(Path(run["dir"]).glob("logs/attempt*/metrics.csv"),
                          key=lambda p: int(p.parent.name.removeprefix("attempt")))
        for attempt, path in enumerate(attempts):
            log = pd.read_csv(path)
            if "step" not in log:
                raise ValueError(f"{path}: no 'step' column (a Lightning CSV log has one)")
            values = [c for c in log if c not in ("epoch", "step")]
            long = log.melt(id_vars=["step"], value_vars=values, var_name="metric").dropna(subset=["value"])
            frames.append(long.assign(run=run["run"], variant=run["variant"], task=run["task"], seed=run["seed"],
                                      attempt=attempt))
    if not frames:
        return pd.DataFrame(columns=["run", "variant", "task", "seed", "step", "metric", "value"])
    curves = pd.concat(frames, ignore_index=True)
    # the last attempt that logged a (run, metric, step) wins
    curves = curves.sort_values("attempt").drop_duplicates(["run", "metric", "step"], keep="last")
    return curves.drop(columns="attempt").sort_values(["run", "metric", "step"], ignore_index=True)
