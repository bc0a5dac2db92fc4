"""Variant files on disk: ``variants/NAME.yaml`` -> a validated ``Variant`` (schema in config.py,
layer plan checked by plan.py). This module sits above both, so neither imports it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ablate.config import ConfigError, ModelConfig, Variant, from_dict, load_yaml
from ablate.plan import PlanError, expand

# Shipped as package data (a wheel has them); the repository's top-level variants/ links here.
VARIANTS_DIR = Path(__file__).resolve().parent / "presets" / "variants"


def load_variant(name_or_path: str | Path) -> Variant:
    """Load ``variants/NAME.yaml`` (or a path) into a validated Variant; the plan is checked too."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = VARIANTS_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown variant '{name_or_path}'; known: {', '.join(variant_names())}")
    data = load_yaml(path)
    # A variant file is flat: name / description plus the ModelConfig sections.
    head = {k: data.pop(k) for k in ("name", "description") if k in data}
    head.setdefault("name", path.stem)
    head = from_dict(Variant, head, str(path))
    variant = dataclasses.replace(head, model=from_dict(ModelConfig, data, str(path)))
    try:
        expand(variant.model)
    except PlanError as err:
        raise ConfigError(f"{path}: {err}") from None
    check_shapes(variant.model, str(path))
    return variant


def check_shapes(cfg: ModelConfig, where: str) -> None:
    """Build the model on the meta device (no memory): sizes that do not fit together (a width the
    heads do not divide, an odd RoPE head) are an error naming the file, not a crash at training."""
    import torch

    from ablate.model import LM

    try:
        with torch.device("meta"):
            LM(cfg)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def variant_names() -> list[str]:
    return sorted(p.stem for p in VARIANTS_DIR.glob("*.yaml"))
