"""`ablate maps RUN_DIR`: per layer, the attention heads' maps and the SSM path's implicit maps of
one real input, written as arrays (layerN.npz), a description (maps.json), statistics
(map_stats.csv) and figures (ablate.analysis.maps draws them from the files).

Memory: the model runs once without maps, with hooks that keep each path's input (the projected
slice and its context); then, one layer at a time, the attention probabilities (H, T, S) and the
SSM map grouped over channels, a few channels at a time (``SSMPath.grouped_map``): never a
(B, d_inner, T, T) tensor, and one layer's maps at a time (each is written before the next).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from ablate.api import Run, load_run
from ablate.config import ConfigError
from ablate.mixers.paths.attention import AttentionHeads
from ablate.mixers.paths.mamba2 import Mamba2SSM
from ablate.mixers.paths.ssm import SSMPath
from ablate.probe.inputs import ProbeInput, default_device, task_input, text_input

# the input kinds, named after their builders: "task" (an example of the run's task) and a text sample
INPUTS = {builder.__name__.removesuffix("_input"): builder for builder in (task_input, text_input)}


def path_modules(block) -> dict[str, torch.nn.Module]:
    """The attention heads and the SSM path inside one block's mixer (either may be absent)."""
    found = {}
    for module in block.mixer.modules():
        if isinstance(module, AttentionHeads):
            found["attention"] = module
        elif isinstance(module, SSMPath):
            found["ssm"] = module
    return found


@torch.no_grad()
def capture_path_inputs(model, tokens: torch.Tensor, layers: list[int]) -> dict[int, dict[str, tuple]]:
    """One forward of tokens (B, T); -> per layer and path, the (input, context) it was called with."""
    captured: dict[int, dict[str, tuple]] = {i: {} for i in layers}
    hooks = []
    for i in layers:
        for kind, module in path_modules(model.blocks[i]).items():
            def keep(module, args, i=i, kind=kind):
                captured[i][kind] = args
            hooks.append(module.register_forward_pre_hook(keep))
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def ssm_groups(model, ssm: SSMPath) -> int:
    """Mamba-2: one map per head. Mamba-1: channels grouped like the attention heads (Hymba's
    parallel head pairs them), else one group when the head count does not divide them."""
    if isinstance(ssm, Mamba2SSM):
        return ssm.n_heads
    heads = model.cfg.attention.n_heads
    return heads if ssm.map_units % heads == 0 else 1


def normalise_rows(m: torch.Tensor) -> torch.Tensor:
    """Rows summing to 1 (the SSM map's magnitudes as a distribution over keys, as Hymba's Fig. 7)."""
    return m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)


@torch.no_grad()
def iter_layer_maps(model, tokens: torch.Tensor, layers: list[int] | None = None, chunk: int = 8):
    """tokens (T,) -> yields (layer, {"attention": (H, S, S), "ssm": (G, S, S)}) one layer at a time,
    float32 numpy arrays over all S = n_meta + T positions; rows sum to 1 (SSM: row-normalised
    mean |alpha| per group). Only one layer's maps exist at a time."""
    layers = list(range(len(model.blocks))) if layers is None else layers
    captured = capture_path_inputs(model, tokens[None].to(model.embed.weight.device), layers)
    for i in layers:
        maps = {}
        modules = path_modules(model.blocks[i])
        if "attention" in captured[i]:
            qkv, ctx = captured[i]["attention"]
            _, _, probs = modules["attention"](qkv, dataclasses.replace(ctx, want_map=True))
            maps["attention"] = probs[0].float().cpu().numpy()
        if "ssm" in captured[i]:
            u, ctx = captured[i]["ssm"]
            ssm = modules["ssm"]
            _, _, dt, B, C = ssm.prepare(u, ctx)
            grouped = ssm.grouped_map(dt, B, C, ssm_groups(model, ssm), chunk)
            maps["ssm"] = normalise_rows(grouped[0]).float().cpu().numpy()
        del captured[i]  # this layer's inputs are no longer needed
        yield i, maps


def layer_maps(model, tokens: torch.Tensor, layers: list[int] | None = None, chunk: int = 8) -> dict[int, dict]:
    """Every chosen layer's maps at once (``iter_layer_maps``), for short inputs."""
    return dict(iter_layer_maps(model, tokens, layers, chunk))


def parse_layers(text: str | None, n_layers: int) -> list[int]:
    if not text:
        return list(range(n_layers))
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        layers = [-1]
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {text!r}: allowed: comma-separated layer indices in 0..{n_layers - 1}")
    return layers


def probe_input(run: Run, kind: str, seq_len: int | None, n_pairs: int | None, text: str | None) -> ProbeInput:
    if kind not in INPUTS:
        raise ConfigError(f"--input {kind!r}: allowed: {', '.join(INPUTS)}")
    if kind == "task":
        return task_input(run, seq_len, n_pairs)
    return text_input(run, text, seq_len)


def write_maps(run_dir: str | Path, out: str | Path, input: str = "task", layers: str | None = None,
               seq_len: int | None = None, n_pairs: int | None = None, text: str | None = None,
               figures: bool = True, device: str | None = None) -> dict[str, Path]:
    """Compute one input's maps for a run and write, layer by layer, layerN.npz (one array per
    path), then maps.json (the input and the layers), map_stats.csv and the figures (drawn from the
    files); -> the paths written."""
    from ablate.analysis import maps as map_analysis

    run = load_run(run_dir, default_device(device))
    chosen = parse_layers(layers, len(run.model.blocks))
    sample = probe_input(run, input, seq_len, n_pairs, text)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = {}
    for i, maps in iter_layer_maps(run.model, sample.tokens, chosen):
        np.savez_compressed(out / f"layer{i}.npz", **maps)
        shapes[str(i)] = {kind: list(m.shape) for kind, m in maps.items()}
    meta = {"run": run.record["name"], "variant": run.record["variant"], "task": run.record["task"],
            "run_dir": str(run.path), "input": sample.description, "n_meta": run.model.n_meta,
            "tokens": sample.tokens.tolist(), "token_labels": sample.labels, "marks": sample.marks,
            "layers": shapes, "windows": {str(i): run.model.blocks[i].spec.window for i in chosen},
            "ssm_units": {str(i): "head" if isinstance(path_modules(run.model.blocks[i]).get("ssm"), Mamba2SSM)
                          else "head group" for i in chosen}}
    (out / "maps.json").write_text(json.dumps(meta, indent=1))
    paths = {"meta": out / "maps.json", **{f"layer{i}_maps": out / f"layer{i}.npz" for i in chosen}}
    map_analysis.map_stats(out).to_csv(out / "map_stats.csv", index=False)
    paths["stats"] = out / "map_stats.csv"
    if figures:
        paths.update(map_analysis.plot_maps(out))
    return paths
