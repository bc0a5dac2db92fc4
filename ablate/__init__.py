"""ablate: controlled architecture-ablation studies of attention / Mamba hybrid language models."""

__version__ = "0.1.0"
