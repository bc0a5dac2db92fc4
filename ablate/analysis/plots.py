"""Figures from summaries (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def headline_vs_cache(summary: pd.DataFrame, path: str | Path) -> Path:
    """Each task's headline metric (mean, 95% CI bars) against fp16 decoding-cache size, one point
    per variant (and grid point) and one panel per task (the metric and its direction come from the run records)."""
    tasks = [t for t in dict.fromkeys(summary["task"]) if summary.loc[summary["task"] == t, "headline"].notna().any()]
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = summary[summary["task"] == task]
        metric = rows["headline"].dropna().iloc[0]
        for _, r in rows.iterrows():
            ci = r.get(f"{metric} ci95")
            ax.errorbar(r["cache_MB"], r[metric], yerr=None if pd.isna(ci) else ci, fmt="o", capsize=3)
            knobs = [f"{k.split('/')[-1].split('.')[-1]}={r[k]}" for k in summary.attrs.get("knobs", [])
                     if pd.notna(r.get(k))]  # a grid point: variant and its knob values
            ax.annotate(" ".join([r["variant"], *knobs]), (r["cache_MB"], r[metric]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("decoding cache (MB, fp16, longest training sequence)")
        ax.set_ylabel(f"{metric} (headline metric; mean over seeds)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
