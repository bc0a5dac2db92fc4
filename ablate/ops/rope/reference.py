"""Rotate-half RoPE as plain torch ops (autograd differentiates it): the ground truth, and the path
every device takes unless ``ops.backends.resolve`` picks another."""

from __future__ import annotations

import torch
from torch import Tensor


def angles(pos: Tensor, half: int, theta: float, device) -> tuple[Tensor, Tensor]:
    """cos and sin of pos * theta^(-i / half), i < half: (T, half) float32 each."""
    inv_freq = theta ** (-torch.arange(half, device=device, dtype=torch.float32) / half)
    a = pos.float()[:, None] * inv_freq[None, :]
    return a.cos(), a.sin()


def rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """x: (B, H, T, D) with even D; pos: (T,). The first and second halves of the head dimension
    are rotated as pairs: (x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos)."""
    half = x.shape[-1] // 2
    cos, sin = angles(pos, half, theta, x.device)
    xf = x.to(torch.promote_types(x.dtype, torch.float32))  # bf16/fp16 rotate in float32, float64 in float64
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
