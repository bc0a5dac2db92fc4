"""Figures from summaries and run records (matplotlib, Agg backend: no display needed). Each
function writes one figure and returns its path; the notebooks show the files."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

DPI = 130


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def point_label(row: pd.Series, knobs: list[str]) -> str:
    """A summary row's name: the variant and its grid knob values (short key names)."""
    shown = [f"{k.split('.')[-1]}={row[k]}" for k in knobs if pd.notna(row.get(k))]
    return " ".join([row["variant"], *shown])


def metric_tasks(summary: pd.DataFrame) -> list[str]:
    return [t for t in dict.fromkeys(summary["task"]) if summary.loc[summary["task"] == t, "headline"].notna().any()]


def headline_vs_cache(summary: pd.DataFrame, path: str | Path) -> Path:
    """Each task's headline metric (mean, 95% CI bars) against fp16 decoding-cache size, one point
    per variant (and grid point) and one panel per task (the metric and its direction come from the
    run records); the Pareto front is marked."""
    return headline_vs(summary, "cache_MB", path)


AXES = {"cache_MB": ("decoding cache (MB, fp16, longest training sequence)", "minimize"),
        "tokens_per_s": ("training throughput (tokens/s)", "maximize")}


def pareto_front(points: pd.DataFrame, x: str, x_direction: str, y: str, y_direction: str) -> pd.DataFrame:
    """The points no other point beats on both x and y (in their directions), sorted by x."""
    sign_x = 1 if x_direction == "minimize" else -1
    sign_y = 1 if y_direction == "minimize" else -1
    ranked = points.dropna(subset=[x, y]).assign(_x=lambda d: sign_x * d[x], _y=lambda d: sign_y * d[y])
    ranked = ranked.sort_values(["_x", "_y"])
    front, best = [], float("inf")
    for index, row in ranked.iterrows():
        if row["_y"] < best:
            front.append(index)
            best = row["_y"]
    return points.loc[front].sort_values(x)


def metric_direction(summary: pd.DataFrame, metric: str) -> str:
    """From the run records' metric specs (``summarize`` keeps them in attrs); maximise if unknown."""
    return summary.attrs.get("directions", {}).get(metric) or "maximize"


def headline_vs(summary: pd.DataFrame, x: str, path: str | Path) -> Path:
    """Each task's headline metric against ``x`` (cache_MB or tokens_per_s), Pareto front dashed."""
    xlabel, x_direction = AXES[x]
    tasks = metric_tasks(summary)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    knobs = summary.attrs.get("knobs", [])
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = summary[summary["task"] == task]
        metric = rows["headline"].dropna().iloc[0]
        y_direction = metric_direction(summary, metric)
        for _, r in rows.iterrows():
            ci = r.get(f"{metric} ci95")
            ax.errorbar(r[x], r[metric], yerr=None if pd.isna(ci) else ci, fmt="o", capsize=3)
            ax.annotate(point_label(r, knobs), (r[x], r[metric]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        front = pareto_front(rows, x, x_direction, metric, y_direction)
        ax.plot(front[x], front[metric], "--", color="gray", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + (" (lower is better)" if x_direction == "minimize" else " (higher is better)"))
        better = "higher" if y_direction == "maximize" else "lower"
        ax.set_ylabel(f"{metric} ({better} is better; mean over seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, path)


def loss_curves(curves: pd.DataFrame, path: str | Path, metrics: tuple[str, ...] = ("train/loss", "val/loss"),
                ) -> Path:
    """Per task and metric, each variant's curve: mean over seeds, band from the lowest to the
    highest seed (``records.load_curves`` gives the curves)."""
    tasks = list(dict.fromkeys(curves["task"]))
    metrics = [m for m in metrics if m in set(curves["metric"])]
    fig, axes = plt.subplots(len(tasks), len(metrics), figsize=(6 * len(metrics), 4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        for ax, metric in zip(row, metrics, strict=True):
            part = curves[(curves["task"] == task) & (curves["metric"] == metric)]
            for i, (variant, g) in enumerate(part.groupby("variant", sort=False)):
                by_step = g.groupby("step")["value"]
                mean = by_step.mean()
                ax.plot(mean.index, mean, color=f"C{i % 10}", label=f"{variant} ({g['seed'].nunique()} seeds)")
                if g["seed"].nunique() > 1:
                    ax.fill_between(mean.index, by_step.min(), by_step.max(), color=f"C{i % 10}", alpha=0.2)
            ax.set_xlabel("training step")
            ax.set_ylabel(metric)
            ax.set_title(f"{task}: {metric} (mean over seeds; band: min to max)", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


SEGMENT = re.compile(r"^val/L(\d+)_kv(\d+)/acc$")


def segment_accuracies(summary: pd.DataFrame) -> pd.DataFrame:
    """MQAR per-segment accuracies as rows: point (variant and knobs), seq_len, n_pairs, acc, ci95."""
    knobs = summary.attrs.get("knobs", [])
    rows = []
    for _, r in summary.iterrows():
        for col in summary:
            match = SEGMENT.match(col)
            if match and pd.notna(r[col]):
                rows.append({"point": point_label(r, knobs), "seq_len": int(match[1]), "n_pairs": int(match[2]),
                             "acc": r[col], "ci95": r.get(col + " ci95")})
    return pd.DataFrame(rows)


def mqar_extrapolation(summary: pd.DataFrame, path: str | Path) -> Path:
    """MQAR accuracy against sequence length and against key-value pairs (one line per variant;
    segments beyond the training grid measure extrapolation)."""
    seg = segment_accuracies(summary)
    if seg.empty:
        raise ValueError("no MQAR per-segment accuracies (val/L<len>_kv<pairs>/acc) in the summary")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.3))
    for ax, x, label in ((axes[0], "seq_len", "sequence length (tokens)"), (axes[1], "n_pairs", "key-value pairs")):
        for i, (point, g) in enumerate(seg.groupby("point", sort=False)):
            line = g.groupby(x).agg(acc=("acc", "mean"), ci95=("ci95", "mean")).reset_index()
            ax.errorbar(line[x], line["acc"], yerr=line["ci95"].fillna(0), fmt="o-", capsize=3, color=f"C{i % 10}",
                        label=point)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(seg[x].unique()), [str(v) for v in sorted(seg[x].unique())])
        ax.set_xlabel(label)
        ax.set_ylabel("MQAR accuracy at query positions")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_title("accuracy vs sequence length (mean over segments of that length)", fontsize=10)
    axes[1].set_title("accuracy vs pairs (mean over segments with that many pairs)", fontsize=10)
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return save(fig, path)


def metric_bars(summary: pd.DataFrame, metrics: list[str], path: str | Path) -> Path:
    """One panel per metric: a bar per variant (and grid point) with its 95% CI over seeds."""
    knobs = summary.attrs.get("knobs", [])
    metrics = [m for m in metrics if m in summary and summary[m].notna().any()]
    if not metrics:
        raise ValueError("none of the metrics is in the summary")
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.5, 0.6 * len(summary) + 2) * len(metrics), 4.5),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        rows = summary[summary[metric].notna()]
        labels = [f"{point_label(r, knobs)}\n({r['task']})" if summary["task"].nunique() > 1 else point_label(r, knobs)
                  for _, r in rows.iterrows()]
        ax.bar(range(len(rows)), rows[metric], yerr=rows[metric + " ci95"].fillna(0), capsize=3,
               color=[f"C{i % 10}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (mean, 95% CI over seeds)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save(fig, path)
