"""RoPE's CPU implementation (ops/rope/rotation.py, hand-written backward) against the reference
(autograd through the formula): outputs and gradients, on the strided q/k views the attention path
passes, odd lengths and offsets; and which one ``resolve`` picks."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import rope as rope_ops
from ablate.ops.backends import resolve
from ablate.ops.rope import reference, rotation


def qk_view(B, T, H, D, dtype, extra=7):
    """A (B, H, T, D) view of a (B, T, H*D + extra) projection, as AttentionHeads slices q from qkv."""
    qkv = torch.randn(B, T, H * D + extra, dtype=dtype, requires_grad=True)
    return qkv, qkv[..., : H * D].unflatten(-1, (H, D)).transpose(1, 2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("B,T,H,D,offset", [(2, 5, 3, 8, 0), (1, 33, 2, 16, 11), (3, 1, 4, 32, 100)])
def test_rotation_matches_reference_forward_and_backward(dtype, tol, B, T, H, D, offset):
    torch.manual_seed(0)
    pos = torch.arange(offset, offset + T)
    grads, outs = [], []
    for fn in (reference.rope, rotation.rope):
        torch.manual_seed(1)
        qkv, x = qk_view(B, T, H, D, dtype)
        out = fn(x, pos, 10000.0)
        weight = torch.randn_like(out)
        (out * weight).sum().backward()
        outs.append(out.detach())
        grads.append(qkv.grad)
    assert outs[1].dtype == dtype and outs[1].shape == (B, H, T, D)
    torch.testing.assert_close(outs[1], outs[0], rtol=tol, atol=tol)
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol)


def test_rotation_keeps_norms_and_position_zero():
    """A rotation: every pair keeps its norm, and position 0 is the identity."""
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    out = rotation.rope(x, torch.arange(6), 500.0)
    pairs = lambda t: t[..., :4] ** 2 + t[..., 4:] ** 2  # noqa: E731
    torch.testing.assert_close(pairs(out), pairs(x))
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_other_dtypes_take_the_reference():
    x = torch.randn(1, 2, 4, 8).bfloat16()
    assert torch.equal(rotation.rope(x, torch.arange(4), 1e4), reference.rope(x, torch.arange(4), 1e4))


def test_resolve_picks_rotation_on_the_cpu_only_for_auto():
    assert resolve("auto", "cpu").rope == "rotation"
    assert resolve("torch", "cpu").rope == "torch"
    assert set(rope_ops.IMPLS) == {"torch", "rotation"}
