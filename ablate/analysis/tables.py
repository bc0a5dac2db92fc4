"""Results tables: one row per variant (and task), each metric as mean and 95% CI over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ablate.analysis.records import load_runs

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30; beyond that the normal 1.96.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042]


def ci95(values: pd.Series) -> float:
    values = values.dropna()
    n = len(values)
    if n < 2:
        return float("nan")
    t = T975[n - 2] if n - 1 <= len(T975) else 1.96
    return t * values.std(ddof=1) / math.sqrt(n)


def summary_metric_names(df: pd.DataFrame) -> list[str]:
    """The runs' summary metrics (their tasks' and evaluations'), headline first, in first-seen order."""
    names = [m["name"] for specs in df["metric_specs"] for m in json.loads(specs)]
    return list(dict.fromkeys(names))


def table_metric_names(df: pd.DataFrame) -> list[str]:
    """The summary metrics that are columns of the printed table (a spec's ``table``, default true:
    e.g. lm-eval's headline metric per task and the averages, not every metric it reports)."""
    names = [m["name"] for specs in df["metric_specs"] for m in json.loads(specs) if m.get("table", True)]
    return list(dict.fromkeys(names))


def metric_columns(df: pd.DataFrame) -> list[str]:
    # per-part accuracies in the order the runs logged them (the test grid's order)
    per_part = [c for c in df if c.startswith("val/") and c.count("/") == 2 and c.endswith("/acc")]
    return [c for c in summary_metric_names(df) if c in df] + per_part + ["tokens_per_s"]


def summarize(df: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Finished runs grouped by (task, variant): n seeds, parameters, cache, and mean/ci of metrics."""
    done = df[df["status"] == "finished"]
    rows = []
    for (task, variant), g in done.groupby(["task", "variant"], sort=False):
        row = {"task": task, "variant": variant, "seeds": len(g), "params_M": g["params"].iloc[0] / 1e6,
               "non_emb_M": g["params_non_embedding"].iloc[0] / 1e6, "attn:ssm": g["attn_ssm_ratio"].iloc[0],
               "cache_MB": g["cache_mb"].iloc[0], "headline": g["headline"].iloc[0],
               "eval_limit": g["eval_limit"].max() if "eval_limit" in g else None}
        for col in metric_columns(done):
            row[col] = g[col].mean()
            row[col + " ci95"] = ci95(g[col])
        rows.append(row)
    out = pd.DataFrame(rows)
    if order and not out.empty:
        rank = {v: i for i, v in enumerate(order)}
        out = out.sort_values(["task", "variant"], key=lambda s: s.map(rank) if s.name == "variant" else s)
    out = out.reset_index(drop=True)
    per_part = [c for c in metric_columns(done) if c.startswith("val/") and c.count("/") == 2]
    out.attrs["shown"] = [c for c in table_metric_names(done) if c in done] + per_part + ["tokens_per_s"]
    return out


def column_title(metric: str) -> str:
    """val/test_1/acc -> test_1 acc; eval/lm_eval/piqa/acc_norm -> piqa acc_norm; ..._avg -> ... avg."""
    if metric == "tokens_per_s":
        return "train tok/s"
    name = metric.removeprefix("eval/lm_eval/").replace("val/", "").replace("/acc", " acc")
    return name.replace("/", " ").replace("_avg", " avg")


def _cell(mean: float, ci: float, digits: int) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:,.{digits}f}" if pd.isna(ci) else f"{mean:,.{digits}f} ± {ci:,.{digits}f}"


def to_markdown(summary: pd.DataFrame) -> str:
    if summary.empty:
        return "(no finished runs)\n"
    metrics = summary.attrs.get("shown") or (
        [c for c in summary if c.startswith(("val/", "eval/")) and not c.endswith("ci95")] + ["tokens_per_s"])
    shown = pd.DataFrame({
        "task": summary["task"], "variant": summary["variant"], "seeds": summary["seeds"],
        "params (M)": summary["params_M"].map("{:.3f}".format),
        "non-emb (M)": summary["non_emb_M"].map("{:.3f}".format), "attn:ssm": summary["attn:ssm"],
        "cache MB": summary["cache_MB"].map("{:.3f}".format),
    })
    for col in metrics:
        digits = 0 if col == "tokens_per_s" else 3
        shown[column_title(col)] = [_cell(m, c, digits) for m, c in zip(summary[col], summary[col + " ci95"],
                                                                         strict=True)]
    note = "mean ± 95% CI over seeds (Student t); cache: fp16 decoding state at the longest training sequence"
    if any(c.startswith("eval/lm_eval/") for c in metrics):
        note += ("; lm-eval columns: the headline metric per task (acc_norm where lm-eval reports it, else acc; "
                 "contains for recall), commonsense avg over 7 of the paper's 8 tasks (no TruthfulQA locally); "
                 "every metric is in table.csv")
    limits = summary["eval_limit"].dropna() if "eval_limit" in summary else []
    if len(limits):
        note += f"; evaluations limited to {int(max(limits))} items per task: a quick look, not the full sets"
    return shown.to_markdown(index=False, disable_numparse=True) + f"\n\n{note}\n"


def write_tables(results: str | Path, order: list[str] | None = None) -> dict[str, str]:
    results = Path(results)
    runs = load_runs(results)
    summary = summarize(runs, order) if not runs.empty else pd.DataFrame()
    paths = {"markdown": results / "table.md", "csv": results / "table.csv", "runs_csv": results / "runs.csv"}
    results.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(to_markdown(summary))
    summary.to_csv(paths["csv"], index=False)
    runs.to_csv(paths["runs_csv"], index=False)
    if not summary.empty and summary["headline"].notna().any():
        from ablate.analysis.plots import headline_vs_cache

        paths["plot"] = headline_vs_cache(summary, results / "headline_vs_cache.png")
    return {k: str(v) for k, v in paths.items()}
