"""Mamba-1 mixer: in_proj -> the Mamba-1 selective SSM path (``mixers.paths.mamba``) -> out_proj."""

from __future__ import annotations

from ablate.config import ModelConfig
from ablate.mixers.base import LayerSpec
from ablate.mixers.paths.mamba import MambaSSM
from ablate.mixers.paths.ssm import SSMMixer
from ablate.ops.backends import Backends
from ablate.registry import MIXERS


@MIXERS.register("mamba")
class Mamba(SSMMixer):
    size_knobs = ("mamba.expand",)

    def __init__(self, cfg: ModelConfig, spec: LayerSpec, backends: Backends):
        d = cfg.size.d_model
        super().__init__(d, MambaSSM(d, cfg.mamba.expand * d, cfg.mamba, cfg.norm_eps, backends))
