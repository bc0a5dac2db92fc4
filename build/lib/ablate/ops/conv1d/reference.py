"""Causal depthwise conv1d, pure torch. x: (B, C, T); weight: (C, K); bias: (C,);
state: (B, C, K-1), the last K-1 inputs before x (zeros at the start of a sequence)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, return_final_state: bool = False):
    K = weight.shape[1]
    if initial_state is None:
        padded = F.pad(x, (K - 1, 0))
    else:
        padded = torch.cat([initial_state.to(x.dtype), x], dim=-1)
    y = F.conv1d(padded, weight.unsqueeze(1), bias, groups=x.shape[1])
    y = F.silu(y) if silu else y
    if return_final_state:
        return y, padded[..., padded.shape[-1] - (K - 1):]
    return y


def causal_conv1d_loop(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True):
    """The definition written out tap by tap; the test oracle for ``causal_conv1d``."""
    K, T = weight.shape[1], x.shape[-1]
    y = torch.zeros_like(x)
    for k in range(K):
        shift = K - 1 - k  # tap k multiplies x[t - shift]
        y[..., shift:] += weight[:, k, None] * x[..., : T - shift]
    if bias is not None:
        y = y + bias[:, None]
    return F.silu(y) if silu else y


def conv_step(state: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None,
              silu: bool = True) -> Tensor:
    """One decoding step. state (B, C, K-1) is shifted in place; x: (B, C) -> (B, C)."""
    window = torch.cat([state, x[..., None].to(state.dtype)], dim=-1)  # (B, C, K)
    y = (window * weight).sum(-1)
    if bias is not None:
        y = y + bias
    state.copy_(window[..., 1:])
    return F.silu(y) if silu else y
