"""RoPE for the CPU (impl 'rotation'): the rotation written into the two halves of one output, and a
hand-written backward, which is the inverse rotation of the gradient.

Autograd through the reference records six elementwise ops, two half-slices and a cat per call; its
backward adds a zero-filled tensor for each slice and a cat (on the CPU, where ops run one after
another over memory, among the largest items of a parallel-hybrid step's profile: benchmarks/NOTES.md). Here
the forward is two products and two multiply-adds into the halves of one tensor (equal to the
reference to the last bit or so), the backward the same with sin negated; nothing else is allocated.
Same contract as ``reference.rope``; float32/float64.
Tested against the reference forward and backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ablate.ops.rope import reference


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """(x1, x2) -> (x1 cos - x2 sin, x1 sin + x2 cos) into one new (B, H, T, D) tensor: a product and
    a multiply-add per half, no temporaries (the last bit may differ from the reference's sums)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :half], out[..., half:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1)
    torch.mul(x1, sin, out=o2)
    o2.addcmul_(x2, cos)
    return out


class _Rotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None  # the rotation's transpose is its inverse


def rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Same contract as ``reference.rope``; x float32/float64 (other dtypes: the reference)."""
    if x.dtype not in (torch.float32, torch.float64):
        return reference.rope(x, pos, theta)
    cos, sin = reference.angles(pos, x.shape[-1] // 2, theta, x.device)
    return _Rotation.apply(x, cos.to(x.dtype), sin.to(x.dtype))
