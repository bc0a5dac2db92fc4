"""The training recipe shared by every run of a study, and the optimizer/schedule it builds.

The recipe holds the optimisation (AdamW, schedule, batch, steps, seed) and the execution settings
(accelerator, devices, strategy, precision, compile, kernel backend): everything about a run that
is not the architecture or the task's data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ablate.config import ConfigError, knob, require


@dataclass(frozen=True, kw_only=True)
class RecipeConfig:
    lr: float = knob(1e-3, "peak learning rate (AdamW)")
    betas: tuple[float, ...] = knob((0.9, 0.95), "AdamW betas")
    eps: float = knob(1e-8, "AdamW epsilon")
    weight_decay: float = knob(0.1, "decoupled weight decay, on >=2-D weights not tagged _no_weight_decay")
    schedule: Literal["cosine", "wsd", "constant"] = knob("cosine", "LR schedule after warmup")
    warmup_steps: int = knob(50, "linear warmup steps")
    min_lr_ratio: float = knob(0.1, "final LR as a fraction of the peak")
    decay_fraction: float = knob(0.2, "wsd: fraction of the steps spent decaying at the end")
    grad_clip: float = knob(1.0, "gradient-norm clip (0: off)")
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = knob(
        "auto", "auto: bf16-mixed on GPU, 32-true on CPU (resolved once and recorded)")
    compile: Literal["auto", "on", "off"] = knob(
        "auto", "torch.compile each block: auto is on with a GPU (resolved once and recorded with the backends)")
    backend: Literal["auto", "torch", "triton", "cuda"] = knob(
        "auto", "kernel backend: auto (fastest available) | torch | triton | cuda (resolved once, recorded)")
    batch_size: int = knob(32, "sequences per optimizer step")
    max_steps: int = knob(1000, "optimizer steps (ignored when token_budget is set)")
    token_budget: int | None = knob(None, "training tokens; sets max_steps = budget / (batch * seq)")
    eval_every: int = knob(100, "steps between evaluations (and checkpoints); divides max_steps")
    seed: int = knob(0, "seed of the init and of the batch order")
    accelerator: str = knob("auto", "Lightning accelerator: auto | cpu | gpu")
    devices: int | str = knob("auto", "Lightning devices: auto | N | list (several: recipe.strategy ddp or fsdp)")
    strategy: str = knob("auto", "Lightning strategy: auto | ddp | fsdp (FSDP2 through ModelParallelStrategy)")

    def __post_init__(self):  # single-field bounds; how fields fit together is ``check``'s
        require(self, lr=(1e-12, None), eps=(0.0, None), weight_decay=(0.0, None), warmup_steps=(0, None),
                min_lr_ratio=(0.0, 1.0), decay_fraction=(0.0, 1.0), grad_clip=(0.0, None), batch_size=(1, None),
                max_steps=(1, None), token_budget=(1, None), eval_every=(1, None))

    def check(self, where: str) -> None:
        """What single fields cannot say (checked once all overrides are in)."""
        if self.token_budget is None and self.max_steps % self.eval_every:
            raise ConfigError(f"{where}: recipe.max_steps = {self.max_steps} is not a multiple of "
                              f"recipe.eval_every = {self.eval_every} (evaluations are the checkpoints)")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay >=2-D weights unless the owning module tagged them (_no_weight_decay)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        skip = p.dim() < 2 or getattr(p, "_no_weight_decay", False)
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, recipe: RecipeConfig, max_steps: int) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    lo = recipe.min_lr_ratio
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "wsd":
        decay_start = int(max_steps * (1 - recipe.decay_fraction))
        if step < decay_start:
            return 1.0
        return 1.0 - (1.0 - lo) * (step - decay_start) / max(1, max_steps - decay_start)
    progress = (step - recipe.warmup_steps) / max(1, max_steps - recipe.warmup_steps)
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, recipe: RecipeConfig, max_steps: int):
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr,
                            betas=tuple(recipe.betas), eps=recipe.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe, max_steps))
    return opt, sched
