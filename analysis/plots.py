"""Figures from summaries (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def recall_vs_cache(summary: pd.DataFrame, path: str | Path) -> Path:
    """Mean MQAR accuracy (95% CI bars) against fp16 decoding-cache size, one point per variant."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = summary[summary["task"] == "mqar"]
    for _, r in rows.iterrows():
        ci = r.get("val/acc ci95")
        ax.errorbar(r["cache_MB"], r["val/acc"], yerr=None if pd.isna(ci) else ci, fmt="o", capsize=3)
        ax.annotate(r["variant"], (r["cache_MB"], r["val/acc"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("decoding cache (MB, fp16, longest training sequence)")
    ax.set_ylabel("MQAR accuracy (mean over test segments)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
