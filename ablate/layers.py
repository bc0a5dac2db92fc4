"""Small building blocks shared by mixers and the model: RMSNorm, SwiGLU, weight-decay tags."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def no_weight_decay(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter as excluded from weight decay (the optimizer reads the tag, not names)."""
    p._no_weight_decay = True
    return p


def no_reinit(p: nn.Parameter) -> nn.Parameter:
    """Tag a parameter whose init the owning module sets itself (the generic init skips it)."""
    p._no_reinit = True
    return p


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = no_weight_decay(nn.Parameter(torch.ones(dim)))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm over the last axis, computed in fp32 and cast back before the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def swiglu_hidden(d_model: int, hidden: int | None) -> int:
    """Default SwiGLU width: 8/3 d_model (same FLOPs as a 4x GELU MLP), rounded up to 64."""
    if hidden is not None:
        return hidden
    return -(-(8 * d_model // 3) // 64) * 64
