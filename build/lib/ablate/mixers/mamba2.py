"""Mamba-2 mixer: in_proj -> the Mamba-2 SSD path (``mixers.paths.mamba2``) -> out_proj."""

from __future__ import annotations

from ablate.config import ModelConfig
from ablate.mixers.base import LayerSpec
from ablate.mixers.paths.mamba2 import Mamba2SSM
from ablate.mixers.paths.ssm import SSMMixer
from ablate.ops.backends import Backends
from ablate.registry import MIXERS


@MIXERS.register("mamba2")
class Mamba2(SSMMixer):
    size_knobs = ("mamba2.expand",)

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        d = cfg.size.d_model
        super().__init__(d, Mamba2SSM(cfg.mamba2.expand * d, cfg.mamba2, cfg.norm_eps, backends))
