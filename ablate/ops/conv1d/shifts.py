"""Causal depthwise conv1d + SiLU for the CPU: a sum of K shifted products in token-major layout,
one autograd Function with a hand-written backward.

The SSM paths pass x as a transposed view (B, C, T) of their token-major projection. F.conv1d
needs it channel-major (a copy), and its depthwise backward is slow on the CPU; here x is used
as (B, T, C) (a view, dense over channels) and every op runs over whole rows of channels:

    y[:, t] = bias + sum_k w[:, k] x[:, t - (K-1-k)]        out = SiLU(y)

The output is returned as a (B, C, T) view of a (B, T, C) tensor, which is what the paths
transpose back. With a conv state (prefill, decoding) it defers to ``reference.causal_conv1d``.
Tested against ``reference.causal_conv1d`` and the tap loop, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ablate.ops.conv1d import reference


class _ShiftConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        """x (B, T, C) dense over C; weight (C, K); bias (C,) or None -> (B, T, C)."""
        T, K = x.shape[1], weight.shape[1]
        taps = weight.t().contiguous()  # (K, C): each tap dense over channels (a column of weight is strided)
        y = torch.mul(x, taps[K - 1])
        if bias is not None:
            y.add_(bias)
        for k in range(K - 1):
            s = K - 1 - k  # tap k multiplies x[t - s]
            if s < T:
                y[:, s:].addcmul_(x[:, : T - s], taps[k])
        ctx.silu, ctx.has_bias = silu, bias is not None
        ctx.save_for_backward(x, weight, y)
        return F.silu(y) if silu else y

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        x, weight, y = ctx.saved_tensors
        T, K = x.shape[1], weight.shape[1]
        g = gout.contiguous()
        if ctx.silu:  # silu'(y) = sigmoid(y) (1 + y (1 - sigmoid(y)))
            s = torch.sigmoid(y)
            g = g * s * torch.rsub(s, 1).mul_(y).add_(1)
        taps = weight.t().contiguous()
        dx = torch.mul(g, taps[K - 1])
        dw = torch.zeros_like(taps)  # (K, C)
        dw[K - 1] = (g * x).sum((0, 1))
        for k in range(K - 1):
            s = K - 1 - k
            if s < T:
                dx[:, : T - s].addcmul_(g[:, s:], taps[k])
                dw[k] = (g[:, s:] * x[:, : T - s]).sum((0, 1))
        dbias = g.sum((0, 1)) if ctx.has_bias else None
        return dx, dw.t(), dbias, None


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, silu: bool = True,
                  initial_state: Tensor | None = None, return_final_state: bool = False):
    """Same contract as ``reference.causal_conv1d``; x (B, C, T)."""
    if initial_state is not None or return_final_state:
        return reference.causal_conv1d(x, weight, bias, silu, initial_state, return_final_state)
    xt = x.transpose(1, 2)
    if xt.stride(-1) != 1:
        xt = xt.contiguous()
    return _ShiftConv.apply(xt, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), silu).transpose(1, 2)
