"""Head-importance heat maps from importance.csv (``ablate importance`` writes it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ablate.analysis.plots import plt, save


def load_importance(paths) -> pd.DataFrame:
    frames = [pd.read_csv(p) for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _heat(ax, grid: pd.DataFrame, title: str, limit: float):
    image = ax.imshow(grid.to_numpy(dtype=float), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), [str(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [str(r) for r in grid.index])
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    for (r, c), value in np.ndenumerate(grid.to_numpy(dtype=float)):
        if not np.isnan(value):
            ax.text(c, r, f"{value:+.3f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(value) > 0.6 * limit else "black")
    return image


def plot_importance(table: pd.DataFrame, path: str | Path) -> Path:
    """Per run: the drop in the headline metric with each path zeroed (layer x path) and, where
    measured, with each attention head zeroed (layer x head); red = worse without it."""
    runs = list(dict.fromkeys(table["run"]))
    has_heads = table["head"].notna().any()
    height = (0.5 * table["layer"].nunique() + 2.2) * len(runs)
    fig, axes = plt.subplots(len(runs), 2 if has_heads else 1, figsize=(11 if has_heads else 6, height),
                             squeeze=False, layout="constrained")
    limit = max(float(table["drop"].abs().max()), 1e-6)
    for row, run in zip(axes, runs, strict=True):
        t = table[table["run"] == run]
        metric, base = t["metric"].iloc[0], t["baseline"].iloc[0]
        paths = t[t["head"].isna()].pivot(index="layer", columns="path", values="drop")
        image = _heat(row[0], paths, f"{t['variant'].iloc[0]}: drop in {metric} (baseline {base:.3f})\n"
                      f"with the path zeroed ({', '.join(sorted(set(t['zeroed'])))})", limit)
        row[0].set_xlabel("path")
        if has_heads:
            heads = t[t["head"].notna()].assign(head=lambda d: d["head"].astype(int))
            grid = heads.pivot(index="layer", columns="head", values="drop")
            _heat(row[1], grid, f"{t['variant'].iloc[0]}: drop in {metric} with one attention head zeroed", limit)
            row[1].set_xlabel("attention head")
        fig.colorbar(image, ax=list(row), label=f"drop in {metric} (positive: worse)", shrink=0.9)
    return save(fig, path)
