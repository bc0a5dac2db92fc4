"""Mamba-2's gated RMSNorm, RMSNorm(y SiLU(z)) weight, as the mixer computed it: the product in y's
dtype, the norm in at least float32 and cast back, then the weight (``layers.RMSNorm``'s formula;
float64 stays float64 here, where ``layers.RMSNorm`` casts it to float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def gated_rms_norm(y: Tensor, z: Tensor, weight: Tensor, eps: float) -> Tensor:
    """y, z: (..., W); weight: (W,) -> (..., W)."""
    v = y * F.silu(z)
    vf = v.to(torch.promote_types(v.dtype, torch.float32))
    return (vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + eps)).to(v.dtype) * weight
