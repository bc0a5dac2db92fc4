"""Tiny run and sweep configurations for CPU tests (seconds each)."""

from __future__ import annotations

from pathlib import Path

import yaml

from ablate.train.config import run_config

TINY_MODEL = ["size.d_model=32", "size.n_layers=2", "attention.n_heads=2", "attention.n_kv_heads=2",
              "mlp.hidden=64", "mamba.d_state=4"]


def tiny_mqar(tmp: Path, variant: str = "llama", steps: int = 40, every: int = 10, extra=()):
    sets = TINY_MODEL + [
        "mqar.vocab_size=32", f"mqar.cache_dir={tmp / 'cache'}",
        "mqar.train=[{seq_len: 16, n_pairs: 2, n_examples: 2000}, {seq_len: 16, n_pairs: 3, n_examples: 1000}]",
        "mqar.test=[{seq_len: 16, n_pairs: 2, n_examples: 200}, {seq_len: 32, n_pairs: 4, n_examples: 200}]",
        f"recipe.max_steps={steps}", f"recipe.eval_every={every}", "recipe.batch_size=16",
        "recipe.warmup_steps=5", "recipe.lr=0.003", "recipe.weight_decay=0.0", *extra,
    ]
    return run_config(variant, "mqar", sets)


def write_sweep(tmp: Path, name: str = "t", variants=("llama", "mamba"), seeds=(0, 1), **more) -> Path:
    doc = {
        "name": name, "variants": list(variants), "seeds": list(seeds), "results": str(tmp / "results"),
        "sets": {"size.d_model": 32, "size.n_layers": 2, "attention.n_heads": 2, "attention.n_kv_heads": 2,
                 "mlp.hidden": 64, "mamba.d_state": 4},
        "recipe": {"max_steps": 10, "eval_every": 5, "batch_size": 8, "warmup_steps": 2},
        "mqar": {"vocab_size": 32, "cache_dir": str(tmp / "cache"),
                 "train": [{"seq_len": 16, "n_pairs": 2, "n_examples": 200}],
                 "test": [{"seq_len": 16, "n_pairs": 2, "n_examples": 50}]},
        **more,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path
