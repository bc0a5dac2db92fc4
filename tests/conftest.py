from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ablate.config import ModelConfig, override

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny(cfg: ModelConfig, d_model: int = 32, vocab: int = 61) -> ModelConfig:
    """Shrink a variant so the contract runs in milliseconds, keeping its structure
    (pattern, window/global split, KV groups, meta tokens, fusion)."""
    sets = {
        "size.d_model": d_model,
        "size.vocab_size": vocab,
        "attention.n_heads": 2,
        "attention.n_kv_heads": 1,
        "attention.head_dim": None,
        "mamba.d_state": 4,
        "mamba2.d_state": 8,
        "mamba2.head_dim": 16,
        "mlp.hidden": 48,
    }
    if cfg.layout.window is not None:
        sets["layout.window"] = 5
    if cfg.n_meta:
        sets["n_meta"] = 3
    for key, value in sets.items():
        cfg = override(cfg, key, value)
    return dataclasses.replace(cfg, size=dataclasses.replace(cfg.size, n_layers=min(cfg.size.n_layers, 8)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
