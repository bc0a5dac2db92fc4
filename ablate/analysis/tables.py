"""Results tables: one row per variant (and task, and sweep grid point), each metric as mean and
95% CI over seeds; as markdown, CSV and LaTeX."""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path

import pandas as pd

from ablate.analysis.records import GRID_PREFIX, load_runs

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


def grid_knob_names(df: pd.DataFrame) -> list[str]:
    """The sweep grid knobs the runs vary (``attention.n_heads``), in first-seen order: each is a
    column of the table and part of its row key."""
    return [c.removeprefix(GRID_PREFIX) for c in df if c.startswith(GRID_PREFIX)]


def knob_sort_key(value) -> tuple:
    """Numbers in numeric order (2 before 16, which the run directories' names do not give), then
    anything else by its text, then runs without the knob."""
    if pd.isna(value):
        return (2, 0, "")
    if isinstance(value, numbers.Number):
        return (0, value, "")
    return (1, 0, str(value))


def row_order(rows: list[dict], knobs: list[str], order: list[str] | None) -> list[dict]:
    """Rows by task and variant (the given variant order, else first seen), then by grid knobs."""
    if order:
        rank = {v: i for i, v in enumerate(order)}

        def group(row):  # tasks alphabetically, variants as ordered, unlisted ones last
            return (row["task"], rank.get(row["variant"], len(rank)))
    else:
        first_seen = {key: i for i, key in enumerate(dict.fromkeys((r["task"], r["variant"]) for r in rows))}

        def group(row):
            return (first_seen[(row["task"], row["variant"])],)
    return sorted(rows, key=lambda row: (group(row), *(knob_sort_key(row[k]) for k in knobs)))


def summarize(df: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Finished runs grouped by (task, variant, every grid knob): n seeds, parameters, cache, and
    mean/ci of metrics. Grid knob columns follow ``variant``; ``attrs["knobs"]`` names them."""
    done = df[df["status"] == "finished"]
    knobs = grid_knob_names(done)
    keys = ["task", "variant", *(GRID_PREFIX + k for k in knobs)]
    rows = []
    # dropna=False: a run without one of the knobs (e.g. from an older sweep file) keeps its own row
    for values, g in done.groupby(keys, sort=False, dropna=False):
        task, variant, *knob_values = values
        row = {"task": task, "variant": variant, **dict(zip(knobs, knob_values, strict=True)),
               "seeds": len(g), "params_M": g["params"].iloc[0] / 1e6,
               "non_emb_M": g["params_non_embedding"].iloc[0] / 1e6, "attn:ssm": g["attn_ssm_ratio"].iloc[0],
               "cache_MB": g["cache_mb"].iloc[0], "headline": g["headline"].iloc[0],
               "eval_limit": g["eval_limit"].max() if "eval_limit" in g else None}
        for col in metric_columns(done):
            row[col] = g[col].mean()
            row[col + " ci95"] = ci95(g[col])
        rows.append(row)
    out = pd.DataFrame(row_order(rows, knobs, order))
    out.attrs["knobs"] = knobs
    out.attrs["directions"] = {m["name"]: m["direction"] for specs in done["metric_specs"] for m in json.loads(specs)}
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


def _knob_text(value) -> str:
    return "-" if pd.isna(value) else str(value)


def shown_metrics(summary: pd.DataFrame) -> list[str]:
    return summary.attrs.get("shown") or (
        [c for c in summary if c.startswith(("val/", "eval/")) and not c.endswith("ci95")] + ["tokens_per_s"])


def shown_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The printed table, every cell as text: what markdown and LaTeX both show."""
    metrics = shown_metrics(summary)
    knobs = {k: summary[k].map(_knob_text) for k in summary.attrs.get("knobs", [])}
    shown = pd.DataFrame({
        "task": summary["task"], "variant": summary["variant"], **knobs, "seeds": summary["seeds"],
        "params (M)": summary["params_M"].map("{:.3f}".format),
        "non-emb (M)": summary["non_emb_M"].map("{:.3f}".format), "attn:ssm": summary["attn:ssm"],
        "cache MB": summary["cache_MB"].map("{:.3f}".format),
    })
    for col in metrics:
        digits = 0 if col == "tokens_per_s" else 3
        shown[column_title(col)] = [_cell(m, c, digits) for m, c in zip(summary[col], summary[col + " ci95"],
                                                                         strict=True)]
    return shown


def table_note(summary: pd.DataFrame) -> str:
    metrics = shown_metrics(summary)
    note = "mean ± 95% CI over seeds (Student t); cache: fp16 decoding state at the longest training sequence"
    if any(c.startswith("eval/lm_eval/") for c in metrics):
        note += ("; lm-eval columns: the headline metric per task (acc_norm where lm-eval reports it, else acc; "
                 "contains for recall), commonsense avg over 7 of the paper's 8 tasks (no TruthfulQA locally); "
                 "every metric is in table.csv")
    limits = summary["eval_limit"].dropna() if "eval_limit" in summary else []
    if len(limits):
        note += f"; evaluations limited to {int(max(limits))} items per task: a quick look, not the full sets"
    return note


def support_line(summary: pd.DataFrame) -> str:
    """What the headline columns can support, from the seeds behind them: with one seed per row no
    interval exists, so no difference is shown to be more than seed noise; with several, the pairs
    of rows (same task, the task's headline metric) whose 95% intervals overlap are not told apart
    by this study. A row of one seed has no interval and counts as overlapping every other; a row
    without a headline value is left out (and counted)."""
    seeds = sorted(set(summary["seeds"]))
    single = int((summary["seeds"] == 1).sum())
    if seeds == [1]:
        return ("support: one seed per row, so no interval: a difference between rows may be seed noise; "
                "rerun with more seeds before reading an order into it")
    parts, missing = [], 0
    for task, g in summary.groupby("task", sort=False):
        metric = g["headline"].dropna().iloc[0] if g["headline"].notna().any() else None
        if metric is None or metric not in g:
            continue
        g = g[g[metric].notna()]
        missing += int(summary.loc[summary["task"] == task, metric].isna().sum())
        mean, ci = g[metric].to_numpy(), g[metric + " ci95"].fillna(float("inf")).to_numpy()
        pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g))]
        overlapping = sum(abs(mean[i] - mean[j]) <= ci[i] + ci[j] for i, j in pairs)
        parts.append(f"{task} {column_title(metric)}: {overlapping} of {len(pairs)} pairs of rows overlap")
    counts = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    line = f"support: {counts} seeds per row"
    if single:
        line += f" ({single} row(s) of one seed: no interval, counted as overlapping every other row)"
    if missing:
        line += f"; {missing} row(s) without a headline value left out"
    if not parts:
        return line + "; no headline metric to compare rows on"
    return (line + f"; 95% intervals of the headline ({'; '.join(parts)}): overlapping pairs are not told "
            "apart by this study, and a pair apart is one comparison of many, not a tested difference")


def to_markdown(summary: pd.DataFrame, scope: str = "") -> str:
    """The table, its note, the support line and the study's own scope line (its sweep file's
    ``scope``: what its scale can and cannot say)."""
    if summary.empty:
        return "(no finished runs)\n"
    lines = [table_note(summary), support_line(summary), f"scope: {scope}" if scope else ""]
    text = "\n".join(line for line in lines if line)
    return shown_table(summary).to_markdown(index=False, disable_numparse=True) + f"\n\n{text}\n"


def to_latex(summary: pd.DataFrame) -> str:
    """The markdown table's columns as a booktabs tabular for a paper; the note as a comment above
    it (the caption is the paper's). Special characters are escaped (test\\_1, 95\\%)."""
    if summary.empty:
        return "% (no finished runs)\n"
    shown = shown_table(summary)
    text_columns = 2  # task and variant left-aligned, the knobs and numbers right-aligned
    tabular = shown.to_latex(index=False, escape=True, column_format="l" * text_columns
                             + "r" * (shown.shape[1] - text_columns))
    # pandas leaves "±" as it is; math mode typesets it with any LaTeX input encoding
    return f"% {table_note(summary)}\n% needs \\usepackage{{booktabs}}\n" + tabular.replace("±", r"$\pm$")


def write_tables(results: str | Path, order: list[str] | None = None, scope: str | None = None) -> dict[str, str]:
    """The tables of a results directory. ``scope``: the sweep's scope line, kept in RESULTS/scope.txt
    so a table rebuilt later (``ablate table``) still prints it."""
    results = Path(results)
    scope_file = results / "scope.txt"
    if scope is None:
        scope = scope_file.read_text().strip() if scope_file.exists() else ""
    elif scope:
        results.mkdir(parents=True, exist_ok=True)
        scope_file.write_text(scope + "\n")
    elif scope_file.exists():  # the sweep file no longer has one
        scope_file.unlink()
    runs = load_runs(results)
    summary = summarize(runs, order) if not runs.empty else pd.DataFrame()
    paths = {"markdown": results / "table.md", "csv": results / "table.csv", "latex": results / "table.tex",
             "runs_csv": results / "runs.csv"}
    results.mkdir(parents=True, exist_ok=True)
    paths["markdown"].write_text(to_markdown(summary, scope))
    paths["latex"].write_text(to_latex(summary))
    summary.to_csv(paths["csv"], index=False)
    runs.to_csv(paths["runs_csv"], index=False)
    if not summary.empty and summary["headline"].notna().any():
        from ablate.analysis.plots import headline_vs_cache

        paths["plot"] = headline_vs_cache(summary, results / "headline_vs_cache.png")
    return {k: str(v) for k, v in paths.items()}
