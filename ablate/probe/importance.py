"""`ablate importance RUN_DIR`: Hymba's head-importance probe (App. C, Figs. 3 and 13). Per layer,
zero the attention path's output scale (beta1, the weight of its output norm) or the SSM path's
(beta2), or one attention head's slice of beta1, and measure the run's headline metric (MQAR
accuracy, validation loss) on its own validation data; writes importance.csv (and the heat map,
drawn by ablate.analysis.importance from the file).

A layer without output scales (an attention or SSM mixer, or the parallel head with fusion
'sum') has its path's output zeroed instead, which is what zeroing a scale does (tests check it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ablate.api import Run, load_run
from ablate.probe.inputs import default_device, validation_data
from ablate.probe.maps import parse_layers, path_modules


@dataclass(frozen=True)
class Ablation:
    layer: int
    path: str  # "attention" or "ssm"
    head: int | None = None  # one attention head, or the whole path

    @property
    def name(self) -> str:
        return f"layer {self.layer} {self.path}" + ("" if self.head is None else f" head {self.head}")


def output_scale(mixer, path: str):
    """The path's output scale (beta1 / beta2) if the mixer has one, else None."""
    norm = getattr(mixer, "norm_attn" if path == "attention" else "norm_ssm", None)
    return None if norm is None else norm.weight


def head_slice(heads, head: int | None) -> slice:
    if head is None:
        return slice(None)
    return slice(head * heads.v_head_dim, (head + 1) * heads.v_head_dim)


@contextlib.contextmanager
def zeroed(model, ablation: Ablation):
    """Within the block, the ablated path (or head) contributes nothing: its scale zeroed, or its
    output zeroed by a forward hook; restored on exit."""
    block = model.blocks[ablation.layer]
    modules = path_modules(block)
    if ablation.path not in modules:
        raise ValueError(f"layer {ablation.layer} ({block.spec.mixer}) has no {ablation.path} path")
    module = modules[ablation.path]
    part = head_slice(module, ablation.head) if ablation.path == "attention" else slice(None)
    scale = output_scale(block.mixer, ablation.path)
    if scale is not None:
        saved = scale.detach().clone()
        with torch.no_grad():
            scale[part] = 0
        try:
            yield
        finally:
            with torch.no_grad():
                scale.copy_(saved)
        return

    def zero_output(module, args, output):
        out, *rest = output
        out = out.clone()
        out[..., part] = 0
        return (out, *rest)

    hook = module.register_forward_hook(zero_output)
    try:
        yield
    finally:
        hook.remove()


def ablations(model, layers: list[int], heads: bool) -> list[Ablation]:
    found = []
    for i in layers:
        modules = path_modules(model.blocks[i])
        for path in ("attention", "ssm"):
            if path in modules:
                found.append(Ablation(i, path))
        if heads and "attention" in modules:
            found += [Ablation(i, "attention", h) for h in range(modules["attention"].n_heads)]
    return found


@torch.no_grad()
def validation_metrics(model, loaders, max_examples: int | None) -> dict[str, float]:
    """The recipe's validation metrics over (at most max_examples of) each validation part: val/acc
    (mean over parts of accuracy at labelled positions), val/loss (token-weighted), val/ppl."""
    accs, loss_sum, count_sum = [], 0.0, 0
    device = model.embed.weight.device
    for loader in loaders:
        correct = count = seen = 0
        for inputs, labels in loader:
            if max_examples is not None:
                inputs, labels = inputs[: max_examples - seen], labels[: max_examples - seen]
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs).logits.float()
            mask = labels != -100
            loss_sum += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                        reduction="sum").item()
            correct += ((logits.argmax(-1) == labels) & mask).sum().item()
            count += mask.sum().item()
            seen += len(inputs)
            if max_examples is not None and seen >= max_examples:
                break
        accs.append(correct / max(count, 1))
        count_sum += count
    loss = loss_sum / max(count_sum, 1)
    return {"val/acc": sum(accs) / len(accs), "val/loss": loss, "val/ppl": float(torch.tensor(loss).exp())}


def headline(run: Run) -> tuple[str, str]:
    spec = run.record["metric_specs"][0]
    if not spec["name"].startswith("val/"):
        raise ValueError(f"{run.path / 'run.json'}: headline metric '{spec['name']}' is not a validation metric")
    return spec["name"], spec["direction"]


def importance(run: Run, layers: list[int] | None = None, heads: bool = True,
               max_examples: int | None = 500) -> pd.DataFrame:
    """One row per ablation: the headline metric with it, the baseline, and the drop (positive:
    the model got worse)."""
    metric, direction = headline(run)
    loaders = validation_data(run).val_dataloader()
    layers = list(range(len(run.model.blocks))) if layers is None else layers
    base = validation_metrics(run.model, loaders, max_examples)[metric]
    rows = []
    for ablation in ablations(run.model, layers, heads):
        with zeroed(run.model, ablation):
            value = validation_metrics(run.model, loaders, max_examples)[metric]
        drop = base - value if direction == "maximize" else value - base
        scale = output_scale(run.model.blocks[ablation.layer].mixer, ablation.path)
        beta = "beta1" if ablation.path == "attention" else "beta2"
        rows.append({"run": run.record["name"], "variant": run.record["variant"], "layer": ablation.layer,
                     "path": ablation.path, "head": ablation.head,
                     "zeroed": beta if scale is not None else "output",
                     "metric": metric, "direction": direction, "baseline": base, "value": value, "drop": drop,
                     "examples_per_part": max_examples})
    return pd.DataFrame(rows)


def write_importance(run_dir: str | Path, out: str | Path | None = None, layers: str | None = None,
                     heads: bool = True, max_examples: int | None = 500, figure: bool = True,
                     device: str | None = None) -> dict[str, Path]:
    """Run the probe and write importance.csv (default RUN_DIR/importance/) and its heat map."""
    from ablate.analysis.importance import plot_importance

    run = load_run(run_dir, default_device(device))
    chosen = parse_layers(layers, len(run.model.blocks))
    table = importance(run, chosen, heads, max_examples)
    out = Path(out) if out is not None else Path(run_dir) / "importance"
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "importance.csv", index=False)
    paths = {"csv": out / "importance.csv"}
    if figure:
        paths["figure"] = plot_importance(table, out / "importance.png")
    return paths
