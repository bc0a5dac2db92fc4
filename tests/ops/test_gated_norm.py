"""Mamba-2's gated RMSNorm: the native CPU kernel against the formula, forward and backward."""

from __future__ import annotations

import pytest
import torch

from ablate.ops import gated_norm
from ablate.ops.gated_norm import native, reference

pytestmark = pytest.mark.skipif(not native.available(), reason="the native gated norm does not build here")


def inputs(b, T, W, dtype, scale=1.0):
    """y dense; z a slice of a token-major projection (rows strided), as the Mamba-2 path passes it."""
    y = (scale * torch.randn(b, T, W, dtype=dtype)).requires_grad_()
    proj = torch.randn(b, T, 2 * W + 3, dtype=dtype, requires_grad=True)
    w = torch.randn(W, dtype=dtype, requires_grad=True)
    return y, proj, proj[..., 3:W + 3], w


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("b,T,W", [(2, 7, 13), (3, 1, 128), (1, 5, 1)])
def test_native_matches_reference_forward_backward(dtype, b, T, W):
    y, proj, z, w = inputs(b, T, W, dtype)
    outs = [f(y, z, w, 1e-6) for f in (native.gated_rms_norm, reference.gated_rms_norm)]
    g = torch.randn_like(outs[1])
    grads = [torch.autograd.grad((o * g).sum(), [y, proj, w]) for o in outs]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for name, a, b_ in zip(["y", "z", "weight"], *grads, strict=True):
        torch.testing.assert_close(a, b_, **tol, msg=f"grad {name}")


def test_dispatch_and_other_dtypes_take_the_reference():
    y, _, z, w = inputs(2, 3, 8, torch.float32)
    assert torch.equal(gated_norm.gated_rms_norm(y, z, w, 1e-6), reference.gated_rms_norm(y, z, w, 1e-6))
    out = native.gated_rms_norm(y.bfloat16(), z.bfloat16(), w.bfloat16(), 1e-6)  # not a kernel dtype
    assert torch.equal(out, reference.gated_rms_norm(y.bfloat16(), z.bfloat16(), w.bfloat16(), 1e-6))


@pytest.mark.parametrize("scale", [1e20, 1e38])  # v^2 overflows: finite v and v = inf after the gate
def test_non_finite_rows_as_autograd_gives_them(scale):
    """Where v^2 overflows, r = 0: the output and the gradients are the formula's (zeros or NaN, as
    autograd's 0 * inf gives them), and a NaN input makes its row NaN; the other rows stay finite."""
    y, proj, z, w = inputs(3, 4, 16, torch.float32)
    y = y.detach().clone()
    y[0, 1] *= scale
    y[1, 2, 5] = float("nan")
    y.requires_grad_()
    outs = [f(y, z, w, 1e-6) for f in (native.gated_rms_norm, reference.gated_rms_norm)]
    g = torch.randn_like(outs[1])
    grads = [torch.autograd.grad((o * g).sum(), [y, proj, w]) for o in outs]
    assert outs[0][1, 2].isnan().all() and outs[0][2].isfinite().all()
    torch.testing.assert_close(outs[0], outs[1], equal_nan=True)
    for a, b_ in zip(*grads, strict=True):
        assert torch.equal(a.isnan(), b_.isnan())
        torch.testing.assert_close(a, b_, equal_nan=True)
