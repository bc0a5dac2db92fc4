"""Attention-map statistics and figures from the files ``ablate maps`` writes (maps.json and one
layerN.npz per layer); numpy, pandas and matplotlib only, no model code.

A map is (heads, S, S) over all S = n_meta + T positions, rows summing to 1: attention
probabilities, or the SSM's implicit attention as row-normalised magnitudes per head group.
Statistics are over the real query rows (the paper's Fig. 7 categories and App. D entropy):

    meta   mass on the meta-token columns            bos   mass on the first real token
    self   mass on the diagonal                      prev  mass on the token before
    other  everything else (the rest of the context)
    entropy       -sum p log p of the row (nats)
    entropy_real  the same over the real columns only, renormalised (the map "without meta tokens")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.analysis.plots import plt, save

CATEGORIES = ["meta", "bos", "self", "prev", "other"]
PATHS = {"attention": "attention heads", "ssm": "SSM (implicit attention)"}
MARK_COLOURS = {"key": "tab:blue", "value": "tab:green", "query": "tab:red"}


def load_meta(directory: str | Path) -> dict:
    """maps.json: run, variant, input, n_meta, tokens, marks, the layers and their map shapes."""
    path = Path(directory) / "maps.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (written by `ablate maps RUN_DIR --out {directory}`)")
    return json.loads(path.read_text())


def load_layer(directory: str | Path, layer: int) -> dict[str, np.ndarray]:
    """One layer's maps, path -> (heads, S, S) (layerN.npz)."""
    with np.load(Path(directory) / f"layer{layer}.npz") as arrays:
        return {kind: arrays[kind] for kind in arrays.files}


def layers(meta: dict) -> list[int]:
    return sorted(int(i) for i in meta["layers"])


def query_rows(S: int, n_meta: int) -> np.ndarray:
    """Real query rows that have a BOS, a previous token and themselves as three distinct keys
    (from the third real token on), so the categories partition each row."""
    return np.arange(n_meta + 2, S)


def mass(m: np.ndarray, n_meta: int) -> dict[str, np.ndarray]:
    """m (heads, S, S) -> per head, the mean row mass of each category over the real query rows."""
    rows = query_rows(m.shape[-1], n_meta)
    if len(rows) == 0:
        raise ValueError(f"a map of {m.shape[-1]} positions with {n_meta} meta tokens has no query row "
                         "with a BOS, a previous token and itself (need 3 real tokens)")
    picked = m[:, rows]  # (heads, R, S)
    out = {"meta": picked[..., :n_meta].sum(-1), "bos": picked[..., n_meta],
           "self": m[:, rows, rows], "prev": m[:, rows, rows - 1]}
    out["other"] = picked.sum(-1) - sum(out.values())
    return {k: v.mean(-1) for k, v in out.items()}


def row_entropy(p: np.ndarray) -> np.ndarray:
    """-sum p log p over the last axis, 0 log 0 = 0."""
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(-1)


def entropy(m: np.ndarray, n_meta: int) -> dict[str, np.ndarray]:
    """m (heads, S, S) -> per head, mean row entropy over the real rows, with the meta columns and
    without them (the real columns renormalised)."""
    rows = m[:, n_meta:]
    real = rows[..., n_meta:]
    real = real / np.maximum(real.sum(-1, keepdims=True), np.finfo(real.dtype).tiny)
    return {"entropy": row_entropy(rows).mean(-1), "entropy_real": row_entropy(real).mean(-1)}


def layer_stats(meta: dict, layer: int, maps: dict[str, np.ndarray]) -> list[dict]:
    """One row per (path, head) of one layer with the mass categories and entropies."""
    n_meta, rows = meta["n_meta"], []
    for path, m in maps.items():
        stats = {**mass(m, n_meta), **entropy(m, n_meta)}
        for head in range(m.shape[0]):
            rows.append({"run": meta["run"], "variant": meta["variant"], "layer": layer, "path": path, "head": head,
                         "n_meta": n_meta, **{k: float(v[head]) for k, v in stats.items()}})
    return rows


def map_stats(directory: str | Path) -> pd.DataFrame:
    """The statistics of every layer ``ablate maps`` wrote to ``directory``, one layer in memory at a time."""
    meta = load_meta(directory)
    return pd.DataFrame([row for i in layers(meta) for row in layer_stats(meta, i, load_layer(directory, i))])


def load_map_stats(directories) -> pd.DataFrame:
    """map_stats.csv of several ``ablate maps`` outputs as one table."""
    frames = [pd.read_csv(Path(d) / "map_stats.csv") for d in directories]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _mark_positions(ax, marks: dict[str, list[int]], n_meta: int, S: int) -> None:
    """Key / value / query positions as coloured ticks along the top (keys axis) and the left
    (queries axis); the meta-token block's edge as dashed lines."""
    for name, positions in marks.items():
        pos = np.asarray(positions) + n_meta
        colour = MARK_COLOURS.get(name, "black")
        ax.scatter(pos, np.full(len(pos), -0.02 * S - 1), marker="v", s=9, color=colour, clip_on=False)
        ax.scatter(np.full(len(pos), -0.02 * S - 1), pos, marker=">", s=9, color=colour, clip_on=False)
    if n_meta:
        for line in (ax.axvline, ax.axhline):
            line(n_meta - 0.5, color="white", lw=0.8, ls="--")


def plot_layer(meta: dict, layer: int, maps: dict[str, np.ndarray], path: str | Path) -> Path:
    """One layer: every attention head, then every SSM head (group), side by side."""
    from matplotlib.colors import PowerNorm

    panels = [(kind, h, m[h]) for kind, m in maps.items() for h in range(m.shape[0])]
    n_meta, marks = meta["n_meta"], meta.get("marks") or {}
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.0 * rows + 0.9), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (kind, head, m) in zip(axes.flat, panels, strict=False):
        S = m.shape[-1]
        # the first rows have one or two keys (weights near 1); the 99.5th percentile keeps the rest visible
        top = max(float(np.quantile(m[m > 0], 0.995)) if (m > 0).any() else 0.0, 1e-9)
        image = ax.imshow(m, cmap="magma", norm=PowerNorm(0.5, vmin=0, vmax=top),
                          interpolation="nearest" if S <= 256 else "antialiased")
        _mark_positions(ax, marks, n_meta, S)
        unit = (meta.get("ssm_units") or {}).get(str(layer), "head group")
        label = "attention head" if kind == "attention" else f"SSM {unit}"
        ax.set_title(f"{label} {head}", fontsize=10, color="tab:purple" if kind == "ssm" else "black")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.yaxis.get_major_locator().set_params(integer=True)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label("weight (square-root scale, top 0.5% clipped)", fontsize=8)
    window = (meta.get("windows") or {}).get(str(layer))
    span = "global" if window is None else f"window {window}"
    title = f"{meta['variant']} ({meta['run']}), layer {layer} ({span}): {meta['input']}"
    if n_meta:
        title += f"; {n_meta} meta tokens first (dashed)"
    fig.suptitle(title, fontsize=10)
    if marks:
        handles = [plt.Line2D([], [], marker="v", ls="", color=MARK_COLOURS.get(n, "black"), label=n) for n in marks]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False,
                   title="positions marked on the axes", title_fontsize=9)
    legend_room = 0.7 / fig.get_figheight() if marks else 0  # inches kept free for the legend
    fig.tight_layout(rect=(0, legend_room, 1, 1 - 0.3 / fig.get_figheight()))
    return save(fig, path)


def plot_maps(directory: str | Path) -> dict[str, Path]:
    """Every layer's figure (PNG and PDF) beside the maps: layerN.png / layerN.pdf."""
    directory = Path(directory)
    meta = load_meta(directory)
    written = {}
    for layer in layers(meta):
        maps = load_layer(directory, layer)
        written[f"layer{layer}"] = plot_layer(meta, layer, maps, directory / f"layer{layer}.png")
        plot_layer(meta, layer, maps, directory / f"layer{layer}.pdf")
    return written


def plot_mass(stats: pd.DataFrame, path: str | Path) -> Path:
    """Per run and path, the mean mass per category and layer as stacked bars (Hymba Fig. 7)."""
    groups = list(stats.groupby(["run", "path"], sort=False))
    cols = min(len(groups), 4)
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols + 1.5, 3.4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    colours = dict(zip(CATEGORIES, ["tab:orange", "tab:gray", "tab:purple", "tab:cyan", "tab:olive"], strict=True))
    for ax, ((_, kind), g) in zip(axes.flat, groups, strict=False):
        per_layer = g.groupby("layer")[CATEGORIES].mean()
        bottom = np.zeros(len(per_layer))
        for cat in CATEGORIES:
            ax.bar(per_layer.index.astype(str), per_layer[cat], bottom=bottom, color=colours[cat], label=cat)
            bottom += per_layer[cat].to_numpy()
        ax.set_title(f"{g['variant'].iloc[0]}\n{PATHS.get(kind, kind)}", fontsize=9)
        ax.set_xlabel("layer")
        ax.set_ylim(0, 1)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean mass per query row")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=9, title="keys")
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    return save(fig, path)


def entropy_comparison(stats: pd.DataFrame, runs: list[str]) -> pd.DataFrame:
    """Mean entropy per (path, layer) of each named run side by side, and the second minus the first
    (App. D's comparison, e.g. roadmap D against E: negative means sharper maps)."""
    missing = sorted(set(runs) - set(stats["run"]))
    if missing or len(runs) != 2:
        have = ", ".join(dict.fromkeys(stats["run"]))
        raise ValueError(f"compare two runs with map statistics; asked {runs}, have: {have}")
    per_layer = stats[stats["run"].isin(runs)].groupby(["path", "layer", "run"])["entropy"].mean().unstack("run")
    table = per_layer[runs].copy()
    table[f"{runs[1]} - {runs[0]}"] = table[runs[1]] - table[runs[0]]
    return table.reset_index()


def plot_entropy(stats: pd.DataFrame, path: str | Path, runs: list[str] | None = None) -> Path:
    """Mean map entropy per layer, one line per run, a panel per path (Hymba App. D, Fig. 15): solid
    with the meta-token columns, dashed over the real columns only (runs with meta tokens)."""
    if runs:
        missing = sorted(set(runs) - set(stats["run"]))
        if missing:
            raise ValueError(f"no map statistics for runs {missing}; have: {', '.join(dict.fromkeys(stats['run']))}")
        stats = stats[stats["run"].isin(runs)]
    kinds = [k for k in PATHS if k in set(stats["path"])]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for i, (run, g) in enumerate(stats[stats["path"] == kind].groupby("run", sort=False)):
            per_layer = g.groupby("layer")[["entropy", "entropy_real"]].mean()
            colour = f"C{i}"
            name = f"{g['variant'].iloc[0]} ({run})"
            ax.plot(per_layer.index, per_layer["entropy"], "o-", color=colour, label=name)
            if g["n_meta"].iloc[0]:
                ax.plot(per_layer.index, per_layer["entropy_real"], "o--", color=colour,
                        label=f"{name}, real columns only")
        ax.set_title(PATHS[kind])
        ax.set_xlabel("layer")
        ax.set_ylabel("mean row entropy (nats)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)
